"""Run-level plumbing every command shares: the device, seeds, CPU threads, and what produced a run.

Below ``train/``, ``evaluate/``, ``features/``, ``predict/`` and ``diagnose/``: each of them imports
this module, none of them imports another for it.

Threads: PyTorch starts one intra-op thread per core it sees, in every process. On a machine that
other jobs share, or with DataLoader workers decoding beside the main process, those threads
outnumber the cores and spin against each other (measured: the demo 7x slower with 2 threads than
with 1 on a loaded 2-core machine; ``benchmarks/threads.py``). :func:`configure_threads` picks the
count from the CPUs this process may actually use (affinity mask and cgroup quota), so that the
main process and its workers never ask for more runnable threads than there are cores.
"""

from __future__ import annotations

import logging
import math
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError

log = logging.getLogger("cvsjepa")

# Below this many usable cores the main process runs one intra-op thread: the models cvsjepa runs on
# such machines are small, and a second thread only contends with data loading and other jobs.
SMALL_MACHINE_CPUS = 2
_cli_threads: int | None = None  # set by `cvsjepa --threads N` / `cvsjepa <cmd> --threads N`; wins over configs


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda[:N]`` without CUDA is a ConfigError."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for (train.device / --device), but CUDA is not available on "
                          f"this machine; use cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from e


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (CPU and every CUDA device) generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------- threads
def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max``, v1 ``cfs_quota_us/cfs_period_us``), or None."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup CPU quota (rounded down, >= 1)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.floor(limit)))
    return max(1, n)


def auto_threads(workers: int = 0, cpus: int | None = None) -> int:
    """Intra-op threads for the main process when nobody asked for a number: one per usable core
    left after the DataLoader workers (each runs one thread: torch sets it in every worker), and
    one on machines of :data:`SMALL_MACHINE_CPUS` cores or fewer."""
    cpus = usable_cpus() if cpus is None else cpus
    if cpus <= SMALL_MACHINE_CPUS:
        return 1
    return max(1, cpus - max(0, workers))


def set_cli_threads(n: int | None) -> None:
    """The command line's ``--threads``: it wins over ``train.threads`` and ``OMP_NUM_THREADS``."""
    global _cli_threads
    if n is not None and n < 1:
        raise ConfigError(f"--threads must be >= 1, got {n}")
    _cli_threads = n
    if n is not None:
        configure_threads(n)


def configure_threads(requested: int = 0, workers: int = 0) -> int:
    """Set torch's intra-op thread count and return it. First found wins: ``--threads``, then
    ``requested`` (``train.threads``; 0 = not set), then ``OMP_NUM_THREADS``, then :func:`auto_threads`."""
    if requested < 0:
        raise ConfigError(f"train.threads must be >= 0 (0 = chosen from the usable cores), got {requested}")
    env = os.environ.get("OMP_NUM_THREADS", "")
    if _cli_threads:
        n, why = _cli_threads, "--threads"
    elif requested:
        n, why = requested, "train.threads"
    elif env.isdigit() and int(env) > 0:
        n, why = int(env), "OMP_NUM_THREADS"
    else:
        n, why = auto_threads(workers), f"{usable_cpus()} usable core(s), {workers} loader worker(s)"
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.debug("torch intra-op threads: %d (%s)", n, why)
    return n


# ---------------------------------------------------------------------------------------- provenance
def git_hash() -> str | None:
    """Short commit of the cvsjepa checkout this code runs from, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
