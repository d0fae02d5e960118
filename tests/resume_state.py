"""Tests that tamper with a run's resume state (to check how resume reacts) go through these, so
they follow the run directory's layout (cvsjepa.rundir) instead of spelling file names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from cvsjepa.io import sha256_file
from cvsjepa.rundir import RESUME_MANIFEST


def resume_path(run: Path) -> Path:
    """The resume file the manifest names."""
    return Path(run) / json.loads((Path(run) / RESUME_MANIFEST).read_text())["file"]


def rehash(run: Path) -> None:
    """Record the resume file's current sha256 in the manifest (as if the tool had written it)."""
    manifest = json.loads((Path(run) / RESUME_MANIFEST).read_text())
    manifest["sha256"] = sha256_file(resume_path(run))
    (Path(run) / RESUME_MANIFEST).write_text(json.dumps(manifest))


def edit_resume_state(run: Path, edit: Callable[[dict], None]) -> None:
    """Load the resume state, let ``edit`` change it in place, save it back with a matching hash."""
    path = resume_path(run)
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    rehash(run)
