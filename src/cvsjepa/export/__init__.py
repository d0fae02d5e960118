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

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from ..card import preprocessing, write_card
from ..checkpoint import load_classifier
from ..config import ExportFormat
from ..errors import CheckpointError, ConfigError
from ..io import apply_umask, atomic_write_json
from ..rundir import CALIBRATION_FILE, THRESHOLDS_FILE, RunDir, locate_checkpoint, predictions_file
from ..version import __version__

log = logging.getLogger("cvsjepa")

EXPORT_NOTE = "cvsjepa_export.json"  # marks a folder an export wrote (and so may replace)
PREPROCESSING_FILE = "preprocessing.json"
PARITY_TOLERANCE = 1e-4  # max |export - torch| on the same input, in logits and probabilities


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


def copy_operating(run_dir: RunDir | None, ckpt: Path, out: Path) -> None:
    """The thresholds document and calibration ``predict`` would use for this checkpoint (run's
    ``thresholds.json``, the checkpoint's cached copy, or computed from ``predictions_val.csv``)."""
    places = ([run_dir.path] if run_dir is not None else []) + [ckpt]
    for name in (THRESHOLDS_FILE, CALIBRATION_FILE):
        src = next((p / name for p in places if (p / name).is_file()), None)
        if src is not None:
            shutil.copyfile(src, out / name)
    if not (out / THRESHOLDS_FILE).is_file() and run_dir is not None and (run_dir / predictions_file("val")).is_file():
        from ..predict.operating import document_from_predictions

        doc = document_from_predictions(run_dir)
        atomic_write_json(out / THRESHOLDS_FILE, doc)
        atomic_write_json(out / CALIBRATION_FILE, doc["calibration"])
    if not (out / THRESHOLDS_FILE).is_file():
        log.warning("%s has no thresholds (run `cvsjepa evaluate` on it first): the export's predictions will use "
                    "0.5 for every criterion", run_dir or ckpt)


def _replaceable(out: Path) -> bool:
    return out.is_dir() and (not any(out.iterdir()) or (out / EXPORT_NOTE).is_file())


@contextmanager
def staging(out: Path, overwrite: bool):
    """A temporary sibling of ``out`` to write into; moved into place when the block succeeds,
    removed when it fails. ``out`` may exist only with ``overwrite`` and only as an empty folder or an
    earlier export."""
    out = out.expanduser()
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another --out or pass --overwrite")
    if out.exists() and not _replaceable(out):
        raise ConfigError(f"{out} was not written by `cvsjepa export` (it has no {EXPORT_NOTE}), so --overwrite "
                          f"will not replace it; choose another --out or remove it yourself")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    except PermissionError as e:
        raise ConfigError(f"cannot write {out}: permission denied; choose another --out") from e
    try:
        yield tmp
        apply_umask(tmp)  # mkdtemp makes 0700 and safetensors writes 0600: lab-mates must read an export
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


def read_note(folder: str | Path) -> dict:
    return json.loads((Path(folder) / EXPORT_NOTE).read_text())
