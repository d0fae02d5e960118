"""A Docker build context that wraps a run as a SAGES CVS Challenge 2024 algorithm container.

``export_container_context(RUN, DIR)`` writes::

    DIR/Dockerfile, DIR/entrypoint.sh      from scripts/sages_container/ (copied, not generated)
    DIR/run/checkpoints/best/              the run's best checkpoint; backbone.path rewritten to
                                           BACKBONE_IN_CONTAINER when the run used local weights
    DIR/run/thresholds.json                when the run has one: its calibration maps the probabilities
    DIR/backbone/                          those local weights (empty for a named random preset)

The weights fingerprint in the checkpoint is unchanged, so the container refuses other weights
exactly as ``cvsjepa predict`` does here. The image itself must be built where a Docker engine
runs (``docker build``; see docs/predict.md): nothing here builds or runs it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..rundir import BEST_DIR, THRESHOLDS_FILE, locate_checkpoint
from ..errors import ConfigError
from ..io import atomic_write_json

RUN_IN_CONTAINER = "/opt/cvsjepa/run"
BACKBONE_IN_CONTAINER = "/opt/cvsjepa/backbone"
RECIPE_FILES = ("Dockerfile", "entrypoint.sh")


def recipe_dir() -> Path:
    """``scripts/sages_container`` of the source tree this package was installed from."""
    return Path(__file__).resolve().parents[3] / "scripts" / "sages_container"


def export_container_context(run: str | Path, out: str | Path, recipe: str | Path | None = None) -> Path:
    """Fill the build context ``out`` (module docstring) from ``run``; returns ``out``."""
    run_dir, ckpt = locate_checkpoint(Path(run))
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; give a new folder for the build context")
    recipe = Path(recipe) if recipe is not None else recipe_dir()
    missing = [f for f in RECIPE_FILES if not (recipe / f).is_file()]
    if missing:
        raise ConfigError(f"the container recipe {recipe} lacks {', '.join(missing)}; run from a source checkout "
                          f"of cvsjepa or pass its scripts/sages_container folder")
    best = out / "run" / BEST_DIR
    shutil.copytree(ckpt, best)
    for f in RECIPE_FILES:
        shutil.copy2(recipe / f, out / f)
    if run_dir is not None and (run_dir / THRESHOLDS_FILE).is_file():
        shutil.copy2(run_dir / THRESHOLDS_FILE, out / "run" / THRESHOLDS_FILE)
    (out / "backbone").mkdir()
    meta = json.loads((best / "config.json").read_text())
    weights = meta["config"]["backbone"].get("path") or ""
    if weights:
        if not Path(weights).is_dir():
            raise ConfigError(f"the run's backbone weights {weights} are not here to copy into the container")
        shutil.copytree(weights, out / "backbone", dirs_exist_ok=True)
        meta["config"]["backbone"]["path"] = BACKBONE_IN_CONTAINER
        atomic_write_json(best / "config.json", meta)
    (out / "backbone" / "README.txt").write_text(
        f"backbone weights for {RUN_IN_CONTAINER}: "
        + (f"copied from {weights}\n" if weights else "none needed (the run used a named random preset)\n"))
    return out
