"""Fixtures of the fault suite: one finished tiny run per session (copied by each test that damages
it) and a private copy of the synthetic data (the cvsjepa logger is put back after every test by
``tests/conftest.py``)."""

from __future__ import annotations

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


