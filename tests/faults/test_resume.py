"""SIGKILL during training at several points; the resumed run ends exactly like an uninterrupted one."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

FAST = ["backbone=tiny", "data.frames=4", "head.num_heads=4", "head.mlp_hidden=32", "train.batch_size=8",
        "train.epochs=3", "train.patience=0", "train.lr=3e-3", "head.dropout=0.1", "train.mixup_alpha=0.4"]


def _train(args: list[str], kill_after: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, CVSJEPA_FAULT_KILL_AFTER_STEPS=str(kill_after))
    return subprocess.run([sys.executable, "-m", "cvsjepa", "train", *args, "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=600)


def _metrics(run: Path) -> list[dict]:
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    for r in rows:
        r.pop("seconds")
    return rows


@pytest.fixture(scope="module")
def reference(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = _train([*FAST, f"data.root={synth_root}", f"out={out}"])
    assert r.returncode == 0, r.stderr
    return out


# 5 optimiser steps per epoch (33 train clips, batch 8): kill mid-epoch 1, at the end of epoch 1
# (before or after its checkpoint: a step is not an epoch), and mid-epoch 3.
@pytest.mark.parametrize("kill_after", [2, 5, 13])
def test_sigkill_then_resume_matches_uninterrupted(kill_after, reference, synth_root, tmp_path):
    out = tmp_path / "run"
    killed = _train([*FAST, f"data.root={synth_root}", f"out={out}"], kill_after=kill_after)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    if not (out / "checkpoints" / "last_state.pt").exists():  # killed before the first epoch finished
        r = _train(["--resume", str(out)])
        assert r.returncode == 2 and "no complete epoch" in r.stderr
        return
    resumed = _train(["--resume", str(out)])
    assert resumed.returncode == 0, resumed.stderr
    assert _metrics(out) == _metrics(reference)
    ours = load_file(out / "checkpoints" / "best" / "model.safetensors")
    ref = load_file(reference / "checkpoints" / "best" / "model.safetensors")
    assert ours.keys() == ref.keys() and all((ours[k] == ref[k]).all() for k in ours)


def test_resume_with_changed_config_is_refused(reference, synth_root, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    (out / "summary.json").unlink()
    r = _train([*FAST, "train.lr=1e-2", f"data.root={synth_root}", f"out={out}", "resume=true"])
    assert r.returncode == 2 and "train.lr" in r.stderr and r.stderr.strip().count("\n") == 0


def test_resume_of_finished_run_is_a_no_op(reference):
    before = (reference / "summary.json").read_text()
    r = _train(["--resume", str(reference)])
    assert r.returncode == 0 and (reference / "summary.json").read_text() == before
