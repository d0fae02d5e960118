"""Best-model checkpoints: ``model.safetensors`` (head + any trainable backbone weight) and
``config.json`` (the resolved run config, the backbone's description and fingerprint).

A checkpoint directory is self-contained: ``load_classifier(dir)`` rebuilds the backbone from the
recorded config (a local weights directory, or a named random preset), builds the head, and loads
the weights strictly, naming every missing or unexpected key.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .adapt import has_lora
from .backbones import build_backbone
from .config import RunConfig, from_dict, to_dict
from .errors import CheckpointError
from .heads import build_head
from .io import atomic_save_safetensors, atomic_write_json, load_safetensors, read_json_object
from .model import CVSClassifier, build_seg_head

FORMAT = "cvsjepa-classifier"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"  # head + any trainable backbone weight (LoRA excluded: see ADAPTER_DIR)
META_FILE = "config.json"  # format, resolved run config, backbone description and fingerprint
ADAPTER_DIR = "adapter"  # a PEFT adapter (save_pretrained), for LoRA runs


def save_classifier(ckpt_dir: Path, model: CVSClassifier, cfg: RunConfig, extra: dict | None = None) -> None:
    """Weights (and a PEFT adapter for LoRA runs) first, then config.json that describes them."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    backbone = model.backbone
    lora = has_lora(backbone)
    fingerprint = model.base_fingerprint or (backbone.weights_fingerprint() if backbone is not None else None)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": to_dict(cfg),
        "backbone": backbone.describe() if backbone is not None else None,
        "backbone_fingerprint": fingerprint,
        "adapter": ADAPTER_DIR if lora else None,
        **(extra or {}),
    }
    if lora:
        _save_adapter(backbone.model, ckpt_dir / ADAPTER_DIR)
    atomic_save_safetensors(ckpt_dir / WEIGHTS_FILE, model.trainable_state_dict(include_lora=not lora),
                            metadata={"format": FORMAT})
    atomic_write_json(ckpt_dir / META_FILE, meta)


def _save_adapter(peft_model, target: Path) -> None:
    """``save_pretrained`` into a temporary folder, then swap it in, so a crash keeps the old adapter."""
    tmp = target.with_name(f".tmp-{target.name}")
    old = target.with_name(f".old-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp))
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def restore_weights(model: CVSClassifier, ckpt_dir: Path) -> None:
    """Load a checkpoint's weights into an already-built model of the same shape (and adapter)."""
    ckpt_dir = Path(ckpt_dir)
    if has_lora(model.backbone):
        from peft import set_peft_model_state_dict

        adapter = load_safetensors(ckpt_dir / ADAPTER_DIR / "adapter_model.safetensors")
        result = set_peft_model_state_dict(model.backbone.model, adapter)
        if getattr(result, "unexpected_keys", None):
            raise CheckpointError(f"{ckpt_dir / 'adapter'} has keys the model lacks: {_short(result.unexpected_keys)}")
    tensors = load_safetensors(ckpt_dir / WEIGHTS_FILE)
    load_weights_strict(model, tensors, ckpt_dir / WEIGHTS_FILE, include_lora=not has_lora(model.backbone))


def read_checkpoint_meta(ckpt_dir: Path) -> dict:
    path = Path(ckpt_dir) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} is not a cvsjepa checkpoint: {path.name} is missing")
    meta = read_json_object(path, CheckpointError, "the checkpoint is damaged")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} was not written by cvsjepa (format={meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {meta['format_version']}, newer than this "
                              f"cvsjepa reads ({FORMAT_VERSION}); upgrade cvsjepa")
    return meta


def load_weights_strict(model: CVSClassifier, tensors: dict[str, torch.Tensor], source: Path,
                        include_lora: bool = True) -> None:
    """Load a partial state dict (head + trainable parts), refusing any mismatch by name."""
    own = model.state_dict()
    unexpected = sorted(k for k in tensors if k not in own)
    wrong_shape = sorted(f"{k} {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
                         for k in tensors if k in own and own[k].shape != tensors[k].shape)
    missing = sorted(k for k in model.trainable_state_dict(include_lora=include_lora) if k not in tensors)
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
    cfg = from_dict(meta["config"], where=str(ckpt_dir / META_FILE))
    backbone = build_backbone(cfg.backbone, device=device).freeze()
    fp = meta.get("backbone_fingerprint")
    if fp and backbone.weights_fingerprint() != fp:
        raise CheckpointError(f"the backbone weights at {cfg.backbone.path or cfg.backbone.preset} differ from the "
                              f"ones {ckpt_dir} was trained on (fingerprint {backbone.weights_fingerprint()} "
                              f"!= {fp}); point backbone.path at the original weights")
    if meta.get("adapter"):
        from peft import PeftModel

        adapter_dir = ckpt_dir / meta["adapter"]
        if not (adapter_dir / "adapter_config.json").is_file():
            raise CheckpointError(f"{ckpt_dir} is a LoRA checkpoint but {adapter_dir}/adapter_config.json is missing")
        backbone.model = PeftModel.from_pretrained(backbone.model, str(adapter_dir), is_trainable=False)
        backbone.freeze()
    head = build_head(cfg.head, backbone.embed_dim)
    model = CVSClassifier(backbone, head, base_fingerprint=fp, seg_head=build_seg_head(cfg, backbone)).to(device)
    load_weights_strict(model, load_safetensors(ckpt_dir / WEIGHTS_FILE), ckpt_dir / WEIGHTS_FILE,
                        include_lora=False)
    model.eval()
    return model, cfg, meta
