"""`run_audit` / `transferlab audit` (issue 19) on a hymenoptera subset with planted problems:
every kind of finding must name the planted file, and a clean folder must not flood."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from tests._helpers import shared_dataset
from transferlab.cli import app
from transferlab.pipeline import AuditConfig, run_audit

LITE0 = ("efficientnet_lite0",)


def _subset(root: Path, n_train: int = 20, n_val: int = 8) -> dict[str, Path]:
    """A 2-class photo folder from hymenoptera; returns some of its files by role."""
    src = shared_dataset("hymenoptera")
    picked: dict[str, Path] = {}
    for split, n in (("train", n_train), ("val", n_val)):
        for cls in ("ants", "bees"):
            (root / split / cls).mkdir(parents=True)
            for p in sorted((src / split / cls).iterdir())[:n]:
                shutil.copy(p, root / split / cls / p.name)
    return picked


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audit") / "data"
    _subset(root)
    train_ants = sorted((root / "train" / "ants").iterdir())
    train_bees = sorted((root / "train" / "bees").iterdir())
    roles = {"root": root}
    # leakage, exact: a training file copied into val
    roles["exact_src"] = train_ants[0]
    roles["exact_copy"] = root / "val" / "ants" / "copy_of_train.jpg"
    shutil.copy(train_ants[0], roles["exact_copy"])
    # leakage, near: a half-size JPEG-70 re-save of another training image, in val
    roles["near_src"] = train_bees[1]
    img = Image.open(train_bees[1]).convert("RGB")
    roles["near_copy"] = root / "val" / "bees" / "resaved.jpg"
    img.resize((img.width // 2, img.height // 2)).save(roles["near_copy"], quality=70)
    # a wrong label: a bee on a flower (a typical bee picture) filed under ants
    roles["mislabelled"] = root / "train" / "ants" / "actually_a_bee.jpg"
    shutil.move(train_bees[5], roles["mislabelled"])
    # image problems
    roles["broken"] = root / "train" / "bees" / "broken.jpg"
    roles["broken"].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    roles["tiny"] = root / "train" / "bees" / "tiny.png"
    Image.open(train_bees[3]).convert("RGB").resize((20, 20)).save(roles["tiny"])
    roles["strip"] = root / "train" / "bees" / "strip.png"
    Image.open(train_bees[4]).convert("RGB").resize((400, 80)).save(roles["strip"])
    roles["grey"] = root / "train" / "ants" / "grey.png"
    Image.open(train_ants[5]).convert("L").save(roles["grey"])
    # an outlier: a satellite tile among insects
    roles["outlier"] = root / "train" / "ants" / "desert.jpg"
    shutil.copy(
        sorted((shared_dataset("aid_rs10") / "train" / "Desert").iterdir())[0], roles["outlier"]
    )
    return roles


@pytest.fixture(scope="module")
def audited(planted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("audit-out")
    res = run_audit(AuditConfig(planted["root"], out, backbones=LITE0, progress=False))
    assert res.metrics_file == out / "audit.json"
    return {"out": out, "m": json.loads((out / "audit.json").read_text()), "res": res}


def _paths(rows: list[dict]) -> set[str]:
    return {Path(r["path"]).name for r in rows}


def test_audit_reports_leakage_exact_and_near(planted: dict, audited: dict) -> None:
    m = audited["m"]
    exact = [g for g in m["exact_duplicates"] if g["cross_split"]]
    assert [sorted(Path(p).name for p in g["paths"]) for g in exact] == [
        sorted([planted["exact_src"].name, planted["exact_copy"].name])
    ]
    near = [g for g in m["near_duplicates"] if g["cross_split"]]
    assert any({Path(p).name for p in g["paths"]} == {planted["near_src"].name, "resaved.jpg"}
               for g in near)  # fmt: skip
    assert m["leakage"]["exact_groups"] == 1 and m["leakage"]["near_groups"] >= 1
    codes = [f["code"] for f in m["findings"]]
    assert codes[0] == "leakage" and "possible_leakage" in codes


def test_audit_flags_the_wrong_label_with_the_right_suggestion(audited: dict) -> None:
    issues = audited["m"]["label_issues"]
    row = next(r for r in issues if Path(r["path"]).name == "actually_a_bee.jpg")
    assert row["given"] == "ants" and row["suggested"] == "bees"
    assert row["given_probability"] < 0.5 < row["confidence"]
    # ranked: lowest probability of the given label first; short on a folder of 60 images
    probs = [r["given_probability"] for r in issues]
    assert probs == sorted(probs) and len(issues) <= 10


def test_audit_finds_outlier_and_image_problems(audited: dict) -> None:
    m = audited["m"]
    assert "desert.jpg" in _paths(m["outliers"])
    scores = [r["score"] for r in m["outliers"]]
    assert scores == sorted(scores, reverse=True) and min(scores) > m["outlier_threshold"]
    ip = m["image_problems"]
    assert _paths(ip["broken"]) == {"broken.jpg"}
    assert _paths(ip["tiny"]) == {"tiny.png"} and not ip["all_tiny"]
    assert _paths(ip["extreme_aspect"]) == {"strip.png"}
    assert {r["mode"] for r in ip["odd_modes"] if Path(r["path"]).name == "grey.png"} == {"L"}
    assert {"broken", "tiny", "extreme_aspect", "odd_modes"} <= {f["code"] for f in m["findings"]}
    # every file path is in audit.json as given (absolute or relative, never shortened)
    assert all(Path(r["path"]).exists() for r in m["outliers"] + m["label_issues"])


def test_audit_report_shows_thumbnails_side_by_side(audited: dict) -> None:
    page = (audited["out"] / "report.html").read_text()
    assert "Duplicates across splits (leakage)" in page and "Likely label errors" in page
    assert page.count("data:image/jpeg;base64,") >= 6  # the pairs, the label error, the outlier
    assert page.index("Duplicates across splits") < page.index("Likely label errors")


def test_audit_of_a_clean_folder_does_not_flood(tmp_path: Path) -> None:
    root = tmp_path / "clean"
    _subset(root, n_train=20, n_val=8)
    m = run_audit(AuditConfig(root, tmp_path / "out", backbones=LITE0, progress=False)).metrics
    assert m.leakage["groups"] == 0 and not m.exact_duplicates
    assert len(m.label_issues) <= 3 and len(m.outliers) <= 0.1 * m.n_images
    assert not any(f["severity"] == "problem" for f in m.findings)


def test_audit_cli_prints_findings_and_fit_warns_of_leakage(planted: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["audit", str(planted["root"]), "--out", str(tmp_path / "a"),
                            "--backbones", "efficientnet_lite0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "PROBLEM" in r.output and "leak (exact)" in r.output and "actually_a_bee" in r.output
    r = runner.invoke(app, ["fit", str(planted["root"]), "--out", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    assert "leakage:" in r.output and "transferlab audit" in r.output
    m = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert planted["exact_copy"].name in m["leakage"]


def test_audit_cli_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["audit", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "nope" in r.output
    r = CliRunner().invoke(app, ["audit", str(tmp_path), "--out", str(tmp_path / "o"),
                                 "--backbones", " , "])  # fmt: skip
    assert r.exit_code != 0 and "--backbones" in r.output


def test_fit_on_clean_splits_says_nothing_about_leakage(tmp_path: Path) -> None:
    root = tmp_path / "clean"
    _subset(root, n_train=8, n_val=4)
    r = CliRunner().invoke(app, ["fit", str(root), "--out", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    assert "leakage" not in r.output
    assert "leakage" not in json.loads((tmp_path / "f" / "metrics.json").read_text())


def test_finetune_warns_of_a_file_shared_by_train_and_val(tmp_path: Path) -> None:
    from tests._helpers import build_image_folder
    from tests.finetune._data import FAST
    from transferlab.finetune import FinetuneConfig
    from transferlab.pipeline import FinetuneRunConfig, run_finetune

    root = tmp_path / "data"
    build_image_folder(root / "train", n_per_class=6, seed=1)
    build_image_folder(root / "val", n_per_class=3, seed=2)
    shutil.copy(
        root / "train" / "hstripes" / "hstripes_0.png", root / "val" / "hstripes" / "dup.png"
    )
    res = run_finetune(
        FinetuneRunConfig(
            data=str(root),
            out=str(tmp_path / "ft"),
            finetune=FinetuneConfig(**FAST, epochs=1, freeze_epochs=0),
            progress=False,
        )
    )
    assert "dup.png" in res.metrics.leakage and "transferlab audit" in res.metrics.leakage


def test_suggest_cli_ranks_a_pool_and_leaves_out_labelled_copies(tmp_path: Path) -> None:
    src = shared_dataset("hymenoptera")
    lab, pool = tmp_path / "lab", tmp_path / "pool"
    for cls in ("ants", "bees"):
        (lab / cls).mkdir(parents=True)
        first = sorted((src / "train" / cls).iterdir())[0]
        shutil.copy(first, lab / cls / first.name)  # one label per class: a cold start
        (pool / cls).mkdir(parents=True)
        for p in sorted((src / "val" / cls).iterdir())[:12]:
            shutil.copy(p, pool / cls / p.name)
    shutil.copy(first, pool / "already_labelled.jpg")
    csv_path = tmp_path / "s.csv"
    r = CliRunner().invoke(
        app, ["suggest", str(lab), "--pool", str(pool), "--n", "6", "--out", str(csv_path)]
    )
    assert r.exit_code == 0, r.output
    assert "cold start" in r.output
    import csv

    rows = list(csv.DictReader(csv_path.open()))
    assert [int(r["rank"]) for r in rows] == list(range(1, 7))
    assert len({r["path"] for r in rows}) == 6
    assert not any("already_labelled" in r["path"] for r in rows)
    assert {r["predicted"] for r in rows} <= {"ants", "bees"}
    # both classes among the six: a spread-out start, not six of one kind
    assert {Path(r["path"]).parent.name for r in rows} == {"ants", "bees"}
    m = json.loads(csv_path.with_suffix(".json").read_text())
    assert m["n_pool"] == 24 and m["n_pool_already_labelled"] == 1 and m["strategy"] == "typical"
    # run again: the CSV is not overwritten silently
    r = CliRunner().invoke(app, ["suggest", str(lab), "--pool", str(pool), "--out", str(csv_path)])
    assert r.exit_code != 0 and "--overwrite" in r.output
    r = CliRunner().invoke(app, ["suggest", str(lab), "--pool", str(tmp_path / "none")])
    assert r.exit_code != 0 and "no such folder" in r.output
