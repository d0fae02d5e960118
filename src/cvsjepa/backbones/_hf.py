"""Local Hugging Face directories, shared by every family: validate before transformers sees the
directory, load float32 in eval mode, and refuse partial loads.

transformers fills weights missing from a checkpoint with a random init and only logs it: a silent
partial load looks like a working, merely bad, model. So every missing weight that produces the
tokens is fatal here, named in the message.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

import torch

from ..errors import CheckpointError

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
CONVERSION_NOTE = "cvsjepa_conversion.json"  # written by `cvsjepa convert` next to config.json
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


def expected_dir(example: str) -> str:
    return f"a local Hugging Face directory with config.json and model.safetensors (e.g. a snapshot of {example})"


def check_hf_dir(path: str, model_types: Iterable[str], example: str, pt_hint: str = "") -> Path:
    """Validate a weights directory; CheckpointError says what is wrong and what was expected.

    ``model_types``: the ``config.json`` ``model_type`` values this family reads. ``pt_hint``:
    what to do with a PyTorch pickle instead (e.g. "use cvsjepa convert"), "" = not supported.
    """
    model_types = tuple(model_types)
    expected = expected_dir(example)
    p = Path(path).expanduser()
    if p.suffix.lower() in PICKLE_SUFFIXES:
        missing = "" if p.exists() else " (and the file does not exist)"
        raise CheckpointError(
            f"backbone.path={path} is a PyTorch pickle file{missing}; this backbone family reads Hugging Face "
            f"directories only{pt_hint}. Point backbone.path at {expected}.")
    if not p.exists():
        raise CheckpointError(f"backbone.path={path} does not exist; expected {expected}")
    if not p.is_dir():
        raise CheckpointError(f"backbone.path={path} is a file, not a directory; expected {expected}")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"no config.json in backbone.path={path}; expected {expected}")
    try:
        raw = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_file} is not readable JSON ({e}); re-download or re-save the model") from e
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in model_types:
        want = " or ".join(repr(m) for m in model_types)
        raise CheckpointError(f"{cfg_file} has model_type={model_type!r}, expected {want}: backbone.path must "
                              f"hold {expected} (or set backbone.name to the family this model belongs to)")
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        others = sorted(f.name for f in p.iterdir() if f.suffix in (".bin", ".pt", ".pth"))
        hint = (f" (found {', '.join(others)}: cvsjepa reads safetensors only; re-save with "
                f"save_pretrained(..., safe_serialization=True))") if others else ""
        raise CheckpointError(f"no model.safetensors (or model.safetensors.index.json) in backbone.path={path}"
                              f"{hint}; expected {expected}")
    if not (p / WEIGHT_FILES[0]).is_file():
        check_shard_index(p / WEIGHT_FILES[1])
    return p


def read_conversion_note(path: str | Path) -> dict[str, Any]:
    """What ``cvsjepa convert`` recorded in a directory (source, family, preset, ...); {} if none."""
    try:
        note = json.loads((Path(path) / CONVERSION_NOTE).read_text())
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def check_shard_index(index: Path) -> None:
    """A sharded checkpoint's index may name only ``.safetensors`` shards that exist: transformers
    would follow an entry naming a ``.bin`` into ``torch.load`` (an unpickler), so it is refused here,
    before transformers sees the directory."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{index} is not a readable shard index ({e}); re-download or re-save the model") from e
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no weight_map; re-download or re-save the model")
    shards = sorted(set(map(str, weight_map.values())))
    unsafe = [s for s in shards if not s.endswith(".safetensors")]
    if unsafe:
        raise CheckpointError(f"{index} names {', '.join(unsafe[:3])}: cvsjepa reads safetensors only and never "
                              f"unpickles a weights file; re-save the model with save_pretrained(..., "
                              f"safe_serialization=True)")
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise CheckpointError(f"{index} names shard(s) {', '.join(missing[:3])} that are missing from "
                              f"{index.parent}; the download is incomplete")


def read_model_type(path: Path) -> str:
    return json.loads((Path(path) / "config.json").read_text()).get("model_type", "")


def load_pretrained(model_cls: Any, path: Path, *, attn_implementation: str, family: str,
                    required: Iterable[str] = ("",), optional_missing: Iterable[str] = ()) -> Any:
    """``model_cls.from_pretrained(path)`` float32 in eval mode; CheckpointError on any problem.

    ``required``: name prefixes whose missing weights are fatal (``""`` = all). ``optional_missing``:
    exact names that may be missing without harm (e.g. DINOv2's ``embeddings.mask_token``, used only
    in pre-training); they are logged.
    """
    try:
        model, info = model_cls.from_pretrained(
            str(path), local_files_only=True, attn_implementation=attn_implementation,
            dtype=torch.float32,  # transformers 5 defaults to the file's dtype; fp32 master weights, autocast for speed
            output_loading_info=True)
    except Exception as e:  # corrupt file, shape mismatch between config.json and weights, ...
        why = str(e).strip()
        if "weights_only" in why:  # never pass on torch's advice to unpickle with weights_only=False
            why = "a weights file is a pickle, which cvsjepa never unpickles (safetensors only)"
        raise CheckpointError(f"could not load {family} weights from backbone.path={path}: {type(e).__name__}: "
                              f"{why[:500]} (do config.json and the safetensors belong together?)") from e
    all_missing = set(info.get("missing_keys", ()))
    optional = set(optional_missing)
    required = tuple(required)
    missing = sorted(k for k in all_missing - optional if k.startswith(required))
    if missing:
        raise CheckpointError(f"backbone.path={path}: {len(missing)} encoder weights are missing from the "
                              f"checkpoint, e.g. {', '.join(missing[:5])}; the directory is incomplete or not a "
                              f"{family} encoder")
    tolerated = sorted(all_missing - set(missing))
    if tolerated:
        log.info("%s: %d weights not in the checkpoint, randomly initialised and never used for the tokens: %s",
                 path, len(tolerated), ", ".join(tolerated[:3]) + (" ..." if len(tolerated) > 3 else ""))
    unexpected = sorted(info.get("unexpected_keys", ()))
    if unexpected:
        log.info("%s: ignored %d weights that are not part of %s, e.g. %s", path, len(unexpected),
                 model_cls.__name__, ", ".join(unexpected[:3]))
    return model.eval()


def seeded_build(build: Any, seed: int) -> Any:
    """``build()`` under a fixed seed on the CPU, without touching the caller's RNG: the same preset
    is the same random model on every machine and device (tests and the feature store need that)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
