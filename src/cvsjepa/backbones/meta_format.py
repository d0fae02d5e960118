"""Meta's release format for V-JEPA-style encoders, shared by every loader that reads it:
V-JEPA 2 (``vitl.pt`` ...), SurgMotion (``SurgMotion-vitg-xformer.pt``, V-JEPA 2's code base) and
V-JEPA 2.1 (``vjepa2_1_vitl_dist_vitG_384.pt`` ...).

What they have in common, and what lives here:

* **Safe reading.** ``torch.load(weights_only=True)`` only (memory-mapped when the file is a zip):
  a pickle that would run code or build custom objects is refused, never executed.
* **Which encoder.** A dict with the encoder state under one of several keys (``ema_encoder``,
  ``target_encoder``, ``encoder``; the caller says in which order to prefer them), plus a
  ``predictor`` and training state; or a flat state dict of encoder tensors. ``key=`` overrides.
* **Prefixes.** ``module.`` (DDP) and ``backbone.`` (the multi-clip wrapper) removed from the
  front of every name, in any order.
* **Blocks.** ``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`` map onto
  ``transformers``' ``layer.{i}.{norm1, attention.{query,key,value}, attention.proj, norm2,
  mlp.fc1, mlp.fc2}``. The fused ``qkv`` rows split into three consecutive blocks of D rows,
  because the original reshapes its output as ``(3, heads, head_dim)``: q, k and v are each
  head-major, exactly how transformers views ``query(x)`` as ``(heads, head_dim)``.
* **Completeness.** ``check_complete`` names every missing, unexpected and mis-shaped key (by its
  original name) and refuses the load: a silent partial load looks like a working, merely bad, model.
* **The predictor** is never loaded (classification runs the encoder only); ``predictor_depth``
  counts its blocks so the report can say what the file holds (V-JEPA 2.1's ViT-L trap: the hub
  config said depth 24, the checkpoint has 12, and ``strict=False`` left half of it random).

The family-specific parts (top-level names, shape inference, presets) live in ``meta.py``
(V-JEPA 2, SurgMotion) and ``meta21.py`` (V-JEPA 2.1).
"""

from __future__ import annotations

import logging
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor

from ..errors import CheckpointError

log = logging.getLogger(__name__)

PREFIXES = ("module.", "backbone.")
META_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt")
ALL_ENCODER_KEYS = ("ema_encoder", "target_encoder", "encoder")
FAMILY_NAMES = {"vjepa2": "V-JEPA 2 / SurgMotion", "vjepa21": "V-JEPA 2.1"}
NOT_ENCODERS = ("predictor", "opt", "optimizer", "scaler")  # top-level entries that are never an encoder
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")
_PREDICTOR_BLOCK = re.compile(r"predictor_blocks\.(\d+)\.")
BLOCK_MAP = {"norm1": "norm1", "attn.proj": "attention.proj", "norm2": "norm2", "mlp.fc1": "mlp.fc1",
             "mlp.fc2": "mlp.fc2"}
_QKV = ("query", "key", "value")


@dataclass
class MetaState:
    """The encoder tensors of a Meta checkpoint, prefixes stripped, and where they came from."""

    path: str
    state: dict[str, Tensor]
    key: str  # the top-level key used; "" for a flat state dict
    top_level: list[str] = field(default_factory=list)
    predictor_depth: int | None = None  # blocks in the file's predictor (None: no predictor)

    @property
    def key_label(self) -> str:
        return self.key or "(flat state dict)"


# ---------------------------------------------------------------------------- reading
def is_meta_checkpoint_path(path: str) -> bool:
    """A file path with a PyTorch-pickle suffix: Meta's release format (``vitl.pt`` ...)."""
    return Path(path).suffix.lower() in META_SUFFIXES


def read_state(path: str | Path, key: str = "auto", prefer: Iterable[str] = ("target_encoder", "encoder"),
               what: str = "V-JEPA") -> MetaState:
    """The encoder state of a Meta checkpoint at ``path``; CheckpointError on any problem.

    ``key``: ``auto`` takes the first of ``prefer`` present in the file (else a flat state dict of
    tensors), or names the top-level key to use (``""`` = the file is the flat state dict).
    ``what`` names the format in messages.
    """
    path = str(path)
    obj = _load(path, what)
    prefer = tuple(prefer)
    if key in NOT_ENCODERS:
        raise CheckpointError(f"{path}: --key {key} is not an encoder; cvsjepa converts the encoder only "
                              f"(one of {', '.join(prefer)})")
    if key == "auto":
        found = [k for k in prefer if isinstance(obj.get(k), dict)]
        if found:
            key = found[0]
            if len(found) > 1:
                log.info("%s: has %s; using '%s' (the encoder Meta's loaders use for this model)", path,
                         " and ".join(found), key)
        elif obj and all(isinstance(v, Tensor) for v in obj.values()):
            key = ""
        else:
            raise CheckpointError(f"{path}: no encoder state under {' or '.join(map(repr, prefer))}; "
                                  f"top-level keys are {names(obj)}{_other_family_hint(obj)}")
    if key and not isinstance(obj.get(key), dict):
        raise CheckpointError(f"{path}: no state dict under {key!r}; top-level keys are {names(obj)}")
    state = obj[key] if key else obj
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries under {key or 'the top level'} that are not tensors: {names(bad)}")
    predictor = obj.get("predictor") if key else None
    return MetaState(path=path, state={strip_prefixes(k): v for k, v in state.items()}, key=key,
                     top_level=sorted(map(str, obj)), predictor_depth=predictor_depth(predictor))


def _other_family_hint(obj: dict) -> str:
    """A hint when the file holds an encoder under a key another family prefers (a 2.1 ``ema_encoder``)."""
    for key in ALL_ENCODER_KEYS:
        if isinstance(obj.get(key), dict):
            family = family_of({strip_prefixes(str(k)): v for k, v in obj[key].items()})
            if family:
                return f" (its '{key}' is a {FAMILY_NAMES[family]} encoder: set backbone.name={family})"
    return ""


def _load(path: str, what: str) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"{what} checkpoint {path} does not exist (or is not a file)")
    try:
        # mmap: a 4 GB ViT-g file is paged in as needed instead of read whole (zip format only)
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(p))
    except Exception as e:
        raise CheckpointError(
            f"refusing to load {path}: it does not load with torch.load(weights_only=True) ({_why(e)}). "
            f"Meta's releases hold only tensors and plain containers; a file that needs full unpickling "
            f"could run code and is never loaded here.") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict; expected Meta's {what} "
                              f"checkpoint format (a dict with the encoder state, e.g. under 'target_encoder')")
    return obj


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
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def predictor_depth(predictor: Any) -> int | None:
    """Number of ``predictor_blocks.N`` in a predictor state dict (None when there is none)."""
    if not isinstance(predictor, dict):
        return None
    ids = {int(m.group(1)) for k in predictor for m in [_PREDICTOR_BLOCK.search(str(k))] if m}
    return len(ids)


def predictor_note(ms: MetaState) -> str:
    """What happens to the predictor, for ``describe()`` and converted directories."""
    held = ("the file holds no predictor" if ms.predictor_depth is None
            else f"the file's predictor has {ms.predictor_depth} blocks")
    return (f"not loaded: classification runs the encoder only ({held}; it is neither used nor converted, "
            f"so a predictor-depth mismatch cannot leave random weights in the tokens)")


def names(keys: Any, n: int = 8) -> str:
    keys = sorted(map(str, keys))
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more if keys else "(none)"


def family_of(state: dict[str, Tensor]) -> str:
    """``"vjepa21"`` for a V-JEPA 2.1 encoder (hierarchical ``norms_block``, modality embeddings),
    ``"vjepa2"`` for V-JEPA 2 / SurgMotion (one final ``norm``), ``""`` when neither shows."""
    if any(k.startswith(("norms_block.", "video_mod_embed", "img_mod_embed", "patch_embed_img.")) for k in state):
        return "vjepa21"
    if "norm.weight" in state:
        return "vjepa2"
    return ""


# ---------------------------------------------------------------------------- renaming
def map_top_keys(rest: dict[str, Tensor], top: dict[str, str], ignored: tuple[str, ...], skip: tuple[str, ...] = ()
                 ) -> tuple[dict[str, Tensor], dict[str, str], list[str], list[str]]:
    """The non-block entries: ``module.{weight,bias}`` renamed through ``top``; names in ``ignored``
    dropped and listed; names in ``skip`` left for the caller. Returns ``(converted, source, ignored,
    unknown)``: the caller refuses a load with unknown keys, naming them."""
    out, source, dropped, unknown = {}, {}, [], []
    for name, tensor in rest.items():
        module, _, leaf = name.rpartition(".")
        if name in ignored:
            dropped.append(name)
        elif name in skip:
            continue
        elif module in top and leaf in ("weight", "bias"):
            target = f"{top[module]}.{leaf}"
            out[target], source[target] = tensor, name
        else:
            unknown.append(name)
    return out, source, dropped, unknown


def rename_blocks(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str], dict[str, Tensor]]:
    """Split ``state`` into the transformer blocks (renamed to ``layer.{i}....``, fused qkv split)
    and the rest. Returns ``(converted, source, rest)``; ``source`` maps each converted name back
    to its original one. Block entries that match no rule stay in ``rest`` (the caller reports them)."""
    out: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    rest: dict[str, Tensor] = {}
    for name, tensor in state.items():
        m = _BLOCK.match(name)
        if not m:
            rest[name] = tensor
            continue
        i, sub, leaf = m.groups()
        if sub == "attn.qkv":
            if tensor.shape[0] % 3:
                raise CheckpointError(f"{name} has shape {tuple(tensor.shape)}: a fused qkv needs 3 x hidden rows")
            for part, chunk in zip(_QKV, tensor.chunk(3, dim=0)):
                target = f"layer.{i}.attention.{part}.{leaf}"
                out[target], source[target] = chunk, name
        elif sub in BLOCK_MAP:
            target = f"layer.{i}.{BLOCK_MAP[sub]}.{leaf}"
            out[target], source[target] = tensor, name
        else:
            rest[name] = tensor
    return out, source, rest


def original_name(hf_name: str, top_map: dict[str, str]) -> str:
    """``layer.3.attention.key.weight`` -> ``blocks.3.attn.qkv.weight`` (for messages);
    ``top_map``: the family's original -> converted names outside the blocks."""
    m = re.match(r"^(?:encoder\.)?layer\.(\d+)\.(.+)\.(weight|bias)$", hf_name)
    if m:
        i, sub, leaf = m.groups()
        if sub.startswith("attention.") and sub.split(".")[1] in _QKV:
            return f"blocks.{i}.attn.qkv.{leaf}"
        inverse = {v: k for k, v in BLOCK_MAP.items()}
        return f"blocks.{i}.{inverse.get(sub, sub)}.{leaf}"
    module, _, leaf = hf_name.rpartition(".")
    inverse = {v: k for k, v in top_map.items()}
    return f"{inverse.get(module, module)}.{leaf}"


def check_complete(converted: dict[str, Tensor], source: dict[str, str], expected: dict[str, Tensor],
                   path: str, what: str, top_map: dict[str, str]) -> None:
    """Every expected parameter filled, every checkpoint key used, every shape right; else one
    CheckpointError naming the keys (original names where they exist). ``what``: e.g. "V-JEPA 2 encoder"."""
    missing = sorted(set(expected) - set(converted))
    extra = sorted(set(converted) - set(expected))
    wrong = sorted(k for k in set(expected) & set(converted) if tuple(expected[k].shape) != tuple(converted[k].shape))
    if not (missing or extra or wrong):
        return
    parts = []
    if missing:
        originals = {original_name(k, top_map) for k in missing}  # a fused qkv is one weight, not three
        parts.append(f"missing {len(originals)} encoder weights: {names(originals)}")
    if extra:
        parts.append(f"{len(set(source[k] for k in extra))} unexpected keys: {names({source[k] for k in extra})}")
    if wrong:
        parts.append("wrong shapes: " + "; ".join(
            f"{source[k]} {tuple(converted[k].shape)} (needs {tuple(expected[k].shape)} for {k})"
            for k in wrong[:6]) + (f" ... (+{len(wrong) - 6} more)" if len(wrong) > 6 else ""))
    raise CheckpointError(f"{path} is not a complete {what} of the inferred shape: " + "; ".join(parts))


def block_shape(converted: dict[str, Tensor], patch_weight: Tensor | None, prefix: str = "") -> dict[str, int]:
    """Hidden size, input channels, tubelet, patch, depth and MLP width, from the tensors
    (``patch_weight``: the Conv3d ``[hidden, C, tubelet, patch, patch]``; the blocks are
    ``{prefix}layer.{i}....`` in ``converted``)."""
    if patch_weight is None or patch_weight.ndim != 5:
        got = "missing" if patch_weight is None else f"shape {tuple(patch_weight.shape)}"
        raise CheckpointError(f"patch_embed.proj.weight is {got}; expected a Conv3d weight "
                              f"[hidden, 3, tubelet, patch, patch]")
    fc1 = converted.get(f"{prefix}layer.0.mlp.fc1.weight")
    if fc1 is None:
        raise CheckpointError("blocks.0.mlp.fc1.weight is missing: cannot infer the MLP width")
    depth = 1 + max((int(k[len(prefix):].split(".")[1]) for k in converted if k.startswith(f"{prefix}layer.")),
                    default=-1)
    w = patch_weight
    return {"hidden_size": int(w.shape[0]), "in_chans": int(w.shape[1]), "tubelet_size": int(w.shape[2]),
            "patch_size": int(w.shape[3]), "num_hidden_layers": depth, "mlp_hidden": int(fc1.shape[0])}


def pick_preset(shape: dict[str, Any], shapes: dict[str, dict[str, Any]], preset: str = "auto", *,
                hint: str = "", filename: str = "", file_hints: dict[str, tuple[str, ...]] | None = None,
                what: str = "V-JEPA 2") -> str:
    """The preset whose tensor shape is ``shape`` (``shapes``: preset -> shape).

    ``preset`` other than ``auto`` must match. With ``auto``, when several presets share the shape
    (RoPE has no weights, so crop size and pre-training data do not show): ``hint`` (the config's
    ``backbone.preset``) if it is one of them, else the first whose ``file_hints`` substring occurs
    in the file name (``vitg-384.pt`` -> ``vitg384``, ``SurgMotion-vitg-xformer.pt`` ->
    ``surgmotion-vitg``), else the first without file hints (the plain release).
    """
    file_hints = file_hints or {}
    candidates = [n for n, s in shapes.items() if s == shape]
    desc = ", ".join(f"{k}={v}" for k, v in shape.items())
    if preset != "auto":
        if preset not in shapes:
            raise CheckpointError(f"preset {preset!r} is not one of auto, {', '.join(shapes)}")
        if preset not in candidates:
            want = ", ".join(f"{k}={v}" for k, v in shapes[preset].items())
            raise CheckpointError(f"the checkpoint's encoder ({desc}) does not have the shape of preset {preset} "
                                  f"({want}); matching presets: {', '.join(candidates) or 'none'}")
        return preset
    if not candidates:
        raise CheckpointError(f"the checkpoint's encoder ({desc}) matches no {what} preset ({', '.join(shapes)}); "
                              f"heads and crop size cannot be read from the tensors")
    if len(candidates) == 1:
        return candidates[0]
    if hint in candidates:
        return hint
    fname = Path(filename).name.lower()
    by_name = [n for n in candidates if any(h.lower() in fname for h in file_hints.get(n, ()))]
    plain = [n for n in candidates if not file_hints.get(n)]
    chosen = (by_name or plain or candidates)[0]
    log.info("%s: the tensors fit presets %s (they differ only in what the weights cannot show: crop size or "
             "pre-training data); using %s from %s. Pass the preset explicitly if that is wrong.",
             filename or "checkpoint", ", ".join(candidates), chosen, "the file name" if by_name else "the default")
    return chosen
