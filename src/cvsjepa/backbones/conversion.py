"""``cvsjepa convert``: a Meta-format checkpoint (V-JEPA 2, SurgMotion or V-JEPA 2.1) -> a directory
that ``backbone.path=DIR`` loads quickly and with exactly the tokens of the original file.

The family is detected from the tensors (``meta_format.family_of``: 2.1 has hierarchical
``norms_block`` and modality embeddings, V-JEPA 2 / SurgMotion one final ``norm``); the size from
their shapes; same-shaped presets from ``--preset`` or the file name. The directory holds
``config.json`` + ``model.safetensors`` (``save_pretrained``), ``README.md`` and
``cvsjepa_conversion.json`` (source, family, preset, encoder key, ignored keys, predictor note).

* V-JEPA 2 / SurgMotion: a ``transformers.VJEPA2Model`` directory (``model_type: vjepa2``), readable
  by transformers alone; its predictor is randomly initialised (never converted, never run).
* V-JEPA 2.1: a ``VJEPA21Model`` directory (``model_type: cvsjepa_vjepa21``): transformers has no 2.1
  classes and plain ``VJEPA2Model`` would compute other tokens (RoPE pairing and interpolation), so
  the format is cvsjepa's own and says so.

Atomic: written to a temporary sibling directory, re-loaded and compared tensor by tensor, then
renamed into place, so ``out`` is either absent/old or complete. ``overwrite`` replaces only an
empty folder or one an earlier conversion wrote (it holds ``cvsjepa_conversion.json``): a user's
folder is never deleted. The directory and its files get the umask's modes (``mkdtemp`` makes 0700,
safetensors writes 0600), so lab-mates can read the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import CheckpointError
from ..io import check_replaceable, staged_folder
from . import meta, meta21, vjepa2, vjepa21
from ._hf import CONVERSION_NOTE
from .meta_format import family_of, names, read_state

SOURCE_FORMATS = {"vjepa2": "Meta V-JEPA 2 / SurgMotion checkpoint", "vjepa21": "Meta V-JEPA 2.1 checkpoint"}


def detect_family(path: str | Path, key: str = "auto") -> str:
    """``vjepa2`` or ``vjepa21``, from the tensors of the checkpoint's encoder."""
    ms = read_state(path, key, prefer=("ema_encoder", "target_encoder", "encoder"), what="V-JEPA")
    return family_of(ms.state) or "vjepa2"  # neither shows: the V-JEPA 2 loader names what is missing


def _family(family: str) -> tuple[Callable[..., Any], Callable[[str], Any]]:
    """(load a .pt, load a converted directory) of a family."""
    if family == "vjepa21":
        return meta21.load_meta21_checkpoint, vjepa21.load_hf_model
    return meta.load_meta_checkpoint, vjepa2.load_hf_model


def convert_checkpoint(path: str | Path, out: str | Path, *, preset: str = "auto", key: str = "auto",
                       overwrite: bool = False) -> Path:
    """Write the checkpoint at ``path`` as a directory ``out``; returns ``out``. An existing ``out`` is
    refused unless ``overwrite``, and even then unless it is empty or an earlier conversion's.
    CheckpointError for anything the loaders refuse."""
    out = Path(out).expanduser()
    folder = dict(overwrite=overwrite, marker=CONVERSION_NOTE, command="cvsjepa convert", error=CheckpointError)
    check_replaceable(out, **folder)  # before loading a checkpoint of several GB
    family = detect_family(path, key)
    load_pt, load_dir = _family(family)
    model, info = load_pt(path, preset=preset, key=key)
    with staged_folder(out, **folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        _verify(tmp, model, load_dir, family)
        note = {"source": str(Path(path).expanduser().resolve()), "source_format": SOURCE_FORMATS[family],
                "family": family, **info, "converted_by": "cvsjepa convert"}
        (tmp / CONVERSION_NOTE).write_text(json.dumps(note, indent=2) + "\n")
        (tmp / "README.md").write_text(_readme(note))
    return out


def _token_state(model: Any, family: str) -> dict[str, torch.Tensor]:
    # V-JEPA 2's HF model carries a random predictor that never touches the tokens
    return model.encoder.state_dict() if family == "vjepa2" else model.state_dict()


def _verify(directory: Path, model: Any, load_dir: Callable[[str], Any], family: str) -> None:
    """Re-load the written directory and compare every token-relevant tensor (catches a truncated write)."""
    loaded = _token_state(load_dir(str(directory)), family)
    ref = _token_state(model, family)
    bad = sorted(set(ref) ^ set(loaded)) + [k for k in ref if k in loaded and not torch.equal(loaded[k], ref[k])]
    if bad:
        raise CheckpointError(f"the converted weights in {directory} differ from the checkpoint after re-loading: "
                              f"{names(bad)}")


def _readme(note: dict[str, Any]) -> str:
    ignored = ", ".join(note["ignored_keys"]) or "none"
    if note["family"] == "vjepa21":
        what = (f"V-JEPA 2.1 {note['preset']} encoder", "`cvsjepa_vjepa21` (cvsjepa's `VJEPA21Model`: "
                "transformers' V-JEPA 2 encoder with 2.1's RoPE pairing and interpolation; plain "
                "`VJEPA2Model` would compute other tokens)", f"\n- modality embedding: {note['modality_embedding']}")
        load = "Load with `backbone.name=vjepa21 backbone.path=<this directory>`"
    else:
        what = (f"V-JEPA 2 {note['preset']} encoder", "`vjepa2` (`transformers.VJEPA2Model`)", "")
        load = "Load with `backbone.path=<this directory>` (or `VJEPA2Model.from_pretrained`)"
    return (f"# {what[0]}, converted by `cvsjepa convert`\n\n"
            f"- source: `{note['source']}` ({note['source_format']}), encoder taken from "
            f"`{note['checkpoint_key']}`\n"
            f"- format: {what[1]}; fused `qkv` split into `query`/`key`/`value`{what[2]}\n"
            f"- ignored keys: {ignored}\n"
            f"- predictor: {note['predictor']}\n\n"
            f"{load}; the encoder tokens equal those of the original checkpoint.\n")
