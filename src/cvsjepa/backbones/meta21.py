"""V-JEPA 2.1 checkpoints in Meta's release format into ``VJEPA21Model`` (``vjepa21_model.py``).

Reading, prefixes (``module.``/``backbone.`` anywhere at the front), the block names with the fused
``qkv`` and the missing/unexpected/wrong-shape report are shared with V-JEPA 2 (``meta_format.py``).
2.1's own names (``app/vjepa_2_1/models/vision_transformer.py``)::

      patch_embed.proj.{weight,bias}   encoder.embeddings.patch_embeddings.proj
                                       (bias + video_mod_embed: the modality embedding folds in)
      video_mod_embed  [1, 1, D]       folded into that bias (added to every video token)
      blocks.{i}....                   encoder.layer.{i}....
      norms_block.{n-1}                encoder.layernorm          (the output norm)
      norms_block.{j}, j < n-1         hierarchical_norms.{j}     (multilevel features)
      patch_embed_img.proj, img_mod_embed   ignored: the single-image path (T = 1), never used for clips

Which encoder: ``ema_encoder`` (the distilled ViT-B/L), else ``target_encoder`` (the giants), else
``encoder``; ``key=`` overrides. The predictor is never loaded; its depth in the file is reported
(the ViT-L trap: Meta's hub config once said 24 blocks where the checkpoint has 12, and
``strict=False`` left half of it random; cvsjepa does not load it at all, so no random weight can
reach the tokens). A checkpoint with a SwiGLU MLP (``mlp.fc3``) or any other unknown key is refused.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError
from .meta_format import (block_shape, check_complete, family_of, map_top_keys, names, pick_preset, predictor_note,
                          read_state, rename_blocks)
from .presets import RANDOM_SEED, seeded_build
from .vjepa21_model import VJEPA21Model
from .vjepa21_presets import (
    ENCODER_KEYS,
    PRESETS,
    match_preset,
    preset_config,
    preset_shape,
)

log = logging.getLogger(__name__)

IMAGE_PATH = ("img_mod_embed", "patch_embed_img.proj.weight", "patch_embed_img.proj.bias")
IGNORED = IMAGE_PATH + ("pos_embed",)
MOD_EMBED = "video_mod_embed"
_NORM = re.compile(r"^norms_block\.(\d+)\.(weight|bias)$")
WHAT = "V-JEPA 2.1 encoder"


def _top_map(num_norms: int) -> dict[str, str]:
    """Original -> converted module names outside the blocks (for renaming and for messages)."""
    m = {"patch_embed.proj": "encoder.embeddings.patch_embeddings.proj",
         f"norms_block.{num_norms - 1}": "encoder.layernorm"}
    m.update({f"norms_block.{j}": f"hierarchical_norms.{j}" for j in range(num_norms - 1)})
    return m


def convert_state_dict(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """2.1 encoder names -> ``VJEPA21Model`` names, the modality embedding folded into the
    patch-embedding bias. Returns ``(converted, source, ignored)``; unknown keys raise CheckpointError."""
    if family_of(state) == "vjepa2":
        raise CheckpointError("this is a V-JEPA 2 (or SurgMotion) checkpoint with one final 'norm', not V-JEPA 2.1: "
                              "set backbone.name=vjepa2 (cvsjepa convert detects it by itself)")
    blocks, block_source, rest = rename_blocks(state)
    swiglu = sorted(k for k in rest if re.match(r"^blocks\.\d+\.mlp\.fc3\.", k))
    if swiglu:
        raise CheckpointError(f"{names(swiglu)}: this encoder has a SwiGLU MLP (fc1/fc2/fc3, use_silu=True), which "
                              f"no released V-JEPA 2.1 checkpoint uses and cvsjepa does not implement; refusing "
                              f"rather than running it as a GELU MLP with wrong tokens")
    num_norms = 1 + max((int(m.group(1)) for k in rest for m in [_NORM.match(k)] if m), default=-1)
    top = _top_map(num_norms) if num_norms else {}
    out = {f"encoder.{k}": v for k, v in blocks.items()}
    source = {f"encoder.{k}": v for k, v in block_source.items()}
    mapped, mapped_source, ignored, unknown = map_top_keys(rest, top, IGNORED, skip=(MOD_EMBED,))  # folded below
    out.update(mapped)
    source.update(mapped_source)
    if unknown:
        raise CheckpointError(f"{len(unknown)} checkpoint keys are not part of a V-JEPA 2.1 encoder: {names(unknown)} "
                              f"(expected patch_embed.proj, video_mod_embed, norms_block.N, "
                              f"blocks.N.{{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}} and the image path)")
    _fold_modality_embedding(state, out, source)
    return out, source, sorted(ignored)


def _fold_modality_embedding(state: dict[str, Tensor], out: dict[str, Tensor], source: dict[str, str]) -> None:
    """``conv(x) + b + m == conv(x) + (b + m)`` for the constant ``m = video_mod_embed``."""
    bias_key = "encoder.embeddings.patch_embeddings.proj.bias"
    if MOD_EMBED not in state:
        if "img_mod_embed" in state:
            raise CheckpointError(f"the checkpoint has img_mod_embed but no {MOD_EMBED}: a V-JEPA 2.1 encoder with "
                                  f"modality embeddings needs both (missing encoder weight: {MOD_EMBED})")
        return  # modality_embedding=False: nothing to add
    mod, bias = state[MOD_EMBED], out.get(bias_key)
    if bias is None or mod.numel() != bias.numel():
        got = "missing" if bias is None else f"{tuple(bias.shape)}"
        raise CheckpointError(f"{MOD_EMBED} {tuple(mod.shape)} does not fit patch_embed.proj.bias ({got}); expected "
                              f"[1, 1, hidden] and [hidden]")
    out[bias_key] = bias.float() + mod.reshape(-1).float()
    source[bias_key] = f"patch_embed.proj.bias + {MOD_EMBED}"


def infer_shape(converted: dict[str, Tensor]) -> dict[str, Any]:
    """Hidden size, depth, MLP width, patch, tubelet, input channels and the number of hierarchical norms."""
    shape = block_shape(converted, converted.get("encoder.embeddings.patch_embeddings.proj.weight"), "encoder.")
    shape["num_norms"] = (1 if "encoder.layernorm.weight" in converted else 0) + len(
        {k.split(".")[1] for k in converted if k.startswith("hierarchical_norms.")})
    return shape


def choose_preset(shape: dict[str, Any], preset: str = "auto", *, hint: str = "", filename: str = "") -> str:
    return pick_preset(shape, {n: preset_shape(kw) for n, kw in PRESETS.items()}, preset, hint=hint,
                       filename=filename, what="V-JEPA 2.1")


def load_meta21_checkpoint(path: str | Path, *, preset: str = "auto", preset_hint: str = "", key: str = "auto",
                           attn_implementation: str = "sdpa") -> tuple[VJEPA21Model, dict[str, Any]]:
    """A ``VJEPA21Model`` (float32, eval) with the encoder of the 2.1 checkpoint at ``path``.

    Returns ``(model, info)``; ``info``: ``preset``, ``checkpoint_key``, ``ignored_keys``,
    ``modality_embedding``, ``predictor`` (what happens to it), ``file_predictor_depth``.
    """
    path = str(path)
    ms = read_state(path, key, prefer=ENCODER_KEYS, what="V-JEPA 2.1")
    converted, source, ignored = convert_state_dict(ms.state)
    name = choose_preset(infer_shape(converted), preset, hint=preset_hint, filename=path)
    model = seeded_build(lambda: VJEPA21Model(preset_config(name, attn_implementation)), RANDOM_SEED)
    num_norms = len(model.config.levels())
    check_complete(converted, source, model.state_dict(), path, WHAT, _top_map(num_norms))
    with torch.no_grad():
        model.load_state_dict({k: v.to(torch.float32) for k, v in converted.items()}, strict=True)
    if ignored:
        log.info("%s: ignored %s (the single-image path; cvsjepa feeds video clips)", path, ", ".join(ignored))
    assert match_preset(model.config) == name
    info = {"preset": name, "checkpoint_key": ms.key_label, "ignored_keys": ignored,
            "modality_embedding": ("video_mod_embed folded into the patch-embedding bias" if MOD_EMBED in ms.state
                                   else "none in the checkpoint"),
            "predictor": predictor_note(ms), "file_predictor_depth": ms.predictor_depth}
    return model.eval(), info
