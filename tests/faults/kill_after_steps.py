"""Fault injection from the test side: run ``cvsjepa ARGS...`` in this process and SIGKILL it at a
chosen point. Nothing in ``src/`` knows about it: it wraps the training loop's functions.

    python kill_after_steps.py N train ...        right after the N-th optimizer step
    python kill_after_steps.py save:E train ...   at the end of epoch E, after the best checkpoint
                                                  and before the resume state is saved
"""

from __future__ import annotations

import os
import signal
import sys

import cvsjepa.train.loop as loop
from cvsjepa.cli import main
from cvsjepa.rundir import RunDir


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_after_steps(n: int) -> None:
    real, count = loop.optimizer_step, [0]

    def step(*args, **kwargs):
        real(*args, **kwargs)
        count[0] += 1
        if count[0] >= n:
            _die()

    loop.optimizer_step = step


def _kill_before_save(epoch: int) -> None:
    real = RunDir.save_resume

    def save(self, e, state):
        if e == epoch:
            _die()
        return real(self, e, state)

    RunDir.save_resume = save


where = sys.argv[1]
if where.startswith("save:"):
    _kill_before_save(int(where[5:]))
else:
    _kill_after_steps(int(where))
sys.exit(main(sys.argv[2:]))
