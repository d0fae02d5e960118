"""`cvsjepa export`: the safetensors bundle loads and predicts with no other path (the original backbone
folder deleted), ONNX matches torch through onnxruntime, and an export never replaces a folder it did
not write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cvsjepa.checkpoint import META_FILE
from cvsjepa.errors import CheckpointError
from cvsjepa.rundir import BEST_DIR


@pytest.fixture
def frames_dir(synth_root, tmp_path) -> Path:
    """Eight 1 fps frames of one val video, as a folder `predict` reads."""
    vid = int(float((synth_root / "val_vids.txt").read_text().split()[0]))
    out = tmp_path / "case"
    out.mkdir()
    for p in sorted((synth_root / "val").glob(f"{vid}_*.jpg"), key=lambda p: int(p.stem.split("_")[1]))[:8]:
        shutil.copy(p, out / p.name)
    return out


@pytest.fixture
def own_run(ecosystem_run, tmp_path) -> tuple[Path, Path]:
    """A copy of the ecosystem run whose checkpoint names a private copy of the backbone folder."""
    run, weights = tmp_path / "run", tmp_path / "models" / "vjepa2-tiny"
    shutil.copytree(ecosystem_run.path, run, ignore=shutil.ignore_patterns("wandb", "mlflow", "tensorboard"))
    shutil.copytree(ecosystem_run.weights, weights)
    meta_file = run / BEST_DIR / META_FILE
    meta = json.loads(meta_file.read_text())
    meta["config"]["backbone"]["path"] = str(weights)
    meta_file.write_text(json.dumps(meta))
    return run, weights


def _timeline(capsys, run: Path, frames: Path, out: Path) -> dict:
    from cvsjepa.cli import main

    rc = main(["predict", str(frames), "--run", str(run), "--out", str(out), "--no-plot", "--no-progress",
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    return json.loads((out / "timeline.json").read_text())


def test_the_bundle_predicts_identically_after_the_backbone_folder_is_deleted(own_run, frames_dir, tmp_path, capsys):
    from cvsjepa import CVSModel
    from cvsjepa.cli import main

    run, weights = own_run
    before = _timeline(capsys, run, frames_dir, tmp_path / "t_run")
    clip = torch.randn(2, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    run_probs = CVSModel.from_run(run, device="cpu").predict_clip(clip)
    bundle = tmp_path / "exports" / "bundle"
    assert main(["export", str(run), "--format", "safetensors-bundle", "--out", str(bundle)]) == 0
    shutil.rmtree(weights)  # the original backbone folder is gone: only the bundle remains
    with pytest.raises(CheckpointError, match="does not exist"):
        CVSModel.from_run(run, device="cpu")
    moved = tmp_path / "elsewhere" / "bundle"
    moved.parent.mkdir()
    bundle.rename(moved)  # and the bundle is found wherever it is
    m = CVSModel.from_run(moved, device="cpu")
    assert torch.equal(m.predict_clip(clip), run_probs)
    assert m.threshold_source.endswith("thresholds.json") and m.calibration is not None
    after = _timeline(capsys, moved, frames_dir, tmp_path / "t_bundle")
    probs = [[r[k] for k in r if k.startswith(("p_", "raw_"))] for r in before["timeline"]]
    assert probs and [[r[k] for k in r if k.startswith(("p_", "raw_"))] for r in after["timeline"]] == probs
    assert [r["state"] for r in after["timeline"]] == [r["state"] for r in before["timeline"]]
    assert after["cvs_reached_at_s"] == before["cvs_reached_at_s"]
    note = json.loads((moved / "cvsjepa_export.json").read_text())
    assert note["backbone_shipped"] and note["max_abs_logit_diff"] == 0.0
    card = (moved / "README.md").read_text()
    assert "not a medical device" in card and "Exported bundle" in card and "fingerprint" in card


def test_bundle_hashes_cover_the_backbone(own_run, tmp_path):
    from cvsjepa.export import export_run

    run, _ = own_run
    out = export_run(run, "safetensors-bundle", tmp_path / "b").out
    weights = out / "backbone" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit in the bundled backbone
    weights.write_bytes(bytes(data))
    from cvsjepa.checkpoint import load_classifier

    with pytest.raises(CheckpointError, match="damaged"):
        load_classifier(out)


def test_an_export_never_replaces_a_folder_it_did_not_write(own_run, tmp_path, capsys):
    from cvsjepa.cli import main

    run, _ = own_run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    rc = main(["export", str(run), "--format", "safetensors-bundle", "--out", str(mine), "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and "was not written by `cvsjepa export`" in err and (mine / "notes.txt").is_file()
    out = tmp_path / "bundle"
    assert main(["export", str(run), "--format", "safetensors-bundle", "--out", str(out)]) == 0
    rc = main(["export", str(run), "--format", "safetensors-bundle", "--out", str(out)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "safetensors-bundle", "--out", str(out), "--overwrite"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]


@pytest.mark.slow
def test_onnx_matches_torch_on_the_tiny_backbone(own_run, tmp_path):
    """Measured on the tiny backbone: max |onnxruntime - torch| about 3e-8 (logits, full model) and
    5e-8 (head), far below the 1e-4 the export enforces."""
    import onnxruntime as ort

    from cvsjepa.checkpoint import load_classifier
    from cvsjepa.export import export_run

    run, _ = own_run
    note = export_run(run, "onnx", tmp_path / "onnx").note
    assert note["exporter"].startswith("torch.onnx.export(dynamo=True)") and note["opset"] == 18
    model, cfg, _ = load_classifier(run / BEST_DIR)
    video = torch.randn(3, cfg.data.frames, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model({"video": video})
        tokens = model.backbone(video)
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, probs = sess.run(None, {"video": video.numpy()})
    head = ort.InferenceSession(str(tmp_path / "onnx" / "head.onnx"), providers=["CPUExecutionProvider"])
    (head_logits,) = head.run(None, {"tokens": tokens.numpy()})
    diffs = [float(np.abs(logits - ref.numpy()).max()), float(np.abs(probs - torch.sigmoid(ref).numpy()).max()),
             float(np.abs(head_logits - ref.numpy()).max())]
    print("onnxruntime vs torch max abs diff (logits, probabilities, head logits):", diffs)
    assert max(diffs) <= 1e-4
    assert max(note["model"]["max_abs_diff"].values()) <= 1e-4 and max(note["head"]["max_abs_diff"].values()) <= 1e-4
    assert {"README.md", "thresholds.json", "calibration.json", "preprocessing.json"} <= {
        p.name for p in (tmp_path / "onnx").iterdir()}


@pytest.mark.slow
def test_a_lora_bundle_merges_the_adapter(synth_root, tmp_path, capsys):
    from cvsjepa import CVSModel
    from cvsjepa.cli import main
    from tiny_runs import tiny_train_args

    run = tmp_path / "lora"
    assert main(["train", *tiny_train_args(synth_root, run, epochs=1), "adapt.mode=lora", "adapt.lr=1e-2",
                 "train.eval_test=false", "--no-progress"]) == 0
    out = tmp_path / "bundle"
    assert main(["export", str(run), "--format", "safetensors-bundle", "--out", str(out)]) == 0
    note = json.loads((out / "cvsjepa_export.json").read_text())
    assert note["lora_merged"] and note["backbone_shipped"] and note["max_abs_logit_diff"] <= 1e-5
    assert not (out / "adapter").exists()
    clip = torch.randn(2, 4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    a = CVSModel.from_run(run, device="cpu").predict_clip(clip, raw=True)
    b = CVSModel.from_run(out, device="cpu").predict_clip(clip, raw=True)
    assert float((a - b).abs().max()) <= 1e-5
