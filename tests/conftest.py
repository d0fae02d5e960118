"""Shared fixtures: one small synthetic dataset per test session (written once, read by many)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helper modules such as fixtures_endoscapes


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    from cvsjepa.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth") / "endoscapes_synth"
    write_synthetic_dataset(root, seed=0, videos=(4, 2, 2), min_seconds=30, max_seconds=45, progress=False)
    return root


@pytest.fixture
def tiny_overrides(synth_root, tmp_path) -> list[str]:
    """A fast training config on the session's synthetic data."""
    return ["backbone=tiny", f"data.root={synth_root}", f"out={tmp_path / 'run'}", "data.frames=4",
            "head.num_heads=4", "head.mlp_hidden=32", "train.batch_size=8", "train.epochs=2",
            "train.lr=1e-3", "train.patience=0"]
