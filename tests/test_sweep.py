"""`cvsjepa sweep`: K heads from one pass over a feature store; run directory; each head trains
exactly as its own run would."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvsjepa.checkpoint import load_classifier
from cvsjepa.cli import main
from cvsjepa.config import load_config
from cvsjepa.evaluate.inference import predict_loader
from cvsjepa.features import open_store_splits
from cvsjepa.features.extract import extract
from cvsjepa.train.sweep import sweep

REPO = Path(__file__).resolve().parent.parent


def args(root, store, out, *extra) -> list[str]:
    return ["backbone=tiny", f"data.root={root}", "data.frames=4", "data.limit_per_split=16",
            f"features.store={store}", "head.num_heads=4", "head.mlp_hidden=32", "train.batch_size=8",
            "train.epochs=3", "train.patience=0", "train.min_steps=0", f"out={out}", *extra]


@pytest.fixture(scope="module")
def store(synth_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "store"
    extract(load_config(None, args(synth_root, path, "")), progress=False)
    return path


def val_maps(run_dir: Path) -> list[float]:
    return [float(r["val_map"]) for r in csv.DictReader(open(run_dir / "metrics.csv"))]


ALONE = ["sweep.lrs=[1e-3]", "sweep.weight_decays=[0.1]"]


@pytest.fixture(scope="module")
def alone(store, synth_root, tmp_path_factory):
    """A sweep of one head: lr 1e-3, wd 0.1."""
    out = tmp_path_factory.mktemp("alone") / "run"
    return sweep(load_config(None, args(synth_root, store, out, *ALONE)), progress=False).run_dir


def test_sweep_writes_the_run_directory_and_heads_train_as_if_alone(store, alone, synth_root, tmp_path):
    result = sweep(load_config(None, args(synth_root, store, tmp_path / "run", "sweep.lrs=[3e-3,1e-3]",
                                          "sweep.weight_decays=[0.01,0.1]")), progress=False)
    run = result.run_dir
    for name in ["config.yaml", "sweep.csv", "metrics.csv", "summary.json", "train.log", "training_curve.png",
                 "predictions_val.csv", "predictions_test.csv", "checkpoints/best/model.safetensors",
                 "checkpoints/best/config.json"]:
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "sweep.csv")))
    assert len(rows) == 4 * 3 + 4  # every head and epoch, then one final row per head
    final = [r for r in rows if r["epoch"] == "final"]
    assert [(float(r["lr"]), float(r["weight_decay"])) for r in final] == [(3e-3, .01), (3e-3, .1), (1e-3, .01),
                                                                          (1e-3, .1)]
    best = max(final, key=lambda r: float(r["val_map"]))
    assert [r["winner"] for r in final].count("1") == 1 and best["winner"] == "1"
    s = json.loads((run / "summary.json").read_text())
    for key in ["best_epoch", "best_val_map", "val_ap", "test_map", "test_ap", "trainable_params", "total_params",
                "backbone", "seconds"]:
        assert key in s, key
    assert (s["lr"], s["weight_decay"]) == (float(best["lr"]), float(best["weight_decay"]))
    assert s["best_val_map"] == pytest.approx(float(best["val_map"]), abs=1e-5)
    assert s["sweep"]["k"] == 4 and len(s["sweep"]["heads"]) == 4
    assert val_maps(run)[int(best["best_epoch"]) - 1] == pytest.approx(s["best_val_map"], abs=1e-5)

    # head 3 (lr 1e-3, wd 0.1) trained exactly as the sweep of that head alone
    head3 = [r for r in rows if r["head"] == "3" and r["epoch"] != "final"]
    assert [float(r["val_map"]) for r in head3] == pytest.approx(val_maps(alone), abs=1e-7)
    assert [float(r["train_loss"]) for r in head3] == pytest.approx(
        [float(r["train_loss"]) for r in csv.DictReader(open(alone / "metrics.csv"))], abs=1e-6)

    # the winner's checkpoint loads like any other and reproduces its val predictions from the store
    model, cfg, meta = load_classifier(run / "checkpoints" / "best")
    assert (cfg.train.lr, cfg.train.weight_decay) == (s["lr"], s["weight_decay"])
    val = open_store_splits(cfg, roles=("val",), backbone=model.backbone)["val"]
    preds = predict_loader(model, val.loader(8, False, 0), torch.device("cpu"), progress=False)
    written = list(csv.DictReader(open(run / "predictions_val.csv")))
    probs = torch.tensor([[float(r[f"prob_C{i}"]) for i in (1, 2, 3)] for r in written])
    torch.testing.assert_close(probs, preds.probs, atol=1e-5, rtol=0)


def test_a_sweep_of_one_equals_train_from_the_store(store, alone, synth_root, tmp_path):
    from cvsjepa.train.classifier import train

    cfg = load_config(None, args(synth_root, store, tmp_path / "train", "train.lr=1e-3", "train.weight_decay=0.1"))
    train(cfg, progress=False)
    assert val_maps(alone) == pytest.approx(val_maps(tmp_path / "train"), abs=1e-6)
    a = json.loads((alone / "summary.json").read_text())
    b = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert a["test_map"] == pytest.approx(b["test_map"], abs=1e-6)


def test_sweep_without_a_store_is_one_line(synth_root, tmp_path, capsys):
    rc = main(["sweep", "backbone=tiny", f"data.root={synth_root}", f"out={tmp_path / 'x'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "features.store" in err and err.count("\n") == 0


KILLER = Path(__file__).parent / "faults" / "kill_after_steps.py"
PAIR = ["sweep.lrs=[3e-3,1e-3]", "sweep.weight_decays=[0.1]"]  # head 1 is ALONE's (lr 1e-3, wd 0.1)


def _sweep_rows(run: Path) -> list[dict]:
    return list(csv.DictReader(open(run / "sweep.csv")))


def test_a_killed_sweep_resumes_exactly(store, synth_root, tmp_path):
    ref = sweep(load_config(None, args(synth_root, store, tmp_path / "ref", *PAIR)), progress=False).run_dir
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, str(KILLER), "3", "sweep", *args(synth_root, store, out, *PAIR),
                             "--no-progress"], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL  # 2 optimizer steps per epoch: killed in epoch 2
    assert main(["sweep", "--resume", str(out), "--no-progress"]) == 0  # resumed here: it needs no kill
    assert _sweep_rows(out) == _sweep_rows(ref)
    a, b = (json.loads((r / "summary.json").read_text()) for r in (out, ref))
    assert (a["best_val_map"], a["test_map"], a["sweep"]["winner"]) == (b["best_val_map"], b["test_map"],
                                                                      b["sweep"]["winner"])


def _nan_for_head0(monkeypatch):
    from cvsjepa.train import sweep as sweep_module

    real = sweep_module.HeadBankTrainee.forward

    def forward(self, batch):
        out = real(self, batch)
        return [(logits * float("nan") if m.index == 0 else logits, extra)
                for m, (logits, extra) in zip(self._active(), out)]

    monkeypatch.setattr(sweep_module.HeadBankTrainee, "forward", forward)


def test_a_nonfinite_head_is_skipped_alone_or_stops_the_sweep(store, alone, synth_root, tmp_path, monkeypatch):
    _nan_for_head0(monkeypatch)
    run = sweep(load_config(None, args(synth_root, store, tmp_path / "skip", *PAIR, "train.on_nonfinite=skip")),
                progress=False).run_dir
    heads = json.loads((run / "summary.json").read_text())["sweep"]["heads"]
    assert heads[0]["nonfinite_batches_skipped"] == 2 * 3 and heads[1]["nonfinite_batches_skipped"] == 0
    head1 = [float(r["val_map"]) for r in _sweep_rows(run) if r["head"] == "1" and r["epoch"] != "final"]
    assert head1 == pytest.approx(val_maps(alone), abs=1e-7)  # the other head trained as if alone
    with pytest.raises(FloatingPointError, match=r"head 0 \(lr 0.003, wd 0.1\).*on_nonfinite=skip"):
        sweep(load_config(None, args(synth_root, store, tmp_path / "error", *PAIR)), progress=False)
