"""Checkpoints that were damaged, moved or are not what they claim: never a clinical answer from bad
weights, never the network, never an unpickled file, and a way to say where a moved backbone went.

Issue 15, items 3 (content hash, non-finite probabilities), 9 (LoRA directories), 10 (offline),
11 (safetensors only), 13 (backbone-location override) and 14 (preset vs path)."""

from __future__ import annotations

import json
import pickle
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cvsjepa.checkpoint import ADAPTER_DIR, META_FILE, WEIGHTS_FILE, load_classifier
from cvsjepa.errors import CheckpointError
from cvsjepa.io import sha256_file
from cvsjepa.rundir import BEST_DIR
from faults.cli_helpers import one_line_error, run_cli

ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's file names inside checkpoints/best/adapter
ADAPTER_CONFIG = "adapter_config.json"


@pytest.fixture(scope="module")
def frames_dir(synth_root, tmp_path_factory) -> Path:
    """Eight 1 fps frames of one val video, as a folder `predict` reads."""
    vid = int(float((synth_root / "val_vids.txt").read_text().split()[0]))
    frames = sorted((synth_root / "val").glob(f"{vid}_*.jpg"), key=lambda p: int(p.stem.split("_")[1]))[:8]
    out = tmp_path_factory.mktemp("frames") / "case"
    out.mkdir()
    for p in frames:
        shutil.copy(p, out / p.name)
    return out


def _predict(capsys, run: Path, frames: Path, tmp_path: Path, *extra):
    return run_cli(capsys, "predict", frames, "--run", run, "--out", tmp_path / "timeline", "--no-progress",
                   "--no-plot", "--device", "cpu", *extra)


def _rehash(ckpt: Path) -> None:
    """Record the files' current sha256 in config.json, as if cvsjepa had written them (an attacker, or
    a run that diverged, can produce consistent files): the probabilities are then the last line of defence."""
    meta = json.loads((ckpt / META_FILE).read_text())
    for rel in meta.get("sha256", {}):
        meta["sha256"][rel] = sha256_file(ckpt / rel)
    (ckpt / META_FILE).write_text(json.dumps(meta))


# ------------------------------------------------------------------ item 3: corrupted weights
def test_flipped_bits_in_the_best_weights_are_refused(run_copy, frames_dir, tmp_path, capsys):
    weights = run_copy / BEST_DIR / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x7F  # inside the last tensor's bytes (the header stays readable)
    weights.write_bytes(bytes(data))
    rc, out, err = _predict(capsys, run_copy, frames_dir, tmp_path)
    assert rc == 2 and "never reached" not in out
    line = one_line_error(err)
    assert str(weights) in line and "sha256" in line
    rc, _, err = run_cli(capsys, "evaluate", run_copy, "--bootstrap", "0", "--no-progress", "--device", "cpu")
    assert rc == 2 and str(weights) in one_line_error(err)


def test_non_finite_probabilities_are_an_error_naming_the_checkpoint(run_copy, frames_dir, tmp_path, capsys):
    ckpt = run_copy / BEST_DIR
    tensors = load_file(ckpt / WEIGHTS_FILE)
    name = sorted(k for k in tensors if k.startswith("head."))[-1]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(ckpt / WEIGHTS_FILE))
    _rehash(ckpt)
    rc, out, err = _predict(capsys, run_copy, frames_dir, tmp_path)
    assert rc == 2 and "never reached" not in out
    line = one_line_error(err)
    assert str(ckpt) in line and "non-finite" in line
    rc, _, err = run_cli(capsys, "evaluate", run_copy, "--bootstrap", "0", "--no-progress", "--device", "cpu")
    assert rc == 2 and "non-finite" in one_line_error(err)
    from cvsjepa import CVSModel

    model = CVSModel.from_run(run_copy, device="cpu")
    with pytest.raises(CheckpointError, match="non-finite"):
        model.predict_clip(torch.zeros(model.frames, 3, model.crop, model.crop))


def test_a_checkpoint_written_before_content_hashes_loads_with_a_warning(run_copy, caplog):
    ckpt = run_copy / BEST_DIR
    meta = json.loads((ckpt / META_FILE).read_text())
    assert meta["sha256"][WEIGHTS_FILE] == sha256_file(ckpt / WEIGHTS_FILE)
    del meta["sha256"]
    (ckpt / META_FILE).write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="cvsjepa"):
        load_classifier(ckpt)
    assert "no content hash" in caplog.text and str(ckpt) in caplog.text


# ------------------------------------------------------------------ items 9, 10, 11: LoRA directories
@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory) -> Path:
    """A LoRA checkpoint as `train` writes it (tiny backbone, untrained adapter)."""
    from cvsjepa.checkpoint import save_classifier
    from cvsjepa.config import load_config
    from cvsjepa.train.build import build_model

    cfg = load_config(None, ["backbone=tiny", "adapt.mode=lora", "head.num_heads=4", "head.mlp_hidden=32",
                             "data.frames=4"])
    ckpt = tmp_path_factory.mktemp("lora") / "best"
    save_classifier(ckpt, build_model(cfg), cfg, extra={"epoch": 1})
    return ckpt


@pytest.fixture
def lora_copy(lora_checkpoint, tmp_path) -> Path:
    ckpt = tmp_path / "best"
    shutil.copytree(lora_checkpoint, ckpt)
    return ckpt


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Every attempt to resolve a host name or open a connection is recorded and refused."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_a_lora_checkpoint_loads_offline(lora_copy, no_network):
    model, cfg, meta = load_classifier(lora_copy)
    assert meta["adapter"] == ADAPTER_DIR and cfg.adapt.mode == "lora"
    assert any("lora_" in n for n, _ in model.backbone.named_parameters())
    assert no_network == []


def test_missing_adapter_weights_never_reach_the_network(lora_copy, no_network, monkeypatch, frames_dir,
                                                         tmp_path, capsys):
    (lora_copy / ADAPTER_DIR / ADAPTER_WEIGHTS).unlink()
    # A relative path such as "best/adapter" also reads as a Hub repository id: it must stay a path.
    monkeypatch.chdir(lora_copy.parent)
    with pytest.raises(CheckpointError, match=ADAPTER_WEIGHTS):
        load_classifier(Path(lora_copy.name))
    rc, _, err = _predict(capsys, Path(lora_copy.name), frames_dir, tmp_path)
    assert rc == 2 and ADAPTER_WEIGHTS in one_line_error(err)
    assert no_network == []


class _Evil:
    def __reduce__(self):
        return (Path("/tmp/cvsjepa-fault-suite-unpickled").touch, ())


def test_a_pickled_adapter_is_refused_unread(lora_copy, no_network, frames_dir, tmp_path, capsys):
    marker = Path("/tmp/cvsjepa-fault-suite-unpickled")
    marker.unlink(missing_ok=True)
    adapter = lora_copy / ADAPTER_DIR
    (adapter / ADAPTER_WEIGHTS).unlink()
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps({"w": _Evil()}))
    rc, _, err = _predict(capsys, lora_copy, frames_dir, tmp_path)
    line = one_line_error(err)
    assert rc == 2 and "adapter_model.bin" in line and "safetensors" in line
    assert "weights_only=False" not in err and not marker.exists() and no_network == []


def test_a_lora_adapter_with_bad_target_modules_is_one_line(lora_copy, frames_dir, tmp_path, capsys):
    cfg_file = lora_copy / ADAPTER_DIR / ADAPTER_CONFIG
    data = json.loads(cfg_file.read_text())
    data["target_modules"] = ["no_such_module"]
    cfg_file.write_text(json.dumps(data))
    _rehash(lora_copy)  # a consistent but wrong adapter (e.g. saved for another model)
    rc, _, err = _predict(capsys, lora_copy, frames_dir, tmp_path)
    line = one_line_error(err)
    assert rc == 2 and "target_modules" in line and ADAPTER_CONFIG in line


# ------------------------------------------------------------------ item 11: HF index naming a pickle
def test_a_safetensors_index_naming_a_bin_shard_is_refused(tmp_path):
    from cvsjepa.backbones import build_backbone
    from cvsjepa.config import BackboneConfig

    tiny = build_backbone(BackboneConfig(preset="tiny"))
    d = tmp_path / "hf"
    tiny.model.save_pretrained(d)
    (d / "model.safetensors").unlink()
    marker = Path("/tmp/cvsjepa-fault-suite-unpickled")
    marker.unlink(missing_ok=True)
    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Evil()}))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: "pytorch_model.bin" for k in tiny.model.state_dict()}}))
    with pytest.raises(CheckpointError, match="pytorch_model.bin") as e:
        build_backbone(BackboneConfig(preset="tiny", path=str(d)))
    assert "safetensors" in str(e.value) and "weights_only=False" not in str(e.value)
    assert not marker.exists()


# ------------------------------------------------------------------ item 13: the backbone moved
@pytest.fixture
def run_on_a_weights_dir(run_copy, tmp_path) -> tuple[Path, Path]:
    """The run's checkpoint as if trained with backbone.path=DIR (DIR holds the same tiny weights)."""
    from cvsjepa.backbones import build_backbone
    from cvsjepa.config import BackboneConfig

    weights = tmp_path / "models" / "vjepa2-tiny"
    build_backbone(BackboneConfig(preset="tiny")).model.save_pretrained(weights)
    meta_file = run_copy / BEST_DIR / META_FILE
    meta = json.loads(meta_file.read_text())
    meta["config"]["backbone"]["path"] = str(weights)
    meta_file.write_text(json.dumps(meta))
    return run_copy, weights


def test_a_moved_backbone_is_found_with_backbone_path(run_on_a_weights_dir, frames_dir, tmp_path, capsys):
    from cvsjepa import CVSModel

    run, weights = run_on_a_weights_dir
    moved = tmp_path / "elsewhere" / "weights"
    moved.parent.mkdir()
    weights.rename(moved)
    rc, _, err = _predict(capsys, run, frames_dir, tmp_path)
    assert rc == 2 and "--backbone-path" in one_line_error(err)
    rc, out, err = _predict(capsys, run, frames_dir, tmp_path, "--backbone-path", moved)
    assert rc == 0, err
    rc, _, err = run_cli(capsys, "evaluate", run, "--split", "val", "--bootstrap", "0", "--no-progress",
                         "--device", "cpu", "--backbone-path", moved)
    assert rc == 0, err
    rc, _, err = run_cli(capsys, "diagnose", run, "categories", "--no-progress", "--device", "cpu",
                         "--backbone-path", moved)
    assert rc == 0, err
    m = CVSModel.from_run(run, device="cpu", backbone_path=moved)
    assert m.describe()["backbone_path"] == str(moved)


def test_backbone_path_is_verified_by_the_weights_not_the_path(run_on_a_weights_dir, tmp_path):
    from cvsjepa import CVSModel
    from cvsjepa.reopen import Reopen, load_run

    run, weights = run_on_a_weights_dir
    other = tmp_path / "other-tiny"
    shutil.copytree(weights, other)
    tensors = load_file(other / "model.safetensors")
    key = sorted(k for k in tensors if k.startswith("encoder."))[0]
    tensors[key] = tensors[key] + 0.01  # same shape and name, other weights
    save_file(tensors, str(other / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="fingerprint"):
        CVSModel.from_run(run, device="cpu", backbone_path=other)
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_run(run, Reopen(device="cpu", backbone_path=str(other)))


# ------------------------------------------------------------------ item 14: preset vs path
def test_an_explicit_preset_contradicting_the_weights_is_refused(tmp_path, capsys):
    from cvsjepa.backbones import build_backbone
    from cvsjepa.config import BackboneConfig

    weights = tmp_path / "tiny-weights"
    build_backbone(BackboneConfig(preset="tiny")).model.save_pretrained(weights)
    rc, _, err = run_cli(capsys, "train", "--dry-run", "backbone.preset=vith", f"backbone.path={weights}")
    line = one_line_error(err)
    assert rc == 2 and "backbone.preset=vith" in line and "tiny" in line
    # The default preset (vitl) with a path is the README's way: the weights' shape is used and recorded.
    rc, out, err = run_cli(capsys, "train", "--dry-run", f"backbone.path={weights}")
    assert rc == 0, err
    assert json.loads(out)["backbone_preset"] == "tiny"


def test_the_run_records_the_preset_it_loaded(synth_root, tmp_path, capsys):
    from cvsjepa.backbones import build_backbone
    from cvsjepa.config import BackboneConfig
    from cvsjepa.rundir import RunDir
    from tiny_runs import tiny_train_args

    weights = tmp_path / "tiny-weights"
    build_backbone(BackboneConfig(preset="tiny")).model.save_pretrained(weights)
    args = [a for a in tiny_train_args(synth_root, tmp_path / "run", epochs=1) if a != "backbone=tiny"]
    rc, _, err = run_cli(capsys, "train", *args, f"backbone.path={weights}", "train.eval_test=false",
                         "--no-progress")
    assert rc == 0, err
    run = RunDir.open(tmp_path / "run")
    assert run.read_config().backbone.preset == "tiny"
    assert run.read_summary()["backbone_preset"] == "tiny"
    meta = json.loads((run.best_dir / META_FILE).read_text())
    assert meta["config"]["backbone"]["preset"] == "tiny"
