"""End to end: train on the synthetic data with the tiny backbone, check the run directory contract."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from cvsjepa.checkpoint import load_classifier, save_classifier
from cvsjepa.cli import main
from cvsjepa.config import load_config
from cvsjepa.data.loaders import build_splits
from cvsjepa.errors import CheckpointError
from cvsjepa.evaluate.inference import predict_loader
from cvsjepa.rundir import RESUME_MANIFEST
from cvsjepa.train.build import build_optimizer
from cvsjepa.train.classifier import train

REPO = Path(__file__).resolve().parent.parent


def test_train_steps_lower_the_loss(tiny_overrides):
    from cvsjepa.backbones import build_backbone
    from cvsjepa.heads import build_head
    from cvsjepa.model import CVSClassifier

    cfg = load_config(None, tiny_overrides)
    torch.manual_seed(0)
    backbone = build_backbone(cfg.backbone).freeze()
    model = CVSClassifier(backbone, build_head(cfg.head, backbone.embed_dim))
    split = build_splits(cfg, backbone.crop_size, roles=("train",))["train"]
    batch = next(iter(split.loader(16, shuffle=False, num_workers=0)))
    opt = build_optimizer(model, cfg)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(15):
        loss = loss_fn(model(batch), batch["target"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is None for p in model.backbone.parameters())  # frozen: nothing flows into it


def test_train_writes_the_run_directory(tiny_overrides):
    cfg = load_config(REPO / "configs" / "exp2_attention.yaml", tiny_overrides)
    result = train(cfg, progress=False)
    run = result.run_dir
    for name in ["config.yaml", "metrics.csv", "summary.json", "training_curve.png", "train.log",
                 "predictions_val.csv", "predictions_test.csv", "checkpoints/best/model.safetensors",
                 "checkpoints/best/config.json", RESUME_MANIFEST]:
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    for key in ["best_epoch", "best_val_map", "val_ap", "test_map", "test_ap", "trainable_params",
                "total_params", "backbone", "seconds"]:
        assert key in summary, key
    assert "random" in summary["backbone"]  # a tiny random model is named as such
    assert len(summary["val_ap"]) == 3 and 0 <= summary["best_val_map"] <= 1
    assert summary["trainable_params"] < summary["total_params"]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "train_map", "val_map", "val_ap_C1", "lr_head"} <= set(rows[0])
    # the resolved config is complete and reloads to the same values
    saved = load_config(run / "config.yaml")
    assert saved.train.epochs == 2 and saved.name == "exp2_attention"

    # best checkpoint round trip: reload and reproduce the val predictions written by train
    model, cfg2, meta = load_classifier(run / "checkpoints" / "best")
    val = build_splits(cfg2, model.backbone.crop_size, roles=("val",))["val"]
    preds = predict_loader(model, val.loader(8, False, 0), torch.device("cpu"), progress=False)
    written = list(csv.DictReader(open(run / "predictions_val.csv")))
    assert [r["sample_id"] for r in written] == preds.sample_ids
    probs = torch.tensor([[float(r[f"prob_C{i}"]) for i in (1, 2, 3)] for r in written])
    torch.testing.assert_close(probs, preds.probs, atol=1e-5, rtol=0)
    assert preds.ap().map == pytest.approx(summary["best_val_map"], abs=1e-4)


def test_checkpoint_with_other_head_shape_is_refused(tmp_path, tiny_overrides):
    from cvsjepa.backbones import build_backbone
    from cvsjepa.heads import build_head
    from cvsjepa.model import CVSClassifier

    cfg = load_config(None, tiny_overrides)
    backbone = build_backbone(cfg.backbone).freeze()
    save_classifier(tmp_path / "ck", CVSClassifier(backbone, build_head(cfg.head, backbone.embed_dim)), cfg)
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    meta["config"]["head"]["mlp_hidden"] = 64  # the weights were saved with 32
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_classifier(tmp_path / "ck")


def test_pickle_posing_as_weights_is_refused(tmp_path, tiny_overrides):
    from cvsjepa.backbones import build_backbone
    from cvsjepa.heads import build_head
    from cvsjepa.model import CVSClassifier

    cfg = load_config(None, tiny_overrides)
    backbone = build_backbone(cfg.backbone).freeze()
    save_classifier(tmp_path / "ck", CVSClassifier(backbone, build_head(cfg.head, backbone.embed_dim)), cfg)
    import pickle

    (tmp_path / "ck" / "model.safetensors").write_bytes(pickle.dumps({"head.x": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_classifier(tmp_path / "ck")


@pytest.mark.parametrize("args,needle", [
    (["train", "data.root=/nonexistent/endoscapes", "backbone=tiny"], "/nonexistent/endoscapes"),
    (["train", "train.epochz=1"], "train.epochs"),
    (["train", "configs/nope.yaml"], "nope.yaml"),
    (["train", "backbone.preset=vitl", "data.root=/tmp"], "backbone.path"),
])
def test_cli_user_errors_are_one_line(args, needle, capsys):
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert needle in err and err.count("\n") == 0 and "Traceback" not in err


def test_existing_run_directory_is_not_overwritten(tiny_overrides, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    rc = main(["train", *tiny_overrides])
    assert rc == 2 and (out / "summary.json").read_text() == "{}"


def test_a_nonfinite_loss_stops_the_run_or_skips_the_batch(tiny_overrides, tmp_path, monkeypatch, capsys):
    from cvsjepa.train import classifier

    real, calls = classifier.ClassifierTrainee.forward, [0]

    def forward(self, batch):  # the second training batch gives NaN logits
        calls[0] += 1
        out = real(self, batch)
        return [(logits * float("nan"), extra) for logits, extra in out] if calls[0] == 2 else out

    monkeypatch.setattr(classifier.ClassifierTrainee, "forward", forward)
    assert main(["train", *tiny_overrides, "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert "non-finite loss (nan) at epoch 1, step 2" in err and "train.on_nonfinite=skip" in err
    calls[0] = 0
    out = tmp_path / "skip"
    assert main(["train", *tiny_overrides, f"out={out}", "train.on_nonfinite=skip", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["nonfinite_batches_skipped"] == 1
