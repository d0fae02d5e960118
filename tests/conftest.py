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
    # the anatomy inside the centre crop, as before the framing option: tolerances of tests that compare
    # two ways of training (one process vs two) were set on this data; framing has tests of its own
    write_synthetic_dataset(root, seed=0, videos=(4, 2, 2), min_seconds=30, max_seconds=45, progress=False,
                            outside_crop=False)
    return root


@pytest.fixture(scope="session")
def sages_root(tmp_path_factory) -> Path:
    """A small synthetic SAGES CVS Challenge 2024 copy: 3 train + 2 test videos of 16-24 s, 30 fps mp4s."""
    from cvsjepa.data.sages_synth import write_sages_dataset

    root = tmp_path_factory.mktemp("synth") / "sages_synth"
    write_sages_dataset(root, seed=0, videos=(3, 2), min_seconds=16, max_seconds=24, width=128, progress=False)
    return root


@pytest.fixture
def tiny_overrides(synth_root, tmp_path) -> list[str]:
    """A fast training config on the session's synthetic data."""
    from tiny_runs import tiny_train_args

    return tiny_train_args(synth_root, tmp_path / "run")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test runs one intra-op thread, and so does every process a test starts
    (OMP_NUM_THREADS=1 is inherited): the models are tiny, and a second thread only contends with
    the other jobs of a shared machine (measured: the demo 7x slower with 2 threads on a loaded
    2-core machine, docs/benchmarks.md)."""
    import os

    import torch

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: "1" for k in saved})
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
