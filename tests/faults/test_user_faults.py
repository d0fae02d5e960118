"""Fault injection: each user-facing fault gives one clear line naming the file, a non-zero exit,
and loses nothing finished. check-data finds the same faults before a run starts."""

from __future__ import annotations

import errno
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvsjepa.cli import main

FAST = ["backbone=tiny", "data.frames=4", "head.num_heads=4", "head.mlp_hidden=32", "train.batch_size=8",
        "train.epochs=2", "train.patience=0", "train.min_steps=0", "--no-progress"]


@pytest.fixture
def data(synth_root, tmp_path) -> Path:
    """A private copy of the synthetic dataset to damage (links kept as links)."""
    root = tmp_path / "data"
    shutil.copytree(synth_root, root, symlinks=True)
    return root


def _first_keyframe_jpeg(root: Path, split: str = "train") -> Path:
    images = json.loads((root / split / "annotation_ds_coco.json").read_text())["images"]
    return root / split / images[0]["file_name"]


def _run(capsys, *args) -> tuple[int, str]:
    rc = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return rc, (err[-1] if err else "")


def _train(capsys, root, out, *extra):
    return _run(capsys, "train", *FAST, f"data.root={root}", f"out={out}", *extra)


def _one_line(msg: str) -> bool:
    return bool(msg) and "Traceback" not in msg


def test_corrupt_jpeg(data, tmp_path, capsys):
    jpg = _first_keyframe_jpeg(data)
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 3])  # truncated mid-scan
    rc, msg = _train(capsys, data, tmp_path / "run")
    assert rc == 2 and jpg.name in msg and _one_line(msg)
    rc, _ = _run(capsys, "check-data", str(data), "--frames", "4", "--no-progress")
    assert rc == 1
    # asked to skip: the run finishes, the bad clips are dropped
    rc, _ = _train(capsys, data, tmp_path / "run_skip", "data.on_bad_sample=skip")
    assert rc == 0 and (tmp_path / "run_skip" / "summary.json").is_file()


def test_truncated_json(data, tmp_path, capsys):
    ann = data / "val" / "annotation_ds_coco.json"
    ann.write_text(ann.read_text()[:500])
    rc, msg = _train(capsys, data, tmp_path / "run")
    assert rc == 2 and "annotation_ds_coco.json" in msg and _one_line(msg)


def test_missing_frame(data, tmp_path, capsys):
    jpg = _first_keyframe_jpeg(data, "test")
    jpg.unlink()
    rc, msg = _train(capsys, data, tmp_path / "run")
    assert rc == 2 and jpg.name in msg and _one_line(msg)
    assert _run(capsys, "check-data", str(data), "--no-decode", "--no-progress")[0] == 1


def test_label_with_bad_value(data, tmp_path, capsys):
    ann = data / "train" / "annotation_ds_coco.json"
    coco = json.loads(ann.read_text())
    coco["images"][3]["ds"] = [0.5, 0.0, 0.0]  # not a mean of 3 binary raters
    ann.write_text(json.dumps(coco))
    rc, msg = _train(capsys, data, tmp_path / "run")
    assert rc == 2 and "annotation_ds_coco.json" in msg and "0.5" in msg


def test_video_in_two_splits(data, tmp_path, capsys):
    val_ann = data / "val" / "annotation_ds_coco.json"
    coco = json.loads(val_ann.read_text())
    train_vid = json.loads((data / "train" / "annotation_ds_coco.json").read_text())["images"][0]["video_id"]
    for img in coco["images"]:
        if img["video_id"] == coco["images"][0]["video_id"]:
            img["video_id"] = train_vid
            img["file_name"] = f"{train_vid}_{img['file_name'].split('_')[1]}"
    val_ann.write_text(json.dumps(coco))
    rc, msg = _train(capsys, data, tmp_path / "run")
    assert rc == 2 and _one_line(msg) and str(train_vid) in msg


def test_mask_of_wrong_size(data, capsys):
    mask = sorted((data / "semseg").glob("*.png"))[0]
    Image.fromarray(np.zeros((240, 427, 3), np.uint8)).save(mask)
    rc = main(["check-data", str(data), "--no-decode", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1 and mask.name in out and "expected 854x480" in out


def test_symlinked_folder_that_arrived_as_a_file(data, capsys):
    shutil.rmtree(data / "val_seg")
    (data / "val_seg").write_text("../val")  # what an archive extracted without links leaves
    rc = main(["check-data", str(data), "--no-decode", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1 and "val_seg" in out and "symbolic link" in out


def test_unknown_config_key_and_missing_root(tmp_path, capsys):
    rc, msg = _run(capsys, "train", "backbone=tiny", "train.learning_rate=1")
    assert rc == 2 and "train.learning_rate" in msg
    rc, msg = _run(capsys, "train", *FAST, f"data.root={tmp_path / 'nowhere'}", f"out={tmp_path / 'r'}")
    assert rc == 2 and "nowhere" in msg and not (tmp_path / "r").exists()
    assert _run(capsys, "check-data", str(tmp_path / "nowhere"))[0] == 2


@pytest.fixture
def finished_run(run_copy):
    """A copy of the session's finished run (faults/conftest.py): these tests damage it."""
    return run_copy


def test_checkpoint_with_wrong_shape_on_resume(finished_run, capsys):
    from resume_state import edit_resume_state

    (finished_run / "summary.json").unlink()  # pretend it was interrupted
    keys = []

    def cut(state):
        keys.append(sorted(state["weights"])[0])
        state["weights"][keys[0]] = state["weights"][keys[0]][..., :1].contiguous()

    edit_resume_state(finished_run, cut)
    key = keys[0]
    rc, msg = _run(capsys, "train", "--resume", str(finished_run))
    assert rc == 2 and key in msg and "shape" in msg


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_posing_as_a_checkpoint(finished_run, capsys):
    from resume_state import rehash, resume_path

    (finished_run / "summary.json").unlink()
    state = resume_path(finished_run)
    state.write_bytes(pickle.dumps({"epoch": 1, "payload": _Evil()}))
    rehash(finished_run)  # even with a matching hash (an attacker can write both), nothing is unpickled
    rc, msg = _run(capsys, "train", "--resume", str(finished_run))
    assert rc == 2 and "weights_only" in msg and state.name in msg
    best = finished_run / "checkpoints" / "best" / "model.safetensors"
    best.write_bytes(pickle.dumps({"head.w": _Evil()}))
    from cvsjepa.checkpoint import load_classifier
    from cvsjepa.errors import CheckpointError

    with pytest.raises(CheckpointError, match="safetensors"):
        load_classifier(best.parent)


def test_disk_full_keeps_the_last_good_checkpoint(synth_root, tmp_path, capsys, monkeypatch):
    import cvsjepa.io as cio
    from cvsjepa.checkpoint import load_classifier

    calls = {"n": 0}
    real_safetensors, real_torch = cio.save_file, cio.torch.save

    def full_disk(path):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1's best and resume state succeed; everything after hits a full disk
            with open(path, "wb") as f:
                f.write(b"\0" * 100)  # a partial write, as a real full disk leaves
            raise OSError(errno.ENOSPC, "No space left on device")

    def flaky_safetensors(tensors, path, metadata=None):
        full_disk(path)
        return real_safetensors(tensors, path, metadata=metadata)

    def flaky_torch(obj, path, *args, **kwargs):
        full_disk(path)
        return real_torch(obj, path, *args, **kwargs)

    monkeypatch.setattr(cio, "save_file", flaky_safetensors)
    monkeypatch.setattr(cio.torch, "save", flaky_torch)
    out = tmp_path / "run"
    rc, msg = _train(capsys, synth_root, out, "train.epochs=3")
    assert rc == 2 and "disk full" in msg
    best = out / "checkpoints" / "best"
    model, _, meta = load_classifier(best)  # the epoch-1 checkpoint is intact
    assert meta["epoch"] == 1
    assert not list(out.rglob(".tmp-*"))  # no half-written file left with a name anything reads
