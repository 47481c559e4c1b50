"""Fine-tuning: layer groups, freezing, discriminative LRs, resume, the CLI (ONNX export of the
models it saves is tested in tests/models/test_export.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.finetune._data import FAST, make_data
from transferlab.cli import app
from transferlab.data import load_dataset
from transferlab.exceptions import InvalidParameterError
from transferlab.finetune import Callback, FinetuneConfig, FineTuner, use_bf16
from transferlab.models import FinetunedModel, load_model

runner = CliRunner()


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "data")


def test_finetune_learns_and_beats_chance(data, tmp_path):
    ds = load_dataset(data)
    cfg = FinetuneConfig(
        **{**FAST, "backbone": "efficientnet_lite0", "weights": "default"},
        epochs=2,
        freeze_epochs=1,
    )
    result = FineTuner(cfg, progress=False).fit(
        ds.train, ds.val, ds.classes, checkpoint_dir=tmp_path / "ck"
    )
    assert len(result.history) == 3
    assert [h["phase"] for h in result.history] == ["frozen", "unfrozen", "unfrozen"]
    assert result.best_val_accuracy >= 0.75
    assert result.probe_val_score is not None
    with pytest.warns(DeprecationWarning, match="probe_val_score"):  # first use in this process
        assert result.probe_val_accuracy == result.probe_val_score
    assert result.to_dict()["probe_val_accuracy"] == result.probe_val_score
    assert (tmp_path / "ck" / "last.pt").exists() and (tmp_path / "ck" / "best.pt").exists()


class _Interrupt(Callback):
    """Simulates Ctrl-C in the middle of a given epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.batches = epoch, 0

    def after_batch(self, tuner):
        if tuner.epoch + 1 == self.epoch:
            self.batches += 1
            if self.batches == 2:
                raise KeyboardInterrupt


@pytest.mark.parametrize("extra", [{"mixup": 0.3}, {"ema": 0.9}], ids=["mixup", "ema"])
def test_interrupted_run_resumes_to_the_same_result(data, tmp_path, extra):
    ds = load_dataset(data)
    # mixup draws random pairs and blend weights: the resumed run must draw the same ones;
    # the weight average (ema) must carry over too, or validation and the kept weights differ
    cfg = FinetuneConfig(**FAST, epochs=3, freeze_epochs=1, head_init="random", **extra)
    full = FineTuner(cfg, progress=False)
    full.fit(ds.train, ds.val, ds.classes, checkpoint_dir=tmp_path / "full")

    broken = FineTuner(cfg, callbacks=[_Interrupt(epoch=3)], progress=False)
    with pytest.raises(KeyboardInterrupt):
        broken.fit(ds.train, ds.val, ds.classes, checkpoint_dir=tmp_path / "resumed")
    saved = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    assert saved["epoch"] == 2  # the interrupted epoch left no trace

    resumed = FineTuner(cfg, progress=False)
    resumed.fit(ds.train, ds.val, ds.classes, checkpoint_dir=tmp_path / "resumed", resume=True)
    assert [h["val_loss"] for h in resumed.history] == pytest.approx(
        [h["val_loss"] for h in full.history], rel=1e-5
    )
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in full.history], rel=1e-5
    )
    for (k, a), (_, b) in zip(
        full.backbone_.model.state_dict().items(),
        resumed.backbone_.model.state_dict().items(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_resume_refuses_other_settings(data, tmp_path):
    ds = load_dataset(data)
    FineTuner(FinetuneConfig(**FAST, epochs=1, freeze_epochs=0), progress=False).fit(
        ds.train, ds.val, ds.classes, checkpoint_dir=tmp_path / "ck"
    )
    with pytest.raises(InvalidParameterError, match="other data or settings"):
        FineTuner(FinetuneConfig(**FAST, epochs=2, freeze_epochs=0), progress=False).fit(
            ds.train, ds.val, ds.classes, checkpoint_dir=tmp_path / "ck", resume=True
        )


def test_resume_accepts_a_checkpoint_from_before_new_settings_existed(data, tmp_path):
    """A checkpoint written before a config field was added (here jitter and mixup) resumes
    under the field's default, instead of being refused as 'other settings'."""
    ds = load_dataset(data)
    cfg = FinetuneConfig(**FAST, epochs=2, freeze_epochs=0, head_init="random")
    broken = FineTuner(cfg, callbacks=[_Interrupt(epoch=2)], progress=False)
    with pytest.raises(KeyboardInterrupt):
        broken.fit(ds.train, ds.val, ds.classes, checkpoint_dir=tmp_path / "ck")
    path = tmp_path / "ck" / "last.pt"
    state = torch.load(path, weights_only=False)
    for key in ("jitter", "mixup"):
        del state["fingerprint"]["config"][key]
    torch.save(state, path)
    resumed = FineTuner(cfg, progress=False)
    resumed.fit(ds.train, ds.val, ds.classes, checkpoint_dir=tmp_path / "ck", resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    # a setting that differs from what the old run used is still refused
    torch.save(state, path)
    with pytest.raises(InvalidParameterError, match="other data or settings"):
        FineTuner(FinetuneConfig(**{**FAST, "batch_size": 2}, epochs=2), progress=False).fit(
            ds.train, ds.val, ds.classes, checkpoint_dir=tmp_path / "ck", resume=True
        )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"epochs": 0, "freeze_epochs": 0}, "at least 1"),
        ({"lr": 0}, "lr must be > 0"),
        ({"bn_policy": "x"}, "bn_policy"),
        ({"class_balance": "x"}, "class_balance"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"precision": "fp16"}, "precision must be one of"),
        ({"jitter": 1.0}, "jitter must be in"),
        ({"jitter": -0.1}, "jitter must be in"),
        ({"mixup": -1}, "mixup must be >= 0"),
        ({"ema": 1.0}, "ema must be None or a decay in"),
        ({"ema": 0}, "ema must be None or a decay in"),
        ({"style": 1.5}, r"style must be in \[0, 1\]"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(InvalidParameterError, match=match):
        FinetuneConfig(**kw)


def test_jitter_strength_sets_how_much_contrast_varies():
    from PIL import Image

    from transferlab.backbones import load_backbone
    from transferlab.finetune import train_transform

    bb = load_backbone("test_resnet", weights="random")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(60, 200, (48, 48), dtype=np.uint8)).convert("RGB")

    def contrast_spread(jitter: float) -> float:
        tf = train_transform(bb, 32, augment=True, greyscale=True, min_scale=1.0, jitter=jitter)
        torch.manual_seed(0)
        return float(np.std([tf(img).std().item() for _ in range(40)]))

    none, mild, strong = contrast_spread(0.0), contrast_spread(0.2), contrast_spread(0.6)
    assert none < mild < strong
    assert strong > 2 * mild


def test_cli_finetune_saves_a_model_predict_loads(data, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "finetune",
            str(data),
            "--out",
            str(out),
            "--backbone",
            "test_resnet",
            "--weights",
            "random",
            "--image-size",
            "48",
            "--epochs",
            "1",
            "--freeze-epochs",
            "1",
            "--batch-size",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    for key in (
        "accuracy",
        "balanced_accuracy",
        "n_train",
        "n_val",
        "n_skipped",
        "classes",
        "per_class",
        "backbone",
        "layer",
        "seconds",
        "epochs",
        "history",
        "probe_val_accuracy",
        "advice",
    ):
        assert key in m, key
    assert m["epochs"] == 2 and len(m["history"]) == 2
    for f in (
        "report.html",
        "training_curves.png",
        "confusion_matrix.png",
        "model/weights.safetensors",
    ):
        assert (out / f).exists(), f
    model = load_model(out / "model")
    assert isinstance(model, FinetunedModel)
    imgs = sorted((data / "val").rglob("*.png"))
    preds = model.predict_paths(imgs)
    acc = np.mean([p.label == p.path.split("/")[-2] for p in preds])
    assert acc == pytest.approx(m["accuracy"])
    res = runner.invoke(app, ["predict", str(out / "model"), str(imgs[0]), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["label"] in ("hstripes", "vstripes")
    # a damaged weights file is refused with a clear error
    (out / "model" / "weights.safetensors").write_bytes(b"garbage")
    res = runner.invoke(app, ["predict", str(out / "model"), str(imgs[0])])
    assert res.exit_code == 2 and "changed or damaged" in res.output


def test_cli_resume_needs_out(data):
    res = runner.invoke(app, ["finetune", str(data), "--resume"])
    assert res.exit_code == 2 and "--resume needs --out" in res.output


def test_adapt_bn_and_freeze_to_in_fine_tuning(data):
    """--adapt-bn re-estimates BatchNorm statistics before training (with --bn freeze nothing else
    moves them); --freeze-to 2 trains only the groups from the third on: the stem's weights stay
    the pretrained ones while deeper ones change."""
    from transferlab.backbones import load_backbone

    ds = load_dataset(data)
    cfg = FinetuneConfig(
        **FAST, epochs=1, freeze_to=2, adapt_bn=True, bn_policy="freeze", wise="off"
    )
    tuner = FineTuner(cfg, progress=False)
    tuner.fit(ds.train, ds.val, ds.classes)
    fresh = load_backbone("test_resnet", weights="random").model.state_dict()
    tuned = tuner.backbone_.model.state_dict()
    stem_params = tuner.groups_[0][1]
    deep_params = [n for n in tuner.groups_[2][1] if n.endswith("weight")]
    assert all(torch.equal(tuned[n], fresh[n]) for n in stem_params)
    assert not all(torch.equal(tuned[n], fresh[n]) for n in deep_params)
    bn_means = [k for k in fresh if k.endswith("running_mean")]
    assert bn_means and all(not torch.allclose(tuned[k], fresh[k]) for k in bn_means[:3])


def test_bf16_autocast_training_learns_and_auto_follows_the_hardware(data):
    """precision='bf16' trains under autocast (loss and metrics in fp32) and still learns;
    'auto' takes bf16 only where the CPU does it natively, and 'fp32' is the opt-out."""
    ds = load_dataset(data)
    cfg = FinetuneConfig(**FAST, epochs=3, lr=5e-3, head_init="random", precision="bf16")
    result = FineTuner(cfg, progress=False).fit(ds.train, ds.val, ds.classes)
    assert result.precision == "bf16"
    losses = [h["train_loss"] for h in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    cpu = torch.device("cpu")
    assert use_bf16("auto", cpu) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert use_bf16("bf16", cpu) and not use_bf16("fp32", cpu)


def test_cli_finetune_json_is_the_only_thing_on_stdout(data, tmp_path):
    """`finetune --json` prints metrics.json alone on stdout (epoch lines are progress, on
    stderr), so it can be piped into jq."""
    fast = ["--backbone", "test_resnet", "--weights", "random", "--image-size", "48"]
    fast += ["--epochs", "1", "--batch-size", "4", "--workers", "0"]
    args = ["finetune", str(data), "--out", str(tmp_path / "run"), "--json", *fast]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert metrics["epochs"] == 1 and "history" in metrics
