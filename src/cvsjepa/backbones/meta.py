"""Meta's original V-JEPA 2 checkpoints (``vitl.pt / vith.pt / vitg.pt / vitg-384.pt``) into
``transformers.VJEPA2Model``, and ``cvsjepa convert`` (a Hugging Face directory written once).

The release format (facebookresearch/vjepa2, ``src/models/vision_transformer.py``):

* a dict with the encoder state under ``target_encoder`` (the EMA teacher) and/or ``encoder``
  (plus ``predictor``, and in training checkpoints ``opt``, ``epoch``, ...). We take
  ``target_encoder`` when present, as the official hub loader and the frozen evaluations do, else
  ``encoder``; a plain flat state dict of encoder tensors is accepted too; ``key=`` overrides.
* names prefixed with ``module.`` (DDP) and/or ``backbone.`` (the multi-clip wrapper), stripped.
* encoder names and their transformers counterparts (``L`` = ``encoder.layer.{i}``)::

      patch_embed.proj.{weight,bias}        encoder.embeddings.patch_embeddings.proj
      blocks.{i}.norm1.{weight,bias}        L.norm1
      blocks.{i}.attn.qkv.{weight,bias}     L.attention.{query,key,value}  (rows [0:D], [D:2D], [2D:3D])
      blocks.{i}.attn.proj.{weight,bias}    L.attention.proj
      blocks.{i}.norm2.{weight,bias}        L.norm2
      blocks.{i}.mlp.fc{1,2}.{weight,bias}  L.mlp.fc{1,2}
      norm.{weight,bias}                    encoder.layernorm

  The fused qkv splits this way because the original reshapes its output as
  ``(3, heads, head_dim)``: q, k and v are consecutive blocks of D rows, each head-major, which is
  exactly how transformers views ``query(x)`` as ``(heads, head_dim)``.
* ``pos_embed``, if present, is ignored and reported: V-JEPA 2 encoders use RoPE and Meta's own
  loader drops it (``strict=False``, "state_dict has pos_embed but we use RoPE"). V-JEPA 1
  checkpoints (sin-cos positions, no RoPE) are not supported.

Shape: hidden size, depth, MLP width, patch and tubelet come from the tensors; heads and crop (which
the tensors cannot show: RoPE has no weights) from the matching preset. ViT-g at 256 and at 384
have identical tensors: ``vitg-384.pt`` is told apart by its file name, or by ``preset=vitg384``.

The predictor is out of scope (classification never runs it): the transformers model's predictor
stays randomly initialised (seeded), and ``describe()`` and the converted directory say so.

Files are only ever read with ``torch.load(..., weights_only=True)``: a pickle that would run code
or build custom objects is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import VJEPA2Model

from ..errors import CheckpointError
from . import _hf
from .vjepa2 import PREDICTOR_NOTE, PRESETS, RANDOM_SEED, match_preset, preset_config

log = logging.getLogger(__name__)

ENCODER_KEYS = ("target_encoder", "encoder")  # in order of preference
IGNORED = ("pos_embed",)
_PREFIXES = ("module.", "backbone.")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_BLOCK_MAP = {
    "norm1": "norm1", "attn.proj": "attention.proj", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_TOP_MAP = {"patch_embed.proj": "embeddings.patch_embeddings.proj", "norm": "layernorm"}


# ---------------------------------------------------------------------------- reading
def read_checkpoint(path: str | Path, key: str = "auto") -> tuple[dict[str, Tensor], str]:
    """The encoder state of a Meta checkpoint with ``module.``/``backbone.`` prefixes stripped,
    and the dict key it came from (``""`` for a flat state dict). CheckpointError on any problem."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"Meta checkpoint {path} does not exist (or is not a file)")
    try:
        # mmap: a 4 GB ViT-g file is paged in as needed instead of read whole (zip format only)
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(p))
    except Exception as e:
        raise CheckpointError(
            f"refusing to load {path}: it does not load with torch.load(weights_only=True) ({_why(e)}). "
            f"Meta's V-JEPA 2 releases hold only tensors and plain containers; a file that needs "
            f"full unpickling could run code and is never loaded here.") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict; expected Meta's V-JEPA 2 "
                              f"checkpoint format (encoder under 'target_encoder' or 'encoder')")
    if key == "auto":
        found = [k for k in ENCODER_KEYS if isinstance(obj.get(k), dict)]
        if found:
            key = found[0]
            if len(found) > 1:
                log.info("%s: has %s; using '%s' (the EMA encoder, as Meta's loaders do)", path,
                         " and ".join(found), key)
        elif obj and all(isinstance(v, Tensor) for v in obj.values()):
            key = ""  # a flat state dict of the encoder
        else:
            raise CheckpointError(f"{path}: no encoder state under {' or '.join(map(repr, ENCODER_KEYS))}; "
                                  f"top-level keys are {_names(obj)}")
    if key:
        if not isinstance(obj.get(key), dict):
            raise CheckpointError(f"{path}: no state dict under {key!r}; top-level keys are {_names(obj)}")
        state = obj[key]
    else:
        state = obj
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries under {key or 'the top level'} that are not tensors: {_names(bad)}")
    return {strip_prefixes(k): v for k, v in state.items()}, key


def _why(e: Exception) -> str:
    """The informative line of a torch.load failure (torch's text goes on to suggest
    ``weights_only=False``, which is exactly what must not be done with an untrusted file)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    unsafe = [ln for ln in lines if "Unsupported global" in ln or "Unsupported operand" in ln]
    detail = unsafe[0].split(" was not an allowed global")[0] if unsafe else (lines[0] if lines else "")
    return f"{type(e).__name__}: {detail[:200]}"


def strip_prefixes(name: str) -> str:
    """``module.backbone.blocks.0...`` -> ``blocks.0...`` (leading prefixes only, in any order)."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def _names(keys: Any, n: int = 8) -> str:
    keys = sorted(map(str, keys))
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more if keys else "(none)"


# ---------------------------------------------------------------------------- renaming
def convert_state_dict(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """Meta encoder names -> ``VJEPA2Model.encoder`` names (without the ``encoder.`` prefix).

    Returns ``(converted, source, ignored)``: ``source`` maps every converted name back to the
    original one (for error messages), ``ignored`` lists keys dropped on purpose (``pos_embed``).
    Keys that match no rule raise CheckpointError, named.
    """
    out: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for name, tensor in state.items():
        if name in IGNORED:
            ignored.append(name)
            continue
        module, _, leaf = name.rpartition(".")
        if leaf not in ("weight", "bias"):
            unknown.append(name)
            continue
        m = _BLOCK.match(module)
        if m:
            i, sub = m.group(1), m.group(2)
            if sub == "attn.qkv":
                if tensor.shape[0] % 3:
                    raise CheckpointError(f"{name} has shape {tuple(tensor.shape)}: a fused qkv needs 3 x hidden "
                                          f"rows; is this a V-JEPA 2 encoder?")
                for part, chunk in zip(("query", "key", "value"), tensor.chunk(3, dim=0)):
                    target = f"layer.{i}.attention.{part}.{leaf}"
                    out[target], source[target] = chunk, name
                continue
            if sub in _BLOCK_MAP:
                target = f"layer.{i}.{_BLOCK_MAP[sub]}.{leaf}"
                out[target], source[target] = tensor, name
                continue
        elif module in _TOP_MAP:
            target = f"{_TOP_MAP[module]}.{leaf}"
            out[target], source[target] = tensor, name
            continue
        unknown.append(name)
    if unknown:
        raise CheckpointError(f"{len(unknown)} checkpoint keys are not part of a V-JEPA 2 encoder: {_names(unknown)} "
                              f"(expected patch_embed.proj, norm and "
                              f"blocks.N.{{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}})")
    return out, source, ignored


# ---------------------------------------------------------------------------- shape
def infer_shape(converted: dict[str, Tensor]) -> dict[str, Any]:
    """Hidden size, depth, MLP width, patch, tubelet and input channels, from the tensors."""
    w = converted.get("embeddings.patch_embeddings.proj.weight")
    if w is None or w.ndim != 5:
        got = "missing" if w is None else f"shape {tuple(w.shape)}"
        raise CheckpointError(f"patch_embed.proj.weight is {got}; expected a Conv3d weight "
                              f"[hidden, 3, tubelet, patch, patch]")
    fc1 = converted.get("layer.0.mlp.fc1.weight")
    if fc1 is None:
        raise CheckpointError("blocks.0.mlp.fc1.weight is missing: cannot infer the MLP width")
    depth = 1 + max((int(k.split(".")[1]) for k in converted if k.startswith("layer.")), default=-1)
    return {"hidden_size": int(w.shape[0]), "in_chans": int(w.shape[1]), "tubelet_size": int(w.shape[2]),
            "patch_size": int(w.shape[3]), "num_hidden_layers": depth, "mlp_hidden": int(fc1.shape[0])}


def _preset_shape(kw: dict[str, Any]) -> dict[str, Any]:
    return {"hidden_size": kw["hidden_size"], "in_chans": kw.get("in_chans", 3), "tubelet_size": kw["tubelet_size"],
            "patch_size": kw["patch_size"], "num_hidden_layers": kw["num_hidden_layers"],
            "mlp_hidden": int(kw["hidden_size"] * kw["mlp_ratio"])}


def choose_preset(shape: dict[str, Any], preset: str = "auto", *, hint: str = "", filename: str = "") -> str:
    """The preset whose shape the tensors have. ``preset`` other than ``auto`` must match; with
    ``auto``, ``hint`` (e.g. the config's ``backbone.preset``) breaks ties, then the file name
    (``vitg-384.pt`` -> ``vitg384``), then the 256-px preset."""
    candidates = [n for n, kw in PRESETS.items() if _preset_shape(kw) == shape]
    desc = ", ".join(f"{k}={v}" for k, v in shape.items())
    if preset != "auto":
        if preset not in PRESETS:
            raise CheckpointError(f"preset {preset!r} is not one of auto, {', '.join(PRESETS)}")
        if preset not in candidates:
            raise CheckpointError(f"the checkpoint's encoder ({desc}) does not have the shape of preset {preset} "
                                  f"({', '.join(f'{k}={v}' for k, v in _preset_shape(PRESETS[preset]).items())}); "
                                  f"matching presets: {', '.join(candidates) or 'none'}")
        return preset
    if not candidates:
        raise CheckpointError(f"the checkpoint's encoder ({desc}) matches no V-JEPA 2 preset "
                              f"({', '.join(PRESETS)}); heads and crop size cannot be read from the tensors")
    if len(candidates) == 1:
        return candidates[0]
    if hint in candidates:
        return hint
    by_name = [n for n in candidates if str(PRESETS[n]["crop_size"]) in Path(filename).name]
    chosen = by_name[0] if by_name else min(candidates, key=lambda n: PRESETS[n]["crop_size"])
    log.info("%s: the tensors fit presets %s (they differ only in crop size, which RoPE weights do not show); "
             "using %s (crop %d). Pass the preset explicitly if that is wrong.", filename or "checkpoint",
             ", ".join(candidates), chosen, PRESETS[chosen]["crop_size"])
    return chosen


def check_complete(converted: dict[str, Tensor], source: dict[str, str], expected: dict[str, Tensor],
                   path: str) -> None:
    """Every encoder parameter filled, every checkpoint key used, every shape right; else one
    CheckpointError naming the keys (original names where they exist)."""
    missing = sorted(set(expected) - set(converted))
    extra = sorted(set(converted) - set(expected))
    wrong = sorted(k for k in set(expected) & set(converted) if tuple(expected[k].shape) != tuple(converted[k].shape))
    if not (missing or extra or wrong):
        return
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} encoder weights: {_names(_original(k) for k in missing)}")
    if extra:
        parts.append(f"{len(set(source[k] for k in extra))} unexpected keys: {_names({source[k] for k in extra})}")
    if wrong:
        parts.append("wrong shapes: " + "; ".join(
            f"{source[k]} {tuple(converted[k].shape)} (needs {tuple(expected[k].shape)} for encoder.{k})"
            for k in wrong[:6]) + (f" ... (+{len(wrong) - 6} more)" if len(wrong) > 6 else ""))
    raise CheckpointError(f"{path} is not a complete V-JEPA 2 encoder of the inferred shape: " + "; ".join(parts))


def _original(hf_name: str) -> str:
    """``layer.3.attention.key.weight`` -> ``blocks.3.attn.qkv.weight`` (for messages)."""
    m = re.match(r"^layer\.(\d+)\.(.+)\.(weight|bias)$", hf_name)
    if m:
        i, sub, leaf = m.groups()
        if sub.startswith("attention.") and sub.split(".")[1] in ("query", "key", "value"):
            return f"blocks.{i}.attn.qkv.{leaf}"
        inverse = {v: k for k, v in _BLOCK_MAP.items()}
        return f"blocks.{i}.{inverse.get(sub, sub)}.{leaf}"
    module, _, leaf = hf_name.rpartition(".")
    inverse = {v: k for k, v in _TOP_MAP.items()}
    return f"{inverse.get(module, module)}.{leaf}"


# ---------------------------------------------------------------------------- loading
def load_meta_checkpoint(path: str | Path, *, preset: str = "auto", preset_hint: str = "", key: str = "auto",
                         attn_implementation: str = "sdpa") -> tuple[VJEPA2Model, dict[str, Any]]:
    """A ``VJEPA2Model`` (float32, eval) with the encoder from Meta's checkpoint at ``path``.

    Returns ``(model, info)``; ``info``: ``preset``, ``checkpoint_key``, ``ignored_keys``,
    ``predictor`` (a note: randomly initialised, not converted).
    """
    path = str(path)
    state, used_key = read_checkpoint(path, key)
    converted, source, ignored = convert_state_dict(state)
    shape = infer_shape(converted)
    name = choose_preset(shape, preset, hint=preset_hint, filename=path)
    config = preset_config(name, attn_implementation)
    model = _hf.seeded_build(lambda: VJEPA2Model(config), RANDOM_SEED)
    check_complete(converted, source, model.encoder.state_dict(), path)
    with torch.no_grad():
        model.encoder.load_state_dict({k: v.to(torch.float32) for k, v in converted.items()}, strict=True)
    if ignored:
        log.info("%s: ignored %s (V-JEPA 2 encodes positions with RoPE; Meta's loader drops it too)",
                 path, ", ".join(ignored))
    assert match_preset(model.config) == name
    info = {"preset": name, "checkpoint_key": used_key or "(flat state dict)", "ignored_keys": ignored,
            "predictor": PREDICTOR_NOTE}
    return model.eval(), info


# ---------------------------------------------------------------------------- converting
def convert_checkpoint(path: str | Path, out: str | Path, *, preset: str = "auto", key: str = "auto",
                       overwrite: bool = False) -> Path:
    """Write Meta's checkpoint at ``path`` as a Hugging Face directory ``out`` (config.json +
    model.safetensors via ``save_pretrained``, README.md, cvsjepa_conversion.json).

    Atomic: written to a temporary sibling directory, re-loaded and compared tensor by tensor, then
    renamed into place, so ``out`` is either absent/old or complete. An existing ``out`` is
    refused unless ``overwrite``.
    """
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists; choose another --out or pass --overwrite")
    model, info = load_meta_checkpoint(path, preset=preset, key=key)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        _verify(tmp, model)
        note = {"source": str(Path(path).expanduser().resolve()), "source_format": "Meta V-JEPA 2 checkpoint",
                **info, "converted_by": "cvsjepa convert"}
        (tmp / "cvsjepa_conversion.json").write_text(json.dumps(note, indent=2) + "\n")
        (tmp / "README.md").write_text(_readme(note))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{out.name}.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _verify(directory: Path, model: VJEPA2Model) -> None:
    """Re-load the written directory and compare every encoder tensor (catches a truncated write)."""
    from .vjepa2 import load_hf_model

    loaded = load_hf_model(str(directory))
    ref = model.encoder.state_dict()
    bad = [k for k, v in loaded.encoder.state_dict().items() if not torch.equal(v, ref[k])]
    if bad:
        raise CheckpointError(f"the converted weights in {directory} differ from the checkpoint after re-loading: "
                              f"{_names(bad)}")


def _readme(note: dict[str, Any]) -> str:
    ignored = ", ".join(note["ignored_keys"]) or "none"
    return (f"# V-JEPA 2 {note['preset']} encoder, converted by `cvsjepa convert`\n\n"
            f"- source: `{note['source']}` (Meta's release format), encoder taken from "
            f"`{note['checkpoint_key']}`\n"
            f"- fused `qkv` split into `query`/`key`/`value`; names mapped to `transformers.VJEPA2Model`\n"
            f"- ignored keys: {ignored}\n"
            f"- predictor: {note['predictor']}\n\n"
            f"Load with `backbone.path=<this directory>` (or `VJEPA2Model.from_pretrained`); the encoder "
            f"tokens equal those of the original checkpoint.\n")
