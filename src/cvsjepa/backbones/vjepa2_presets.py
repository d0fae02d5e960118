"""The ``vjepa2`` family's preset table, shared by the backbone (``vjepa2.py``) and the Meta-checkpoint
loader (``meta.py``) so that neither imports the other's internals.

=================  ======  ======  =====  =========  =====  ===============  =====================
preset             hidden  layers  heads  mlp ratio  crop   encoder params   TFLOP / 16-frame clip
=================  ======  ======  =====  =========  =====  ===============  =====================
vitl               1024    24      16     4          256    303.9 M          1.66
vith               1280    32      16     4          256    631.6 M          3.27
vitg               1408    40      22     48/11      256    1012.2 M         5.09
vitg384            1408    40      22     48/11      384    1012.2 M         14.1
surgmotion-vitl    1024    24      16     4          256    303.9 M          1.66
surgmotion-vitg    1408    40      22     48/11      256    1012.2 M         5.09
tiny               96      2       4      2          64     random, for tests and the demo
=================  ======  ======  =====  =========  =====  ===============  =====================

**SurgMotion** (CAIR-HKISI/SurgMotion, arXiv 2602.05638) is V-JEPA 2 pre-trained further on 3,658 h
of surgical video. Its code base is V-JEPA 2's (``src/models/``): the same blocks, fused ``qkv``,
RoPE (with V-JEPA 2's frequency layout) and final ``norm``. Its "xformer" ViT-g is V-JEPA 2's
``vit_giant_xformers``: 22 heads of 64 dims instead of ``vit_giant``'s 16 of 88, nothing else (no
xformers kernel, no other projection naming), so it maps onto ``transformers.VJEPA2Model``
exactly and is a preset of this family. The authors probe it at 256 px with 64-frame clips and the
state under ``encoder`` (their configs' ``checkpoint_key``); cvsjepa takes that key too, and runs
it at ``data.frames`` (16 in the log's experiments) like V-JEPA 2: frame positions extrapolate in
RoPE, and 16 frames keep the clip cost of the log (5.1 TFLOP instead of 4x that at 64 frames).

All presets use patch 16, tubelet 2 and ``frames_per_clip=64`` (the HF conversions' value; it only
sizes the RoPE depth grid). The spatial size must equal ``crop_size`` (checked by the backbone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import VJEPA2Config

from . import presets

FAMILY = "vjepa2"
_HF_GEOMETRY = dict(crop_size=256, patch_size=16, tubelet_size=2, frames_per_clip=64)
_VITL = dict(hidden_size=1024, num_attention_heads=16, num_hidden_layers=24, mlp_ratio=4.0)
_VITG = dict(hidden_size=1408, num_attention_heads=22, num_hidden_layers=40, mlp_ratio=48 / 11)

PRESETS: dict[str, dict[str, Any]] = {
    # Tests and the demo: runs a 16-frame clip in milliseconds on a CPU. hidden/heads = 24 so each
    # RoPE axis gets 8 dims (>= 2 needed).
    "tiny": dict(crop_size=64, patch_size=16, frames_per_clip=8, tubelet_size=2, hidden_size=96,
                 num_attention_heads=4, num_hidden_layers=2, mlp_ratio=2.0,
                 pred_hidden_size=32, pred_num_attention_heads=2, pred_num_hidden_layers=1),
    "vitl": dict(**_HF_GEOMETRY, **_VITL),
    "vith": dict(**_HF_GEOMETRY, hidden_size=1280, num_attention_heads=16, num_hidden_layers=32, mlp_ratio=4.0),
    "vitg": dict(**_HF_GEOMETRY, **_VITG),
    "vitg384": dict(**{**_HF_GEOMETRY, "crop_size": 384}, **_VITG),
    "surgmotion-vitl": dict(**_HF_GEOMETRY, **_VITL),
    "surgmotion-vitg": dict(**_HF_GEOMETRY, **_VITG),
}


@dataclass(frozen=True)
class Release:
    """Where a preset's weights come from: Meta-format file name(s), HF repo, the file-name
    substrings that tell it apart from a same-shaped preset, and which encoder key to prefer."""

    files: str = ""
    hf_repo: str = ""
    file_hints: tuple[str, ...] = ()
    encoder_keys: tuple[str, ...] = ("target_encoder", "encoder")  # Meta's hub and frozen evals: the EMA


_SURGMOTION_KEYS = ("encoder", "target_encoder")  # SurgMotion's probing configs: checkpoint_key: encoder
RELEASES: dict[str, Release] = {
    "vitl": Release("vitl.pt", "facebook/vjepa2-vitl-fpc64-256"),
    "vith": Release("vith.pt", "facebook/vjepa2-vith-fpc64-256"),
    "vitg": Release("vitg.pt", "facebook/vjepa2-vitg-fpc64-256"),
    "vitg384": Release("vitg-384.pt", "facebook/vjepa2-vitg-fpc64-384", file_hints=("384",)),
    "surgmotion-vitl": Release("SurgMotion-vitl.pt (CAIR-HKISI/SurgMotion)", file_hints=("surgmotion",),
                               encoder_keys=_SURGMOTION_KEYS),
    "surgmotion-vitg": Release("SurgMotion-vitg-xformer.pt (CAIR-HKISI/SurgMotion)", file_hints=("surgmotion",),
                               encoder_keys=_SURGMOTION_KEYS),
}
HF_REPOS = {name: r.hf_repo for name, r in RELEASES.items() if r.hf_repo}

# Fields that define the encoder's shape (preset matching) and, with the weights, its tokens.
SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio",
              "crop_size", "patch_size", "tubelet_size")
TOKEN_KEYS = SHAPE_KEYS + ("layer_norm_eps", "hidden_act", "qkv_bias", "in_chans")
PREDICTOR_NOTE = ("the predictor is not converted (classification never runs it): it is randomly "
                  "initialised and skipped")


def preset_config(preset: str, attn_implementation: str = "sdpa") -> VJEPA2Config:
    """The ``VJEPA2Config`` of a named preset; ConfigError naming ``backbone.preset`` if unknown."""
    return presets.named_config(PRESETS, preset, VJEPA2Config, FAMILY, attn_implementation)


def match_preset(config: VJEPA2Config, prefer: str | tuple[str, ...] = ()) -> str:
    """Name of a preset with this encoder shape, or ``"custom"``. Same-shaped presets (vitg,
    surgmotion-vitg) differ only in their weights: the first name in ``prefer`` that fits wins."""
    for name in (prefer,) if isinstance(prefer, str) else prefer:
        if name in PRESETS and presets.match_preset({name: PRESETS[name]}, config, VJEPA2Config, SHAPE_KEYS) == name:
            return name
    return presets.match_preset(PRESETS, config, VJEPA2Config, SHAPE_KEYS)


def encoder_keys(hint: str = "", filename: str = "") -> tuple[str, ...]:
    """Which top-level encoder key to prefer, before the tensors are read: SurgMotion's when the
    preset hint or the file name says SurgMotion, else V-JEPA 2's (EMA first)."""
    if hint in RELEASES:
        return RELEASES[hint].encoder_keys
    if "surgmotion" in filename.lower().rsplit("/", 1)[-1]:
        return _SURGMOTION_KEYS
    return RELEASES["vitl"].encoder_keys
