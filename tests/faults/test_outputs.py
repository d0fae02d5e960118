"""What cvsjepa writes: only its own files, never over a run's own results, readable by lab-mates, and
a one-line error (not a traceback) where it cannot write.

Issue 15, items 4 (convert --overwrite), 5 (evaluate on other data), 6 (one owner per run
directory), 9 (full disk, unwritable places, out= a file, damaged runs in `runs`), 12 (file modes)
and 14 (the `runs` table tells runs of the same name apart)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from cvsjepa.config import load_config
from cvsjepa.errors import ConfigError
from cvsjepa.rundir import CONFIG_FILE, SUMMARY_FILE, RunDir, predictions_file, thresholds_file
from faults.cli_helpers import one_line_error, run_cli

# Somewhere no process may create anything (root included): sysfs refuses new entries.
UNWRITABLE = Path("/sys/cvsjepa-fault-suite")


# ------------------------------------------------------------------ item 4: convert --overwrite
@pytest.fixture
def meta_checkpoint(tmp_path) -> Path:
    from test_meta_checkpoint import TINY, OriginalEncoder, meta_file

    return meta_file(tmp_path / "vitl.pt", OriginalEncoder(TINY, seed=0))


def test_convert_overwrite_never_deletes_a_folder_it_did_not_write(meta_checkpoint, tmp_path, capsys):
    mine = tmp_path / "my_thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    rc, _, err = run_cli(capsys, "convert", meta_checkpoint, "--out", mine, "--overwrite")
    line = one_line_error(err)
    assert rc == 2 and str(mine) in line and "cvsjepa convert" in line
    assert (mine / "chapter1.tex").read_text() == "years of work"
    # what convert wrote itself is replaced on request
    out = tmp_path / "converted"
    assert run_cli(capsys, "convert", meta_checkpoint, "--out", out)[0] == 0
    assert run_cli(capsys, "convert", meta_checkpoint, "--out", out, "--overwrite")[0] == 0
    assert (out / "model.safetensors").is_file()


# ------------------------------------------------------------------ item 5: evaluate on other data
def _snapshot(run: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of a run with its inode (an atomic rewrite changes it) and bytes."""
    return {str(p.relative_to(run)): (p.stat().st_ino, p.read_bytes()) for p in run.rglob("*") if p.is_file()}


def test_evaluate_on_other_data_never_replaces_the_runs_own_results(run_copy, data_copy, capsys):
    args = ["--split", "val", "--bootstrap", "0", "--no-progress", "--device", "cpu"]
    assert run_cli(capsys, "evaluate", run_copy, *args)[0] == 0  # the run's own evaluation
    own = _snapshot(run_copy)
    assert thresholds_file() in own and predictions_file("val") in own
    rc, out, err = run_cli(capsys, "evaluate", run_copy, "--data-root", data_copy, *args)
    assert rc == 0, err
    after = _snapshot(run_copy)
    assert {k: after[k] for k in own} == own  # not one of the run's files was rewritten
    new = sorted(set(after) - set(own))
    assert new and all(data_copy.name in name for name in new), new
    report = json.loads(next(run_copy / n for n in new if n.startswith("eval_val")).read_text())
    assert report["data_root"] == str(data_copy)


# ------------------------------------------------------------------ item 6: one owner per run directory
def test_two_claims_of_the_same_out_give_one_owner(tmp_path):
    """Eight trainings started at the same moment on the same ``out``: exactly one owns it."""
    for attempt in range(10):  # the unguarded check-then-mkdir lost ~30 % of such rounds
        cfg = load_config(None, ["backbone=tiny", f"out={tmp_path / f'race{attempt}'}"])
        start, owners, refused = threading.Barrier(8), [], []

        def claim():
            start.wait()
            try:
                owners.append(RunDir.create(cfg))
            except ConfigError as e:
                refused.append(str(e))

        threads = [threading.Thread(target=claim) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(owners) == 1 and len(refused) == 7
        assert all("already exists" in msg for msg in refused)


def test_a_second_training_into_a_finished_run_is_refused(run_copy, synth_root, capsys):
    from tiny_runs import tiny_train_args

    before = _snapshot(run_copy)
    rc, _, err = run_cli(capsys, "train", *tiny_train_args(synth_root, run_copy, epochs=1), "--no-progress")
    assert rc == 2 and "already exists" in one_line_error(err)
    assert _snapshot(run_copy) == before


# ------------------------------------------------------------------ item 9: places cvsjepa cannot write
def test_out_pointing_at_an_existing_file_is_one_line(synth_root, tmp_path, capsys):
    from tiny_runs import tiny_train_args

    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    rc, _, err = run_cli(capsys, "train", *tiny_train_args(synth_root, target, epochs=1), "--no-progress")
    assert rc == 2 and "is an existing file" in one_line_error(err)
    assert target.read_text() == "keep me"


def test_unwritable_output_locations_are_one_line(synth_root, capsys, tmp_path):
    from tiny_runs import tiny_train_args

    assert not UNWRITABLE.exists()
    rc, _, err = run_cli(capsys, "synth", "--out", UNWRITABLE / "data", "--videos", "1", "1", "1", "--no-progress")
    assert rc == 2 and str(UNWRITABLE) in one_line_error(err)
    rc, _, err = run_cli(capsys, "train", *tiny_train_args(synth_root, UNWRITABLE / "run", epochs=1),
                         "data.limit_per_split=4", "--no-progress")
    assert rc == 2 and str(UNWRITABLE) in one_line_error(err)
    rc, _, err = run_cli(capsys, "extract", "backbone=tiny", f"data.root={synth_root}", "data.frames=4",
                         "data.limit_per_split=4", f"features.store={UNWRITABLE / 'store'}", "--no-progress")
    assert rc == 2 and str(UNWRITABLE) in one_line_error(err)


def test_predict_into_an_unwritable_folder_is_one_line(trained_run, synth_root, tmp_path, capsys):
    frames = tmp_path / "case"
    frames.mkdir()
    vid = int(float((synth_root / "val_vids.txt").read_text().split()[0]))
    for p in sorted((synth_root / "val").glob(f"{vid}_*.jpg"))[:4]:
        shutil.copy(p, frames / p.name)
    rc, _, err = run_cli(capsys, "predict", frames, "--run", trained_run, "--out", UNWRITABLE / "timeline",
                         "--no-progress", "--no-plot", "--device", "cpu")
    assert rc == 2 and str(UNWRITABLE) in one_line_error(err)


Usage = namedtuple("Usage", "total used free")


def _full_disk(monkeypatch):
    """What a full disk looks like from Python: no free byte left where the file was being written."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 << 30, 10 << 30, 0))


def test_a_full_disk_inside_torch_save_is_one_line(monkeypatch, tmp_path):
    import cvsjepa.io as cio

    def torch_save_on_a_full_disk(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04" + b"\0" * 60)  # what torch leaves before it gives up
        # the exact error torch 2.x raises when a write hits ENOSPC (it does not say "disk")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    _full_disk(monkeypatch)
    monkeypatch.setattr(cio.torch, "save", torch_save_on_a_full_disk)
    with pytest.raises(cio.DiskFullError, match="disk full"):
        cio.atomic_torch_save(tmp_path / "state.pt", {"w": torch.zeros(3)})
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_inside_safetensors_save_file_is_one_line(monkeypatch, synth_root, tmp_path, capsys):
    import cvsjepa.io as cio
    from safetensors import SafetensorError
    from tiny_runs import tiny_train_args

    def save_file_on_a_full_disk(tensors, path, metadata=None):
        Path(path).write_bytes(b"\0" * 16)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(cio, "save_file", save_file_on_a_full_disk)
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, "train", *tiny_train_args(synth_root, out, epochs=1), "train.eval_test=false",
                         "--no-progress")
    assert rc == 2 and "disk full" in one_line_error(err)
    assert not list(out.rglob(".tmp-*"))


def test_runs_skips_damaged_run_directories_and_keeps_the_table(trained_run, tmp_path, capsys):
    root = tmp_path / "runs"
    for name in ("good_a", "good_b", "bad_summary", "bad_config"):
        shutil.copytree(trained_run, root / name)
    (root / "bad_summary" / SUMMARY_FILE).write_text('{"best_val_map": 0.5, ')  # cut short
    (root / "bad_config" / CONFIG_FILE).write_text("data: [unclosed\n")
    rc, out, err = run_cli(capsys, "runs", root, "--out", tmp_path / "table")
    assert rc == 0, err
    assert "bad_summary" in err and "bad_config" in err and "Traceback" not in err
    # item 14: two runs of the same experiment name are told apart by their directory
    rows = [line for line in out.splitlines() if "good_a" in line or "good_b" in line]
    assert len(rows) == 2
    header = out.splitlines()[0].split()
    assert "run" in header


# ------------------------------------------------------------------ item 12: files honour the umask
@pytest.fixture
def umask():
    def set_umask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_honour_the_umask(umask, tmp_path):
    from cvsjepa.io import atomic_save_safetensors, atomic_torch_save, atomic_write_json

    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_save_safetensors(tmp_path / "w.safetensors", {"w": torch.zeros(2)})
    atomic_torch_save(tmp_path / "s.pt", {"w": torch.zeros(2)})
    assert {p.name: _mode(p) for p in tmp_path.iterdir()} == {"a.json": 0o644, "w.safetensors": 0o644,
                                                               "s.pt": 0o644}
    umask(0o077)  # a private lab: what the user asked for, not more and not less
    atomic_write_json(tmp_path / "private.json", {"x": 1})
    assert _mode(tmp_path / "private.json") == 0o600


def test_a_converted_backbone_directory_is_readable_by_the_group(umask, meta_checkpoint, tmp_path, capsys):
    out = tmp_path / "converted"
    assert run_cli(capsys, "convert", meta_checkpoint, "--out", out)[0] == 0
    assert _mode(out) == 0o755
    assert {p.name: _mode(p) for p in out.iterdir()}["model.safetensors"] == 0o644


def test_a_lora_checkpoint_is_readable_by_the_group(umask, tmp_path):
    """PEFT's save_pretrained writes its safetensors 0600 (safetensors >= 0.8): the adapter too honours the umask."""
    from cvsjepa.checkpoint import save_classifier
    from cvsjepa.train.build import build_model

    cfg = load_config(None, ["backbone=tiny", "adapt.mode=lora", "head.num_heads=4", "head.mlp_hidden=32"])
    save_classifier(tmp_path / "best", build_model(cfg), cfg)
    modes = {str(p.relative_to(tmp_path)): _mode(p) for p in (tmp_path / "best").rglob("*")}
    assert set(modes.values()) == {0o644, 0o755} and modes["best/adapter"] == 0o755, modes
