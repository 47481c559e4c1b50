"""Fine-tuning: layer groups, freezing, discriminative LRs, resume, saved models, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests._helpers import build_image_folder
from transferlab.cli import app
from transferlab.data import load_dataset
from transferlab.exceptions import InvalidParameterError
from transferlab.finetune import Callback, FinetuneConfig, FineTuner, layer_groups, use_bf16
from transferlab.models import FinetunedModel, load_model

runner = CliRunner()
FAST = {
    "backbone": "test_resnet",
    "weights": "random",
    "image_size": 48,
    "batch_size": 4,
    "num_workers": 0,
}


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    build_image_folder(root / "train", n_per_class=8, seed=1)
    build_image_folder(root / "val", n_per_class=4, seed=2)
    return root


def test_layer_groups_follow_the_network_order():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", num_classes=3)
    groups = layer_groups(model)
    names = [g for g, _ in groups]
    assert names[0] == "stem" and names[-1] == "classifier"
    assert groups[-1][1] == ["classifier.weight", "classifier.bias"]
    assert any(p.startswith("conv_stem") for p in groups[0][1])
    flat = [p for _, ps in groups for p in ps]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())  # each parameter once
    assert len(groups) >= 8  # stem, 7 stages (+ head conv), classifier


def test_freeze_to_and_discriminative_learning_rates(data):
    ds = load_dataset(data)
    tuner = FineTuner(FinetuneConfig(**FAST, lr=1e-2, lr_mult=100), progress=False)
    tuner._setup(ds.classes)
    tuner.freeze_to(-1)
    trainable = [n for n, p in tuner.backbone_.model.named_parameters() if p.requires_grad]
    assert trainable == tuner.groups_[-1][1]
    tuner.freeze_to(0)
    assert all(p.requires_grad for p in tuner.backbone_.model.parameters())
    _, max_lrs = tuner._optimizer(1e-2, 100)
    assert max(max_lrs) == pytest.approx(1e-2)
    assert min(max_lrs) == pytest.approx(1e-4)
    assert max_lrs == sorted(max_lrs)  # stem lowest ... classifier highest


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
    assert result.probe_val_accuracy is not None
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


def test_lr_find_sweeps_and_restores_weights(data, tmp_path):
    ds = load_dataset(data)
    tuner = FineTuner(FinetuneConfig(**FAST), progress=False)
    res = tuner.lr_find(ds.train, ds.classes, num_it=12, start_lr=1e-5, end_lr=10)
    assert 5 <= len(res.lrs) <= 12
    assert res.lrs == sorted(res.lrs) and res.lrs[0] == pytest.approx(1e-5)
    assert res.lrs[0] <= res.suggestion * 10 <= res.lrs[-1]
    assert "minimum" in res.rule
    png = res.plot(tmp_path / "lr.png")
    assert png.stat().st_size > 1000


def test_cli_lr_find(data, tmp_path):
    res = runner.invoke(
        app,
        [
            "lr-find",
            str(data),
            "--out",
            str(tmp_path / "lr"),
            "--backbone",
            "test_resnet",
            "--weights",
            "random",
            "--image-size",
            "48",
            "--num-it",
            "8",
            "--batch-size",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "suggested lr" in res.stdout
    assert (tmp_path / "lr" / "lr_find.png").exists()
    assert json.loads((tmp_path / "lr" / "lr_find.json").read_text())["suggestion"] > 0


@pytest.mark.parametrize("kind", ["finetune", "logreg", "svm", "centroid"])
def test_onnx_export_matches_pytorch(data, tmp_path, kind):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from transferlab.models.export import export_onnx
    from transferlab.pipeline import FitConfig, fit

    out = tmp_path / "run"
    if kind == "finetune":
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
                "0",
                "--batch-size",
                "4",
            ],
        )
        assert res.exit_code == 0, res.output
    else:
        fit(
            FitConfig(
                data=str(data),
                out=str(out),
                backbone="test_resnet",
                weights="random",
                classifier=kind,
                progress=False,
            )
        )
    model = load_model(out / "model", device="cpu", progress=False)
    written = export_onnx(model, tmp_path / "onnx")
    spec = json.loads((tmp_path / "onnx" / "preprocessing.json").read_text())
    assert spec["output"]["classes"] == ["hstripes", "vstripes"]
    assert written["max_abs_diff"] < 1e-4
    # the exported graph, fed as preprocessing.json says, reproduces the library's predictions
    from PIL import Image
    from torchvision import transforms as T

    p = spec["preprocessing"]
    tf = T.Compose(
        [
            T.Resize(
                p["resize_shorter_side"], interpolation=T.InterpolationMode(p["interpolation"])
            ),
            T.CenterCrop(p["center_crop"]),
            T.ToTensor(),
            T.Normalize(p["mean"], p["std"]),
        ]
    )
    imgs = sorted((data / "val").rglob("*.png"))
    x = np.stack([tf(Image.open(i).convert("RGB")).numpy() for i in imgs])
    onnx_p = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx")).run(None, {"image": x})[0]
    lib = model.predict_paths(imgs, top_k=2)
    lib_p = np.array([[dict(q.top)[c] for c in spec["output"]["classes"]] for q in lib])
    np.testing.assert_allclose(onnx_p, lib_p, atol=1e-4)


def test_cli_export(data, tmp_path):
    from transferlab.pipeline import FitConfig, fit

    fit(
        FitConfig(
            data=str(data),
            out=str(tmp_path / "run"),
            backbone="test_resnet",
            weights="random",
            progress=False,
        )
    )
    res = runner.invoke(app, ["export", str(tmp_path / "run" / "model"), "--format", "onnx"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "model" / "export-onnx" / "model.onnx").exists()
    res = runner.invoke(app, ["export", str(tmp_path / "run" / "model"), "--format", "tflite"])
    assert res.exit_code == 2 and "--format must be one of onnx" in res.output


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


def test_mixup_trains_on_blended_pairs_and_stays_deterministic(data):
    """mixup > 0 changes what the network is trained on (blended images, two-label loss), still
    learns, and two runs with one seed match step for step (so --resume stays exact)."""
    ds = load_dataset(data)

    def run(mixup: float) -> list[float]:
        cfg = FinetuneConfig(**FAST, epochs=3, lr=5e-3, head_init="random", mixup=mixup)
        result = FineTuner(cfg, progress=False).fit(ds.train, ds.val, ds.classes)
        return [h["train_loss"] for h in result.history]

    plain, mixed, again = run(0.0), run(0.4), run(0.4)
    assert mixed == again
    assert mixed != plain
    assert all(np.isfinite(mixed)) and mixed[-1] < mixed[0]


def test_ema_validates_and_keeps_the_bias_corrected_weight_average(data):
    """With ``ema`` the weights validated after each epoch, and kept at the end, are the
    bias-corrected exponential average of the weights after every optimiser step (recomputed
    here from the trajectory), not the last step's weights."""
    ds = load_dataset(data)
    decay = 0.8

    class Trajectory(Callback):
        def __init__(self) -> None:
            self.steps: list[dict[str, torch.Tensor]] = []
            self.epoch_ends: list[int] = []

        def after_batch(self, tuner):
            state = tuner.backbone_.model.state_dict()
            self.steps.append({k: v.detach().clone() for k, v in state.items()})

        def after_epoch(self, tuner):
            self.epoch_ends.append(len(self.steps))

    traj = Trajectory()
    cfg = FinetuneConfig(
        **FAST, epochs=2, freeze_epochs=1, lr=5e-3, head_init="random", ema=decay, wise="off"
    )
    tuner = FineTuner(cfg, callbacks=[traj], progress=False)
    result = tuner.fit(ds.train, ds.val, ds.classes)
    averages, avg = [], None
    for t, state in enumerate(traj.steps, start=1):
        w = (1 - decay) / (1 - decay**t)
        avg = {k: v.clone() if avg is None else avg[k] + w * (v - avg[k]) for k, v in state.items()}
        if t in traj.epoch_ends:
            averages.append(avg)
    kept = tuner.backbone_.model.state_dict()
    expected = averages[result.best_epoch - 1]
    moved = [k for k in expected if not torch.equal(traj.steps[-1][k], traj.steps[0][k])]
    assert moved  # the run trained something, so the average differs from the last step
    for k in moved:
        torch.testing.assert_close(kept[k], expected[k], rtol=1e-4, atol=1e-6, msg=k)
    assert any(not torch.allclose(kept[k], traj.steps[-1][k]) for k in moved)


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
