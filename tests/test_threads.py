"""CPU threads chosen from the cores this process may use (runtime.py), and who wins when several ask."""

from __future__ import annotations

import os

import pytest
import torch

from cvsjepa import runtime
from cvsjepa.errors import ConfigError


def test_auto_threads_leave_a_core_per_worker_and_use_one_on_small_machines():
    assert [runtime.auto_threads(0, cpus=c) for c in (1, 2, 3, 8, 16)] == [1, 1, 3, 8, 16]
    assert runtime.auto_threads(3, cpus=8) == 5  # each DataLoader worker runs one thread of its own
    assert runtime.auto_threads(12, cpus=8) == 1


def test_usable_cpus_follow_the_affinity_mask_and_the_cgroup_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(runtime, "_cgroup_cpu_limit", lambda: None)
    assert runtime.usable_cpus() == 16
    monkeypatch.setattr(runtime, "_cgroup_cpu_limit", lambda: 4.5)  # a quota of 4.5 CPUs: 4 whole cores
    assert runtime.usable_cpus() == 4
    monkeypatch.setattr(runtime, "_cgroup_cpu_limit", lambda: 0.5)
    assert runtime.usable_cpus() == 1


def test_cli_then_config_then_environment_then_the_cores(monkeypatch):
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert runtime.configure_threads(0, workers=2) == 6 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert runtime.configure_threads(0) == 3 == torch.get_num_threads()
        assert runtime.configure_threads(2) == 2  # train.threads wins over the environment
        runtime.set_cli_threads(4)
        assert runtime.configure_threads(2) == 4 == torch.get_num_threads()  # --threads wins over all
        with pytest.raises(ConfigError, match="train.threads"):
            runtime.configure_threads(-1)
        with pytest.raises(ConfigError, match="--threads"):
            runtime.set_cli_threads(0)
    finally:
        runtime.set_cli_threads(None)
        torch.set_num_threads(1)  # the test session's setting (conftest.py)
