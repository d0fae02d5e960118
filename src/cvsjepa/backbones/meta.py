"""Meta-format V-JEPA 2 checkpoints (``vitl.pt / vith.pt / vitg.pt / vitg-384.pt``) and SurgMotion's
(``SurgMotion-vitl.pt``, ``SurgMotion-vitg-xformer.pt``) into ``transformers.VJEPA2Model``.

Reading, prefixes, the block names and fused qkv, and the completeness check are shared with
V-JEPA 2.1 (``meta_format.py``). What is V-JEPA 2's own (``src/models/vision_transformer.py``)::

      patch_embed.proj.{weight,bias}        encoder.embeddings.patch_embeddings.proj
      blocks.{i}....                        encoder.layer.{i}....        (meta_format.rename_blocks)
      norm.{weight,bias}                    encoder.layernorm

* ``pos_embed``, if present, is ignored and reported: V-JEPA 2 encoders use RoPE and Meta's own
  loader drops it (``strict=False``, "state_dict has pos_embed but we use RoPE"). V-JEPA 1
  checkpoints (sin-cos positions, no RoPE) are not supported.
* Which encoder: ``target_encoder`` (the EMA teacher, as Meta's hub loader and frozen evaluations
  use) before ``encoder``; for SurgMotion ``encoder`` first, as its authors' probing configs do.
* Shape: hidden size, depth, MLP width, patch and tubelet come from the tensors; heads and crop (which
  the tensors cannot show: RoPE has no weights) from the matching preset. Same-shaped presets
  (vitg / vitg384 / surgmotion-vitg) are told apart by ``preset=``, the config's ``backbone.preset``,
  or the file name (``384``, ``surgmotion``).
* A V-JEPA 2.1 file (``norms_block``, modality embeddings) is refused with the family to use.

The predictor is out of scope (classification never runs it): the transformers model's predictor
stays randomly initialised (seeded), and ``describe()`` and the converted directory say so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import VJEPA2Model

from ..errors import CheckpointError
from .meta_format import (MetaState, block_shape, check_complete, family_of, map_top_keys, names, pick_preset,
                          read_state, rename_blocks)
from .presets import RANDOM_SEED, seeded_build
from .vjepa2_presets import (
    PREDICTOR_NOTE,
    PRESETS,
    RELEASES,
    encoder_keys,
    match_preset,
    preset_config,
)

log = logging.getLogger(__name__)

IGNORED = ("pos_embed",)
TOP_MAP = {"patch_embed.proj": "embeddings.patch_embeddings.proj", "norm": "layernorm"}
WHAT = "V-JEPA 2 encoder"


def convert_state_dict(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """Meta encoder names -> ``VJEPA2Model.encoder`` names (without the ``encoder.`` prefix).

    Returns ``(converted, source, ignored)``: ``source`` maps every converted name back to the
    original one (for error messages), ``ignored`` lists keys dropped on purpose (``pos_embed``).
    Keys that match no rule raise CheckpointError, named.
    """
    if family_of(state) == "vjepa21":
        raise CheckpointError("this is a V-JEPA 2.1 checkpoint (norms_block / video_mod_embed), not V-JEPA 2: "
                              "set backbone.name=vjepa21 (cvsjepa convert detects it by itself)")
    out, source, rest = rename_blocks(state)
    top, top_source, ignored, unknown = map_top_keys(rest, TOP_MAP, IGNORED)
    out.update(top)
    source.update(top_source)
    if unknown:
        raise CheckpointError(f"{len(unknown)} checkpoint keys are not part of a V-JEPA 2 encoder: {names(unknown)} "
                              f"(expected patch_embed.proj, norm and "
                              f"blocks.N.{{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}})")
    return out, source, ignored


def infer_shape(converted: dict[str, Tensor]) -> dict[str, Any]:
    """Hidden size, depth, MLP width, patch, tubelet and input channels, from the tensors."""
    return block_shape(converted, converted.get("embeddings.patch_embeddings.proj.weight"))


def preset_shape(kw: dict[str, Any]) -> dict[str, Any]:
    return {"hidden_size": kw["hidden_size"], "in_chans": kw.get("in_chans", 3), "tubelet_size": kw["tubelet_size"],
            "patch_size": kw["patch_size"], "num_hidden_layers": kw["num_hidden_layers"],
            "mlp_hidden": int(kw["hidden_size"] * kw["mlp_ratio"])}


def choose_preset(shape: dict[str, Any], preset: str = "auto", *, hint: str = "", filename: str = "") -> str:
    """The preset whose shape the tensors have (``meta_format.pick_preset`` over this family)."""
    return pick_preset(shape, {n: preset_shape(kw) for n, kw in PRESETS.items()}, preset, hint=hint,
                       filename=filename, file_hints={n: r.file_hints for n, r in RELEASES.items()},
                       what="V-JEPA 2")


def _preferred_key(ms: MetaState, name: str, key: str) -> MetaState:
    """Re-read under the chosen preset's preferred encoder key when ``key=auto`` guessed another one
    (encoder and target_encoder have the same shapes, so the preset can be chosen from either)."""
    if key != "auto" or not ms.key or name not in RELEASES:
        return ms
    want = next((k for k in RELEASES[name].encoder_keys if k in ms.top_level), ms.key)
    return ms if want == ms.key else read_state(ms.path, want, what="V-JEPA 2")


def load_meta_checkpoint(path: str | Path, *, preset: str = "auto", preset_hint: str = "", key: str = "auto",
                         attn_implementation: str = "sdpa") -> tuple[VJEPA2Model, dict[str, Any]]:
    """A ``VJEPA2Model`` (float32, eval) with the encoder from Meta's checkpoint at ``path``.

    Returns ``(model, info)``; ``info``: ``preset``, ``checkpoint_key``, ``ignored_keys``,
    ``predictor`` (a note: randomly initialised, not converted), ``file_predictor_depth``.
    """
    path = str(path)
    ms = read_state(path, key, prefer=encoder_keys(preset_hint, path), what="V-JEPA 2")
    shape = infer_shape(convert_state_dict(ms.state)[0])
    name = choose_preset(shape, preset, hint=preset_hint, filename=path)
    ms = _preferred_key(ms, name, key)
    converted, source, ignored = convert_state_dict(ms.state)
    config = preset_config(name, attn_implementation)
    model = seeded_build(lambda: VJEPA2Model(config), RANDOM_SEED)
    check_complete(converted, source, model.encoder.state_dict(), path, WHAT, TOP_MAP)
    with torch.no_grad():
        model.encoder.load_state_dict({k: v.to(torch.float32) for k, v in converted.items()}, strict=True)
    if ignored:
        log.info("%s: ignored %s (V-JEPA 2 encodes positions with RoPE; Meta's loader drops it too)",
                 path, ", ".join(ignored))
    assert match_preset(model.config, prefer=name) == name
    info = {"preset": name, "checkpoint_key": ms.key_label, "ignored_keys": ignored, "predictor": PREDICTOR_NOTE,
            "file_predictor_depth": ms.predictor_depth}
    return model.eval(), info
