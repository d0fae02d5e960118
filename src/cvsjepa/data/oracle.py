"""``oracle.json``: what `cvsjepa synth` knows and no model can: the AP of the true label posterior
per split (``{split: {"ap": [3], "map", "prevalence", "note"}}``), the best mAP a model can expect.
Training and the demo report it next to their own mAP."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("cvsjepa")

ORACLE_FILE = "oracle.json"


def read_oracle(root: str | Path) -> dict | None:
    """The dataset's oracle, or None for data that has none (every real dataset)."""
    path = Path(root) / ORACLE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("could not read %s; oracle mAP not reported", path)
        return None
