"""Best-model checkpoints: ``model.safetensors`` (head + any trainable backbone weight) and
``config.json`` (the resolved run config, the backbone's description and fingerprint).

A checkpoint directory is self-contained: ``load_classifier(dir)`` rebuilds the backbone from the
recorded config (a local weights directory, or a named random preset), builds the head, and loads
the weights strictly, naming every missing or unexpected key.

Integrity: ``config.json`` (written last) records the sha256 of every file that determines the
outputs (``sha256``: weights, and for LoRA the adapter's config and weights); a file whose hash
differs is refused on load, so flipped bits never become a clinical answer. A checkpoint written
before hashes were recorded loads with a warning. The backbone is recognised by its weights
fingerprint, not its path: ``backbone_path`` says where it is now when it moved.

Nothing here can reach the network or unpickle: the LoRA adapter is rebuilt from its local
``adapter_config.json`` and ``adapter_model.safetensors`` (never ``PeftModel.from_pretrained``, which
takes a missing file for a Hub repository id), and a ``.bin`` adapter is refused unread.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from .adapt import has_lora
from .backbones import build_backbone
from .config import RunConfig, from_dict, to_dict
from .errors import CheckpointError
from .heads import build_head
from .heads.pooler import POOLER_KEY, build_temporal_head, pooler_from_description, weights_digest
from .io import (apply_umask, atomic_save_safetensors, atomic_write_json, load_safetensors, read_json_object,
                 sha256_file)
from .model import CVSClassifier, build_seg_head, token_layout

log = logging.getLogger("cvsjepa")

FORMAT = "cvsjepa-classifier"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"  # head + any trainable backbone weight (LoRA excluded: see ADAPTER_DIR)
META_FILE = "config.json"  # format, resolved run config, backbone description and fingerprint, content hashes
ADAPTER_DIR = "adapter"  # a PEFT adapter (save_pretrained), for LoRA runs
# PEFT's own names inside ADAPTER_DIR (peft.utils.CONFIG_NAME / SAFETENSORS_WEIGHTS_NAME; a test checks
# them), spelled here so that reading a checkpoint's layout does not import peft.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CARD_FILE = "README.md"  # the model card (card.py): not a content file, so refreshing it never breaks a hash
BUNDLED_BACKBONE = "backbone_dir"  # config.json: the backbone weights folder inside the checkpoint (an export bundle)
CONTENT_KEY = "sha256"  # config.json: {file relative to the checkpoint: sha256 hex}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


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
        # a temporal run: how to rebuild its per-second pooler (its weights are in WEIGHTS_FILE, pooler.*)
        POOLER_KEY: model.pooler.describe() if getattr(model, "pooler", None) is not None else None,
        **(extra or {}),
    }
    if lora:
        _save_adapter(backbone.model, ckpt_dir / ADAPTER_DIR)
    atomic_save_safetensors(ckpt_dir / WEIGHTS_FILE, model.trainable_state_dict(include_lora=not lora),
                            metadata={"format": FORMAT})
    meta[CONTENT_KEY] = content_hashes(ckpt_dir, lora)
    atomic_write_json(ckpt_dir / META_FILE, meta)


def content_files(lora: bool) -> list[str]:
    """The files (relative to a checkpoint) whose bytes determine its outputs."""
    return [WEIGHTS_FILE] + ([f"{ADAPTER_DIR}/{ADAPTER_CONFIG}", f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}"] if lora else [])


def content_hashes(ckpt_dir: Path, lora: bool) -> dict[str, str]:
    return {rel: sha256_file(Path(ckpt_dir) / rel) for rel in content_files(lora)}


def verify_content(ckpt_dir: Path, meta: dict) -> None:
    """Every file config.json recorded has the bytes it had when saved; CheckpointError naming the
    first that differs or is missing. Old checkpoints (no hashes) load with a warning."""
    ckpt_dir = Path(ckpt_dir)
    recorded = meta.get(CONTENT_KEY)
    if recorded is None:
        log.warning("%s has no content hash (written by an older cvsjepa): its weights cannot be checked for "
                    "damage; re-save it with this version to protect it", ckpt_dir)
        return
    for rel, digest in dict(recorded).items():
        path = ckpt_dir / rel
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; the checkpoint {ckpt_dir} is incomplete (restore it from a "
                                  f"backup or train again)")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path} is damaged: its sha256 differs from the one {META_FILE} recorded when it "
                                  f"was saved; restore the checkpoint from a backup or train again")


def _save_adapter(peft_model, target: Path) -> None:
    """``save_pretrained`` into a temporary folder, then swap it in, so a crash keeps the old adapter."""
    tmp = target.with_name(f".tmp-{target.name}")
    old = target.with_name(f".old-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp))
    apply_umask(tmp)  # safetensors writes 0600 whatever the umask
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def restore_weights(model: CVSClassifier, ckpt_dir: Path) -> None:
    """Load a checkpoint's weights into an already-built model of the same shape (and adapter)."""
    ckpt_dir = Path(ckpt_dir)
    verify_content(ckpt_dir, read_checkpoint_meta(ckpt_dir))
    if has_lora(model.backbone):
        _load_adapter_weights(model.backbone.model, ckpt_dir / ADAPTER_DIR)
    tensors = load_safetensors(ckpt_dir / WEIGHTS_FILE)
    load_weights_strict(model, tensors, ckpt_dir / WEIGHTS_FILE, include_lora=not has_lora(model.backbone))


def check_adapter_files(adapter_dir: Path) -> None:
    """A LoRA adapter directory holds PEFT's config and safetensors weights; a pickled ``.bin`` adapter
    is refused without being read."""
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"the LoRA checkpoint's {adapter_dir / ADAPTER_CONFIG} is missing; the checkpoint is "
                              f"incomplete (restore it from a backup or train again)")
    if (adapter_dir / ADAPTER_WEIGHTS).is_file():
        return
    pickles = sorted(p.name for p in adapter_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"the LoRA adapter in {adapter_dir} is a PyTorch pickle ({', '.join(pickles)}); cvsjepa "
                              f"reads safetensors only and never unpickles a file: re-save the adapter with "
                              f"save_pretrained(..., safe_serialization=True) as {ADAPTER_WEIGHTS}")
    raise CheckpointError(f"the LoRA adapter weights {adapter_dir / ADAPTER_WEIGHTS} are missing; the checkpoint is "
                          f"incomplete (restore it from a backup or train again)")


def load_lora_adapter(backbone, adapter_dir: Path) -> None:
    """Wrap ``backbone.model`` with the LoRA adapter saved in ``adapter_dir`` (local files only)."""
    from peft import LoraConfig, get_peft_model

    adapter_dir = Path(adapter_dir)
    check_adapter_files(adapter_dir)
    cfg_file = adapter_dir / ADAPTER_CONFIG
    data = read_json_object(cfg_file, CheckpointError, "the LoRA checkpoint is damaged")
    if data.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{cfg_file} describes a {data.get('peft_type')} adapter; cvsjepa saves and reads LoRA")
    try:
        with warnings.catch_warnings():  # peft probes a deprecated transformers attribute
            warnings.simplefilter("ignore", FutureWarning)
            config = LoraConfig.from_peft_type(**{**data, "inference_mode": True})
            backbone.model = get_peft_model(backbone.model, config)
    except (TypeError, ValueError, KeyError) as e:  # e.g. target_modules that match no module
        raise CheckpointError(f"{cfg_file} does not fit the backbone {backbone.name} ({str(e).strip()[:300]}); "
                              f"check its target_modules, or that the adapter was saved for this backbone") from e
    _load_adapter_weights(backbone.model, adapter_dir)


def _load_adapter_weights(peft_model, adapter_dir: Path) -> None:
    """The adapter's tensors into an already-wrapped model; every LoRA weight must be filled."""
    from peft import set_peft_model_state_dict

    check_adapter_files(adapter_dir)
    source = adapter_dir / ADAPTER_WEIGHTS
    result = set_peft_model_state_dict(peft_model, load_safetensors(source))
    unexpected = sorted(getattr(result, "unexpected_keys", None) or [])
    missing = sorted(k for k in getattr(result, "missing_keys", None) or [] if "lora_" in k)
    if unexpected or missing:
        problems = ([f"unexpected {_short(unexpected)}"] if unexpected else []) + (
            [f"missing {_short(missing)}"] if missing else [])
        raise CheckpointError(f"{source} does not match the adapter {ADAPTER_CONFIG} describes "
                              f"({'; '.join(problems)})")


def check_probabilities(probs: torch.Tensor, ckpt_dir: Path | str) -> torch.Tensor:
    """``probs`` (``[..., 3]``) unchanged when every value is finite; else CheckpointError naming the
    checkpoint (a NaN never becomes "CVS not reached")."""
    bad = ~torch.isfinite(probs.reshape(-1, probs.shape[-1]))
    if bool(bad.any()):
        raise CheckpointError(f"the checkpoint {ckpt_dir} gave non-finite probabilities (NaN or inf) for "
                              f"{int(bad.any(dim=1).sum())} of {len(bad)} clip(s): its weights are damaged or "
                              f"diverged, so no result is reported; restore it from a backup or train again")
    return probs


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


def load_classifier(ckpt_dir: Path, device: torch.device | str = "cpu",
                    backbone_path: str | Path | None = None) -> tuple[CVSClassifier, RunConfig, dict]:
    """``(model in eval mode, its config, config.json)`` after checking every recorded hash.

    ``backbone_path``: where the backbone weights are now, when they moved since training (the
    returned config then names it); the weights there must have the recorded fingerprint. A bundle
    (``cvsjepa export --format safetensors-bundle``) holds its backbone in ``meta[BUNDLED_BACKBONE]``."""
    ckpt_dir = Path(ckpt_dir)
    meta = read_checkpoint_meta(ckpt_dir)
    cfg = from_dict(meta["config"], where=str(ckpt_dir / META_FILE))
    adapter_dir = ckpt_dir / meta["adapter"] if meta.get("adapter") else None
    if adapter_dir is not None:
        check_adapter_files(adapter_dir)
    verify_content(ckpt_dir, meta)
    if meta.get(BUNDLED_BACKBONE) and backbone_path is None:  # relative to the bundle, wherever it is now
        backbone_path = ckpt_dir / meta[BUNDLED_BACKBONE]
    if backbone_path is not None:
        cfg = replace(cfg, backbone=replace(cfg.backbone, path=str(backbone_path), random_weights=False))
    elif cfg.backbone.path and not Path(cfg.backbone.path).expanduser().exists():
        raise CheckpointError(f"{ckpt_dir} was trained on the backbone at {cfg.backbone.path}, which does not exist "
                              f"(any more); say where it is now with --backbone-path DIR "
                              f"(CVSModel.from_run(..., backbone_path=DIR)): it is recognised by its weights")
    backbone = build_backbone(cfg.backbone, device=device).freeze()
    fp = meta.get("backbone_fingerprint")
    if fp and backbone.weights_fingerprint() != fp:
        raise CheckpointError(f"the backbone weights at {cfg.backbone.path or cfg.backbone.preset} differ from the "
                              f"ones {ckpt_dir} was trained on (fingerprint {backbone.weights_fingerprint()} "
                              f"!= {fp}); pass the original weights with --backbone-path DIR")
    if adapter_dir is not None:
        load_lora_adapter(backbone, adapter_dir)
        backbone.freeze()
    pooler = pooler_from_description(meta[POOLER_KEY]) if meta.get(POOLER_KEY) else None
    head = (build_temporal_head(cfg.head, pooler) if pooler else
            build_head(cfg.head, backbone.embed_dim, layout=token_layout(cfg, backbone)))
    model = CVSClassifier(backbone, head, base_fingerprint=fp, seg_head=build_seg_head(cfg, backbone),
                          pooler=pooler).to(device)
    load_weights_strict(model, load_safetensors(ckpt_dir / WEIGHTS_FILE), ckpt_dir / WEIGHTS_FILE,
                        include_lora=False)
    _check_pooler(model, meta, ckpt_dir)
    model.eval()
    return model, cfg, meta


def _check_pooler(model: CVSClassifier, meta: dict, ckpt_dir: Path) -> None:
    """A temporal run's stage-1 pooler holds the weights its checkpoint recorded (the stage-1 head the
    store's per-second embeddings were pooled with), never another run's."""
    pooler = model.pooler
    if pooler is None or pooler.head is None:
        return
    recorded = meta[POOLER_KEY].get("weights_digest")
    if weights_digest(pooler.head) != recorded:
        stage1 = meta[POOLER_KEY].get("stage1", {})
        raise CheckpointError(f"{ckpt_dir}: its per-second pooler's weights are not those of the stage-1 run it "
                              f"records ({stage1.get('run', '?')}); the checkpoint is damaged: train the temporal "
                              f"head again")
