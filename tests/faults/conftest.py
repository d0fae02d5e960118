"""Fixtures of the fault suite: one finished tiny run per session (copied by each test that damages
it), a private copy of the synthetic data, and the cvsjepa logger put back after ``cli.main``."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from tiny_runs import train_tiny_run


@pytest.fixture(scope="session")
def trained_run(synth_root, tmp_path_factory) -> Path:
    """A finished one-epoch tiny run: never modified (use ``run_copy`` to damage one)."""
    return train_tiny_run(synth_root, tmp_path_factory.mktemp("faults") / "trained", frames=4, epochs=1)


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    return out


@pytest.fixture
def data_copy(synth_root, tmp_path) -> Path:
    """A private copy of the synthetic dataset to damage (links kept as links)."""
    root = tmp_path / "data"
    shutil.copytree(synth_root, root, symlinks=True)
    return root


@pytest.fixture(autouse=True)
def keep_log_handlers():
    # cli.main() points the "cvsjepa" logger at the sys.stderr of the moment (capsys's, closed after
    # the test): put the previous handlers back so later tests do not log into a closed file.
    logger = logging.getLogger("cvsjepa")
    saved = logger.handlers[:]
    yield
    logger.handlers[:] = saved

