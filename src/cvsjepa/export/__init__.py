"""`cvsjepa export RUN --format onnx|safetensors-bundle --out DIR`: a trained run in a form that
travels without its run directory, training data or (for the bundle) the backbone folder.

    safetensors-bundle   a checkpoint directory that ``CVSModel.from_run(DIR)`` and
                         ``cvsjepa predict VIDEO --run DIR`` load with no other path (bundle.py)
    onnx                 ``model.onnx`` (video -> logits, probabilities) at the run's frame count and
                         crop, and ``head.onnx`` (tokens -> logits), checked with onnxruntime (onnx_export.py)

Both hold ``README.md`` (the model card), ``thresholds.json`` and ``calibration.json`` (what
``predict`` would use), ``preprocessing.json`` and ``cvsjepa_export.json`` (:data:`EXPORT_NOTE`:
source run, format, the parity checks). An export is written to a temporary sibling folder, checked,
then moved into place; it never replaces a folder it did not write (``--overwrite`` replaces only an
empty folder or an earlier export, the rule of ``cvsjepa convert --overwrite``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from ..card import preprocessing, write_card
from ..checkpoint import load_classifier
from ..config import ExportFormat
from ..errors import CheckpointError, ConfigError
from ..io import atomic_write_json
from ..rundir import CALIBRATION_FILE, THRESHOLDS_FILE, locate_checkpoint
from ..version import __version__
from .folder import EXPORT_NOTE, PARITY_TOLERANCE, PREPROCESSING_FILE, copy_operating, read_note, staging

__all__ = ["EXPORT_NOTE", "PARITY_TOLERANCE", "ExportResult", "export_run", "read_note"]

log = logging.getLogger("cvsjepa")


@dataclass
class ExportResult:
    out: Path
    note: dict


def export_run(run: str | Path, fmt: str, out: str | Path, overwrite: bool = False,
               backbone_path: str | Path | None = None) -> ExportResult:
    """Export the best checkpoint of ``run`` (a run or checkpoint directory) as ``fmt`` into ``out``."""
    if fmt not in get_args(ExportFormat):
        raise ConfigError(f"--format must be one of {', '.join(get_args(ExportFormat))}, got {fmt!r}")
    run_dir, ckpt = locate_checkpoint(Path(run))
    model, cfg, meta = load_classifier(ckpt, "cpu", backbone_path=backbone_path)
    if model.backbone is None:
        raise CheckpointError(f"{ckpt} has no backbone to export")
    with staging(Path(out), overwrite) as tmp:
        if fmt == "safetensors-bundle":
            from .bundle import write_bundle

            checks = write_bundle(model, cfg, meta, ckpt, tmp)
        else:
            from .onnx_export import write_onnx

            checks = write_onnx(model, cfg, tmp)
        copy_operating(run_dir, ckpt, tmp)
        atomic_write_json(tmp / PREPROCESSING_FILE, preprocessing(model.backbone.crop_size, cfg.data.frames,
                                                                  cfg.data.stride))
        note = {"format": fmt, "source": str(Path(run).resolve()), "checkpoint_epoch": meta.get("epoch"),
                "backbone_fingerprint": meta.get("backbone_fingerprint"), "exported_by": f"cvsjepa {__version__}",
                **checks}
        write_card(run_dir, ckpt_dir=tmp if fmt == "safetensors-bundle" else ckpt, target=tmp, note=_card_note(note))
        atomic_write_json(tmp / EXPORT_NOTE, note)
    return ExportResult(Path(out), note)


def _card_note(note: dict) -> str:
    if note["format"] == "safetensors-bundle":
        return (f"**Exported bundle** of `{note['source']}` (cvsjepa export): the backbone weights are in `backbone/`"
                f"{' with the LoRA adapter merged into them' if note.get('lora_merged') else ''}; load with "
                f"`CVSModel.from_run(<this folder>)` or `cvsjepa predict VIDEO --run <this folder>`.")
    return (f"**ONNX export** of `{note['source']}` (cvsjepa export, opset {note['opset']}, {note['exporter']}): "
            f"`{note['model']['file']}` takes preprocessed video `[B, {note['model']['input_shape'][1]}, 3, "
            f"{note['model']['input_shape'][3]}, {note['model']['input_shape'][4]}]` (see `{PREPROCESSING_FILE}`) "
            f"and returns logits and raw probabilities; apply `{CALIBRATION_FILE}` and `{THRESHOLDS_FILE}` as "
            f"`predict` does. `{note['head']['file']}` takes tokens `[B, N, D]`.")
