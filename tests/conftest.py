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
                            outside_crop=False, occlusions=False)
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


@pytest.fixture(autouse=True)
def keep_log_handlers():
    """cli.main() points the "cvsjepa" logger at the sys.stderr of the moment (capsys's, closed after
    the test): put the previous handlers back so later tests do not log into a closed file."""
    import logging

    logger = logging.getLogger("cvsjepa")
    saved = logger.handlers[:]
    yield
    logger.handlers[:] = saved


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


@pytest.fixture(scope="session")
def tiny_weights_dir(tmp_path_factory) -> Path:
    """The tiny random V-JEPA 2 backbone saved as a local Hugging Face directory (``backbone.path``)."""
    from cvsjepa.backbones import build_backbone
    from cvsjepa.config import BackboneConfig

    out = tmp_path_factory.mktemp("weights") / "vjepa2-tiny"
    build_backbone(BackboneConfig(preset="tiny")).model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def ecosystem_run(synth_root, tiny_weights_dir, tmp_path_factory):
    """A tiny run on a local backbone directory logged to every tracker, then evaluated (few resamples)
    and diagnosed (attention): what trackers, the card, export and the report read. Python-level
    connections other than local ones are refused and counted while it trains (``run.attempts``)."""
    import socket
    from types import SimpleNamespace

    from cvsjepa.cli import main
    from tiny_runs import tiny_train_args

    out = tmp_path_factory.mktemp("ecosystem") / "run"
    attempts: list[str] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address, *a, **k):
        if self.family == socket.AF_UNIX or (isinstance(address, tuple) and str(address[0]) in ("127.0.0.1", "::1",
                                                                                                "localhost")):
            return real_connect(self, address, *a, **k)
        attempts.append(f"connect {address}")
        raise OSError("network blocked by the test")

    def getaddrinfo(host, *a, **k):
        if str(host) in ("127.0.0.1", "::1", "localhost"):
            return real_getaddrinfo(host, *a, **k)
        attempts.append(f"resolve {host}")
        raise OSError("network blocked by the test")

    args = [a for a in tiny_train_args(synth_root, out) if a != "backbone=tiny"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        rc = main(["train", *args, f"backbone.path={tiny_weights_dir}", "train.loggers=[csv,tensorboard,mlflow,wandb]",
                   "--no-progress"])
    assert rc == 0
    assert main(["evaluate", str(out), "--bootstrap", "20", "--time-to-cvs", "keyframes", "--per-video",
                 "--no-progress", "--device", "cpu"]) == 0
    assert main(["diagnose", str(out), "attention", "--samples", "1", "--no-progress", "--device", "cpu"]) == 0
    return SimpleNamespace(path=out, weights=tiny_weights_dir, attempts=attempts)
