"""Thread oversubscription (issue 15, item 15): torch's intra-op threads come from the CPUs this process
may actually use (affinity mask, cgroup quota), one ``--threads`` knob works on every command, and a bad
value is a one-line error."""

from __future__ import annotations

import pytest
import torch

from cvsjepa import runtime
from cvsjepa.cli import build_parser
from faults.cli_helpers import one_line_error, run_cli


@pytest.fixture
def restore_threads(monkeypatch):
    """Each test may set torch's thread count and the CLI's ``--threads``: both are put back."""
    n = torch.get_num_threads()
    monkeypatch.setattr(runtime, "_cli_threads", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(n)


def _machine(monkeypatch, cores: int, quota: float | None) -> None:
    """Pretend the process may run on ``cores`` cores under a cgroup quota of ``quota`` CPUs."""
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(runtime, "_cgroup_cpu_limit", lambda: quota)


@pytest.mark.parametrize("cores, quota, workers, expected", [
    (64, None, 0, 64),   # a whole machine
    (64, 4.0, 0, 4),     # a container limited to 4 CPUs on a 64-core host: not 64 threads
    (64, 2.5, 0, 1),     # 2.5 CPUs rounds down to 2: a small machine, one thread
    (8, None, 3, 5),     # three loader workers keep a core each
    (8, None, 20, 1),    # more workers than cores: still one thread
    (2, None, 0, 1),     # the loaded 2-core machine of the issue (190 s vs 74 s)
    (16, 32.0, 0, 16),   # a quota above the affinity mask does not add cores
])
def test_threads_follow_the_usable_cores(monkeypatch, cores, quota, workers, expected):
    _machine(monkeypatch, cores, quota)
    assert runtime.auto_threads(workers) == expected


def test_cgroup_v2_quota_is_read(monkeypatch, tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    real_path = runtime.Path
    monkeypatch.setattr(runtime, "Path", lambda p: cpu_max if p == "/sys/fs/cgroup/cpu.max" else real_path(p))
    assert runtime._cgroup_cpu_limit() == 1.5
    cpu_max.write_text("max 100000\n")
    assert runtime._cgroup_cpu_limit() is None


def test_every_command_takes_threads():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert len(commands) >= 10
    for name, sub in commands.items():
        assert any("--threads" in a.option_strings for a in sub._actions), name


def test_threads_option_sets_torch_threads(restore_threads, monkeypatch, capsys):
    _machine(monkeypatch, 8, None)
    torch.set_num_threads(5)
    assert run_cli(capsys, "config-keys", "--threads", "1")[0] == 0
    assert torch.get_num_threads() == 1
    # --threads wins over train.threads and OMP_NUM_THREADS for the rest of the command
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runtime.configure_threads(requested=2) == 1 and torch.get_num_threads() == 1


def test_train_threads_and_the_environment_without_the_option(restore_threads, monkeypatch):
    _machine(monkeypatch, 8, None)
    assert runtime.configure_threads(requested=3) == 3 and torch.get_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert runtime.configure_threads() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert runtime.configure_threads(workers=2) == 6


@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_bad_threads_value_is_one_line(restore_threads, value, capsys):
    rc, _, err = run_cli(capsys, "config-keys", "--threads", value)
    assert rc == 2 and "--threads" in one_line_error(err)


def test_a_bad_train_threads_value_is_one_line(restore_threads, synth_root, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "train", "--dry-run", "backbone=tiny", "train.threads=-1")
    assert rc == 2 and "train.threads" in one_line_error(err)
