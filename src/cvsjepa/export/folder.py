"""The folder an export writes: its marker file, the parity tolerance, the files every export carries
besides the model (thresholds, calibration), and the staging that makes an export atomic and never
replaces a folder it did not write."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ..errors import ConfigError
from ..io import atomic_write_json, staged_folder
from ..rundir import CALIBRATION_FILE, THRESHOLDS_FILE, RunDir, predictions_file

log = logging.getLogger("cvsjepa")

EXPORT_NOTE = "cvsjepa_export.json"  # marks a folder an export wrote (and so may replace)
PREPROCESSING_FILE = "preprocessing.json"
PARITY_TOLERANCE = 1e-4  # max |export - torch| on the same input, in logits and probabilities


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


def staging(out: Path, overwrite: bool):
    """A temporary sibling of ``out`` to write into; moved into place when the block succeeds,
    removed when it fails. ``out`` may exist only with ``overwrite`` and only as an empty folder or an
    earlier export (``io.staged_folder``)."""
    return staged_folder(out, overwrite=overwrite, marker=EXPORT_NOTE, command="cvsjepa export", error=ConfigError)


def read_note(folder: str | Path) -> dict:
    return json.loads((Path(folder) / EXPORT_NOTE).read_text())
