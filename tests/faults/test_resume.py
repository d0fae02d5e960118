"""SIGKILL during training at several points; the resumed run ends exactly like an uninterrupted one."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from cvsjepa.rundir import BEST_DIR, RESUME_MANIFEST, SUMMARY_FILE, resume_file
from resume_state import resume_path

FAST = ["backbone=tiny", "data.frames=4", "head.num_heads=4", "head.mlp_hidden=32", "train.batch_size=8",
        "train.epochs=3", "train.patience=0", "train.min_steps=0", "train.lr=3e-3", "head.dropout=0.1",
        "train.mixup_alpha=0.4"]


KILLER = Path(__file__).with_name("kill_after_steps.py")


def _train(args: list[str], kill_after: int | str = 0, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``cvsjepa train ARGS`` in a subprocess; ``kill_after``: SIGKILL it there (kill_after_steps.py)."""
    cmd = [sys.executable, str(KILLER), str(kill_after)] if kill_after else [sys.executable, "-m", "cvsjepa"]
    return subprocess.run([*cmd, "train", *args, "--no-progress"], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def _metrics(run: Path) -> list[dict]:
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    for r in rows:
        r.pop("seconds")
    return rows


def _train_here(args: list[str], capsys) -> tuple[int, str]:
    """``cvsjepa train ARGS`` in this process (no kill needed): (exit code, stderr)."""
    from cvsjepa.cli import main

    capsys.readouterr()
    rc = main(["train", *args, "--no-progress"])
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def reference(synth_root, tmp_path_factory):
    """The uninterrupted run, trained in this process (what a subprocess would compute, without its
    start-up)."""
    from cvsjepa.cli import main

    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", *FAST, f"data.root={synth_root}", f"out={out}", "--no-progress"]) == 0
    return out


# 5 optimiser steps per epoch (33 train clips, batch 8): kill mid-epoch 1, at the end of epoch 1
# (before or after its checkpoint: a step is not an epoch), and mid-epoch 3. Mid-epoch 3 (resume from
# a saved epoch, then finish) runs by default; the other two points run with the slow tests.
@pytest.mark.parametrize("kill_after", [pytest.param(2, marks=pytest.mark.slow),
                                        pytest.param(5, marks=pytest.mark.slow), 13])
def test_sigkill_then_resume_matches_uninterrupted(kill_after, reference, synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    killed = _train([*FAST, f"data.root={synth_root}", f"out={out}"], kill_after=kill_after)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    if not (out / RESUME_MANIFEST).exists():  # killed before the first epoch finished
        rc, err = _train_here(["--resume", str(out)], capsys)
        assert rc == 2 and "no complete epoch" in err
        return
    rc, err = _train_here(["--resume", str(out)], capsys)  # the resumed process needs no kill: this one
    assert rc == 0, err
    assert _metrics(out) == _metrics(reference)
    ours = load_file(out / "checkpoints" / "best" / "model.safetensors")
    ref = load_file(reference / "checkpoints" / "best" / "model.safetensors")
    assert ours.keys() == ref.keys() and all((ours[k] == ref[k]).all() for k in ours)


def test_resume_with_changed_config_is_refused(reference, synth_root, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    (out / "summary.json").unlink()
    rc, err = _train_here([*FAST, "train.lr=1e-2", f"data.root={synth_root}", f"out={out}", "resume=true"], capsys)
    assert rc == 2 and "train.lr" in err and err.strip().count("\n") == 0


def test_resume_of_finished_run_is_a_no_op(reference, capsys):
    before = (reference / "summary.json").read_text()
    rc, _ = _train_here(["--resume", str(reference)], capsys)
    assert rc == 0 and (reference / "summary.json").read_text() == before


def test_resume_before_the_first_complete_epoch_is_refused(reference, tmp_path, capsys):
    """What a kill in epoch 1 leaves (kill point 2, a slow test): a run directory without a resume state."""
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    (copy / SUMMARY_FILE).unlink()
    resume_path(copy).unlink()
    (copy / RESUME_MANIFEST).unlink()
    rc, err = _train_here(["--resume", str(copy)], capsys)
    assert rc == 2 and "no complete epoch" in err and err.strip().count("\n") == 0


def _assert_same_as(out: Path, reference: Path) -> None:
    assert _metrics(out) == _metrics(reference)
    ours = load_file(out / BEST_DIR / "model.safetensors")
    ref = load_file(reference / BEST_DIR / "model.safetensors")
    assert ours.keys() == ref.keys() and all((ours[k] == ref[k]).all() for k in ours)
    a, b = (json.loads((r / SUMMARY_FILE).read_text()) for r in (out, reference))
    assert (a["best_epoch"], a["best_val_map"], a["test_map"]) == (b["best_epoch"], b["best_val_map"], b["test_map"])


def test_an_interrupted_save_resumes_from_the_last_complete_epoch(reference, synth_root, tmp_path, capsys):
    """Killed at the end of epoch 2 after its best checkpoint but before its resume state; then the
    crash between a resume file and its manifest is staged too (a complete epoch-2 file the manifest
    does not name). Resume must continue after epoch 1, put the best checkpoint back in step with the
    state it resumes from, and end exactly like the uninterrupted run."""
    out = tmp_path / "run"
    killed = _train([*FAST, f"data.root={synth_root}", f"out={out}"], kill_after="save:2")
    assert killed.returncode == -signal.SIGKILL
    shutil.copy(resume_path(out), out / resume_file(2))
    rc, err = _train_here(["--resume", str(out)], capsys)
    assert rc == 0, err
    assert "resuming after epoch 1, the last complete save" in err
    ref_maps = [float(r["val_map"]) for r in _metrics(reference)]
    if ref_maps[1] > ref_maps[0]:  # epoch 2 had been saved as the best before the kill
        assert "rewriting it from the resume state" in err
    _assert_same_as(out, reference)


def test_a_damaged_resume_state_is_refused(reference, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    (copy / SUMMARY_FILE).unlink()
    path = resume_path(copy)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, as a failing disk leaves
    path.write_bytes(bytes(data))
    rc, err = _train_here(["--resume", str(copy)], capsys)
    assert rc == 2 and "damaged" in err and err.strip().count("\n") == 0


def test_an_auto_named_run_resumes_after_a_move_by_a_relative_path(reference, synth_root, tmp_path, capsys,
                                                                    monkeypatch):
    """The README's way (no out=), then the run directory moved, then `--resume` with a relative path."""
    work = tmp_path / "work"
    work.mkdir()
    killed = _train([*FAST, f"data.root={synth_root}"], kill_after=7, cwd=work)  # mid epoch 2
    assert killed.returncode == -signal.SIGKILL
    (auto,) = list((work / "runs").iterdir())
    (tmp_path / "elsewhere").mkdir()
    auto.rename(tmp_path / "elsewhere" / "mine")
    monkeypatch.chdir(tmp_path)
    rc, err = _train_here(["--resume", "elsewhere/mine"], capsys)
    assert rc == 0, err
    _assert_same_as(tmp_path / "elsewhere" / "mine", reference)
