"""The research log's experiments as configs, and the methods behind them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cvsjepa.checkpoint import load_classifier
from cvsjepa.cli import main
from cvsjepa.config import load_config
from cvsjepa.data.loaders import build_splits
from cvsjepa.evaluate.inference import predict_loader
from cvsjepa.train import build as loop
from cvsjepa.train import classifier
from cvsjepa.train.losses import CVSLoss
from cvsjepa.train.mixing import mix_batch
from cvsjepa.train.sampling import balanced_weights

REPO = Path(__file__).resolve().parent.parent
# temporal_* configs train from a feature store after a stage-1 run: tests/test_temporal.py runs them
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p.name != "base.yaml"
                 and not p.name.startswith("temporal_"))
FAST = ["backbone=tiny", "data.frames=4", "head.num_heads=4", "head.mlp_hidden=32", "train.batch_size=8",
        "train.epochs=1", "stage2.epochs=1", "stage2.batch_size=8", "train.patience=0",
        "train.min_steps=0"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_runs_one_epoch(path, synth_root, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(path), *FAST, f"data.root={synth_root}", f"out={out}", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    cfg = load_config(path, ["backbone=tiny"])
    assert summary["name"] == path.stem and summary["adapt"] == cfg.adapt.mode
    assert summary["epochs_run"] == (2 if cfg.stage2.enabled else 1)
    assert 0 <= summary["best_val_map"] <= 1


def _model(overrides, synth_root):
    cfg = load_config(None, [*FAST, f"data.root={synth_root}", *overrides])
    torch.manual_seed(0)
    return cfg, loop.build_model(cfg)


def _one_step(cfg, model, synth_root):
    split = loop.load_data(cfg, model.backbone.crop_size, roles=("train",))["train"]
    batch = next(iter(split.loader(8, False, 0)))
    opt = loop.build_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch["target"]).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    return grads, changed


def test_lora_changes_only_adapters_and_head(synth_root):
    cfg, model = _model(["adapt.mode=lora", "adapt.lora_r=4", "adapt.lora_alpha=8", "adapt.lr=1e-2"], synth_root)
    grads, changed = _one_step(cfg, model, synth_root)
    assert changed and all(n.startswith("head.") or "lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)  # the adapters actually moved
    # no adapter anywhere but the encoder's attention (the predictor is never wrapped)
    lora_modules = {n.rsplit(".lora_", 1)[0] for n, _ in model.named_parameters() if "lora_" in n}
    assert lora_modules and all(".encoder.layer." in n and n.endswith((".query", ".value")) for n in lora_modules)


@pytest.mark.parametrize("r,targets", [(4, ["query", "value"]), (8, ["q_proj", "k_proj", "v_proj"]), (2, ["output"])])
def test_lora_count_matches_formula(r, targets, synth_root):
    cfg, model = _model(["adapt.mode=lora", f"adapt.lora_r={r}", f"adapt.lora_targets=[{','.join(targets)}]"],
                        synth_root)
    d, layers = model.backbone.embed_dim, len(model.backbone.model.encoder.layer)
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert n_lora == layers * len(targets) * 2 * r * d  # A: r x D, B: D x r per wrapped Linear(D, D)
    info = loop.dry_run(cfg)
    assert info["trainable_breakdown"]["lora"] == n_lora
    assert info["trainable_params"] == n_lora + info["trainable_breakdown"]["head"]


def test_bad_lora_target_is_a_config_error(synth_root):
    from cvsjepa.errors import ConfigError

    with pytest.raises(ConfigError, match="lora_targets"):
        _model(["adapt.mode=lora", "adapt.lora_targets=[qkv]"], synth_root)


@pytest.mark.parametrize("family", ["videomae", "dinov2", "dinov3", "vjepa21"])
def test_lora_reaches_other_families(family, synth_root):
    frames = "16" if family == "videomae" else "4"
    cfg, model = _model([f"backbone.name={family}", f"data.frames={frames}", "adapt.mode=lora", "adapt.lora_r=2"],
                        synth_root)
    wrapped = {n.rsplit(".lora_", 1)[0] for n, _ in model.named_parameters() if "lora_" in n}
    layers = len(list(model.backbone.encoder_blocks()))
    assert len(wrapped) == 2 * layers  # query and value of every encoder block
    roles = model.backbone.attention_modules  # each family's own names for the roles
    assert all(n.endswith((roles["query"], roles["value"])) for n in wrapped)


@pytest.mark.parametrize("n", [1, 2])
def test_unfreeze_last_n_blocks_get_gradients(n, synth_root):
    cfg, model = _model(["adapt.mode=unfreeze", f"adapt.unfreeze_last={n}", "adapt.lr=1e-3"], synth_root)
    grads, changed = _one_step(cfg, model, synth_root)
    layers = len(model.backbone.model.encoder.layer)
    backbone_grads = {n_ for n_ in grads if n_.startswith("backbone.")}
    blocks = {int(g.split(".encoder.layer.")[1].split(".")[0]) for g in backbone_grads}
    assert blocks == set(range(layers - n, layers))
    assert all(".encoder.layer." in g for g in backbone_grads)  # not the embeddings, not the final norm


def test_llrd_groups(synth_root):
    cfg, model = _model(["adapt.mode=unfreeze", "adapt.unfreeze_last=2", "adapt.lr=1e-3", "adapt.llrd=0.5"],
                        synth_root)
    opt = loop.build_optimizer(model, cfg)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["backbone.1"] == pytest.approx(1e-3) and lrs["backbone.0"] == pytest.approx(5e-4)
    assert lrs["head"] == pytest.approx(cfg.train.lr)


def test_lora_best_checkpoint_reloads_to_identical_predictions(synth_root, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *FAST, f"data.root={synth_root}", f"out={out}", "adapt.mode=lora", "adapt.lora_r=4",
                 "adapt.lr=1e-2", "train.epochs=2", "--no-progress"]) == 0
    best = out / "checkpoints" / "best"
    assert (best / "adapter" / "adapter_config.json").is_file()  # saved with save_pretrained
    assert not any("lora_" in k for k in load_file(best / "model.safetensors"))  # adapter lives in adapter/
    model, cfg, _ = load_classifier(best)
    val = build_splits(cfg, model.backbone.crop_size, roles=("val",))["val"]
    preds = predict_loader(model, val.loader(8, False, 0), torch.device("cpu"), progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert preds.ap().map == pytest.approx(summary["val_map"], abs=1e-6)
    import csv

    written = torch.tensor([[float(r[f"prob_C{i}"]) for i in (1, 2, 3)]
                            for r in csv.DictReader(open(out / "predictions_val.csv"))])
    torch.testing.assert_close(preds.probs, written, atol=1e-5, rtol=0)


def test_stage2_starts_from_stage1_best(synth_root, tmp_path, monkeypatch):
    seen = {}
    original = classifier.run_stage

    def spy(fit, plan, trainee, *args, **kwargs):
        if plan.stage == 2:
            seen["start"] = {k: v.clone() for k, v in trainee.model.head.state_dict().items()}
        return original(fit, plan, trainee, *args, **kwargs)

    monkeypatch.setattr(classifier, "run_stage", spy)
    out = tmp_path / "run"
    assert main(["train", str(REPO / "configs" / "exp9_staged.yaml"), *FAST, "train.epochs=3",
                 "train.grad_accum=1", f"data.root={synth_root}", f"out={out}", "--no-progress"]) == 0
    stage1 = load_file(out / "checkpoints" / "stage1_best" / "model.safetensors")
    for k, v in seen["start"].items():
        torch.testing.assert_close(v, stage1[f"head.{k}"], atol=0, rtol=0)
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == ["1", "1", "1", "2"]  # both stages' curves in one file
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stage_best_val_map"]) == {"1", "2"}


def test_focal_pos_weight_smoothing_hand_computed():
    x = torch.tensor([[2.0, -1.0, 0.0]])
    y = torch.tensor([[1.0, 0.0, 1.0]])
    p = torch.sigmoid(x)
    bce = -(y * p.log() + (1 - y) * (1 - p).log())
    assert CVSLoss("bce")(x, y).item() == pytest.approx(bce.mean().item(), rel=1e-6)
    # focal, alpha 0.25 gamma 2: alpha_t (1 - p_t)^2 * bce
    p_t = torch.tensor([p[0, 0], 1 - p[0, 1], p[0, 2]])
    alpha_t = torch.tensor([0.25, 0.75, 0.25])
    focal = (alpha_t * (1 - p_t) ** 2 * bce[0]).mean()
    assert CVSLoss("focal")(x, y).item() == pytest.approx(focal.item(), rel=1e-6)
    # pos_weight [1, 5, 1] scales the positive term of C2 only (C2 is negative here: no change) ...
    assert CVSLoss("bce", pos_weight=[1, 5, 1])(x, y).item() == pytest.approx(bce.mean().item(), rel=1e-6)
    # ... and multiplies it when C2 is positive
    y2 = torch.tensor([[1.0, 1.0, 1.0]])
    manual = -(torch.tensor([1.0, 5.0, 1.0]) * p.log()).mean()
    assert CVSLoss("bce", pos_weight=[1, 5, 1])(x, y2).item() == pytest.approx(manual.item(), rel=1e-6)
    # label smoothing 0.1: targets 1 -> 0.95, 0 -> 0.05
    ys = y * 0.9 + 0.05
    smooth = -(ys * p.log() + (1 - ys) * (1 - p).log()).mean()
    assert CVSLoss("bce", label_smoothing=0.1)(x, y).item() == pytest.approx(smooth.item(), rel=1e-6)


def test_balanced_weights_oversample_positives():
    # one criterion alone: positives and negatives get exactly equal total weight
    single = torch.tensor([[1.0]] * 2 + [[0.0]] * 8)
    w1 = balanced_weights(single)
    assert w1[:2].sum().item() == pytest.approx(w1[2:].sum().item())
    # Endoscapes-like multi-label: most samples all-negative, rare positives per criterion
    gen = torch.Generator().manual_seed(0)
    labels = (torch.rand(400, 3, generator=gen) < torch.tensor([0.15, 0.10, 0.17])).float()
    w = balanced_weights(labels)
    share = (w[:, None] * labels).sum(0) / w.sum()
    raw = labels.mean(0)
    assert (share > 1.4 * raw).all() and (share < 0.5).all()  # measured: 0.14/0.11/0.20 -> 0.25/0.25/0.30
    all_neg = labels.sum(1) == 0
    assert w[all_neg].sum() / w.sum() < all_neg.float().mean()


@pytest.mark.parametrize("key,shape", [("video", (6, 4, 3, 8, 8)), ("tokens", (6, 10, 5))])
def test_mixing_mixes_targets_consistently(key, shape):
    gen = torch.Generator().manual_seed(0)
    batch = {key: torch.randn(shape), "target": torch.eye(3)[torch.arange(6) % 3]}
    for mixup, cutmix in ((0.2, 0.0), (0.0, 1.0)):
        out = mix_batch(batch, mixup, cutmix, 1.0, gen)
        assert out[key].shape == batch[key].shape
        assert torch.allclose(out["target"].sum(1), torch.ones(6))  # convex combinations of one-hot rows
        assert not torch.equal(out[key], batch[key])
    assert mix_batch(batch, 0.0, 0.0, 1.0, gen) is batch  # off means untouched


def test_dry_run_prints_json(capsys):
    assert main(["train", str(REPO / "configs" / "exp10_lora.yaml"), "backbone=tiny", "--dry-run"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"trainable_params", "total_params", "trainable_breakdown"} <= set(info)
    assert info["trainable_breakdown"]["lora"] == 2 * 2 * 2 * 16 * 96  # tiny: 2 layers, q+v, r 16, D 96
    assert math.isclose(info["trainable_fraction"], info["trainable_params"] / info["total_params"], rel_tol=1e-3)
