"""Best-model checkpoints: ``model.safetensors`` (head + any trainable backbone weight) and
``config.json`` (the resolved run config, the backbone's description and fingerprint).

A checkpoint directory is self-contained: ``load_classifier(dir)`` rebuilds the backbone from the
recorded config (a local weights directory, or a named random preset), builds the head, and loads
the weights strictly, naming every missing or unexpected key.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .backbones import build_backbone
from .config import RunConfig, from_dict, to_dict
from .errors import CheckpointError
from .heads import build_head
from .io import atomic_save_safetensors, atomic_write_json, load_safetensors
from .model import CVSClassifier

FORMAT = "cvsjepa-classifier"
FORMAT_VERSION = 1


def save_classifier(ckpt_dir: Path, model: CVSClassifier, cfg: RunConfig, extra: dict | None = None) -> None:
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    backbone = model.backbone
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": to_dict(cfg),
        "backbone": backbone.describe() if backbone is not None else None,
        "backbone_fingerprint": backbone.weights_fingerprint() if backbone is not None else None,
        **(extra or {}),
    }
    # weights first, then the json that points at them: a crash in between leaves the old pair valid
    atomic_save_safetensors(ckpt_dir / "model.safetensors", model.trainable_state_dict(),
                            metadata={"format": FORMAT})
    atomic_write_json(ckpt_dir / "config.json", meta)


def read_checkpoint_meta(ckpt_dir: Path) -> dict:
    path = Path(ckpt_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} is not a cvsjepa checkpoint: {path.name} is missing")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is damaged") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} was not written by cvsjepa (format={meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {meta['format_version']}, newer than this "
                              f"cvsjepa reads ({FORMAT_VERSION}); upgrade cvsjepa")
    return meta


def load_weights_strict(model: CVSClassifier, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load a partial state dict (head + trainable parts), refusing any mismatch by name."""
    own = model.state_dict()
    unexpected = sorted(k for k in tensors if k not in own)
    wrong_shape = sorted(f"{k} {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
                         for k in tensors if k in own and own[k].shape != tensors[k].shape)
    missing = sorted(k for k in model.trainable_state_dict() if k not in tensors)
    problems = []
    if missing:
        problems.append(f"missing {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected {_short(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatch {_short(wrong_shape)}")
    if problems:
        raise CheckpointError(f"{source} does not match the model ({'; '.join(problems)}); was it "
                              f"trained with another backbone or head configuration?")
    model.load_state_dict(tensors, strict=False)


def _short(items: list[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_classifier(ckpt_dir: Path, device: torch.device | str = "cpu") -> tuple[CVSClassifier, RunConfig, dict]:
    ckpt_dir = Path(ckpt_dir)
    meta = read_checkpoint_meta(ckpt_dir)
    cfg = from_dict(meta["config"], where=str(ckpt_dir / "config.json"))
    backbone = build_backbone(cfg.backbone, device=device).freeze()
    fp = meta.get("backbone_fingerprint")
    if fp and backbone.weights_fingerprint() != fp:
        raise CheckpointError(f"the backbone weights at {cfg.backbone.path or cfg.backbone.preset} differ from the "
                              f"ones {ckpt_dir} was trained on (fingerprint {backbone.weights_fingerprint()} "
                              f"!= {fp}); point backbone.path at the original weights")
    head = build_head(cfg.head, backbone.embed_dim)
    model = CVSClassifier(backbone, head).to(device)
    load_weights_strict(model, load_safetensors(ckpt_dir / "model.safetensors"), ckpt_dir / "model.safetensors")
    model.eval()
    return model, cfg, meta
