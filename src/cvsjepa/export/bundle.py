"""The safetensors bundle: one self-contained checkpoint directory.

    DIR/config.json          the checkpoint's metadata: the run config, the backbone's description and
                             fingerprint (of the weights in backbone/), content hashes of every weights file
    DIR/model.safetensors    the head (and segmentation decoder)
    DIR/backbone/            the backbone as trained, saved with save_pretrained: LoRA merged into the
                             weights (peft merge_and_unload, on a copy), unfrozen blocks included
    + thresholds.json, calibration.json, preprocessing.json, README.md, cvsjepa_export.json

``config.json`` names ``backbone/`` relative to itself (``checkpoint.BUNDLED_BACKBONE``), so the bundle
loads wherever it is copied; its hashes cover the backbone's files, so damage anywhere is refused.
A backbone with random weights that training did not change (the tiny test preset) is not copied: it
is rebuilt from its seed, checked by its fingerprint, and keeps its name "(random weights)".

Before the bundle is moved into place it is loaded back as ``CVSModel`` would load it and run on a
random clip next to the source model: the largest difference in logits is recorded (0 when nothing
was merged) and the export fails above :data:`~cvsjepa.export.folder.PARITY_TOLERANCE`.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch

from ..adapt import has_lora
from ..checkpoint import BUNDLED_BACKBONE, CONTENT_KEY, FORMAT, META_FILE, WEIGHTS_FILE, load_classifier
from ..config import RunConfig, to_dict
from ..errors import CheckpointError
from ..io import atomic_save_safetensors, atomic_write_json, sha256_file
from ..model import CVSClassifier
from .folder import PARITY_TOLERANCE

BACKBONE_DIR = "backbone"


def effective_backbone(model: CVSClassifier):
    """A copy of the backbone with everything training changed in its own weights: a LoRA adapter
    merged (peft ``merge_and_unload``); unfrozen blocks are already there. The model is untouched."""
    if not has_lora(model.backbone):
        return model.backbone
    backbone = copy.deepcopy(model.backbone)  # merge_and_unload changes the module it is called on
    backbone.model = backbone.model.merge_and_unload()
    return backbone.freeze()


def write_bundle(model: CVSClassifier, cfg: RunConfig, meta: dict, ckpt: Path, out: Path) -> dict:
    """Write the bundle of ``model`` (loaded from ``ckpt`` with ``cfg``/``meta``) into ``out``; returns
    what ``cvsjepa_export.json`` records about it."""
    lora = has_lora(model.backbone)
    trained_backbone = lora or any(k.startswith("backbone.") for k in _checkpoint_keys(ckpt))
    ship = trained_backbone or not model.backbone.is_random
    files = [WEIGHTS_FILE]
    bundle_cfg = cfg
    bundle_meta = {k: v for k, v in meta.items() if k not in (CONTENT_KEY, "adapter")}
    if ship:
        backbone = effective_backbone(model)
        backbone.model.save_pretrained(str(out / BACKBONE_DIR), safe_serialization=True)
        files += sorted(str(p.relative_to(out)) for p in (out / BACKBONE_DIR).rglob("*") if p.is_file())
        bundle_cfg = replace(cfg, backbone=replace(cfg.backbone, path=BACKBONE_DIR, random_weights=False))
        bundle_meta.update({BUNDLED_BACKBONE: BACKBONE_DIR, "backbone_fingerprint": backbone.weights_fingerprint(),
                            "backbone": {**backbone.describe(), "path": BACKBONE_DIR}})
    head = model.trainable_state_dict(include_lora=False)  # the backbone is frozen: head (+ decoder) only
    atomic_save_safetensors(out / WEIGHTS_FILE, head, metadata={"format": FORMAT})
    bundle_meta.update({"format": FORMAT, "config": to_dict(bundle_cfg), "adapter": None,
                        "exported_from": {"checkpoint": str(Path(ckpt).resolve()), "backbone_path": cfg.backbone.path,
                                          "backbone_fingerprint": meta.get("backbone_fingerprint"),
                                          "adapt": cfg.adapt.mode, "lora_merged": lora}})
    bundle_meta[CONTENT_KEY] = {rel: sha256_file(out / rel) for rel in files}
    atomic_write_json(out / META_FILE, bundle_meta)
    diff = parity(model, out, cfg)
    if diff > PARITY_TOLERANCE:
        raise CheckpointError(f"the bundle's logits differ from {ckpt}'s by {diff:.3g} (> {PARITY_TOLERANCE:g}) on the "
                              f"same clip; it was not written")
    return {"backbone_shipped": ship, "lora_merged": lora, "max_abs_logit_diff": diff,
            "content_files": len(bundle_meta[CONTENT_KEY])}


def _checkpoint_keys(ckpt: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(Path(ckpt) / WEIGHTS_FILE), "pt") as f:
        return list(f.keys())


@torch.no_grad()
def parity(model: CVSClassifier, bundle: Path, cfg: RunConfig, seed: int = 0) -> float:
    """max |logits(source) - logits(bundle)| on one seeded random clip, float32 on the CPU."""
    loaded, _, _ = load_classifier(bundle, "cpu")
    crop = model.backbone.crop_size
    video = torch.randn(2, cfg.data.frames, 3, crop, crop, generator=torch.Generator().manual_seed(seed))
    a = model({"video": video}).float()
    b = loaded({"video": video}).float()
    return float((a - b).abs().max())
