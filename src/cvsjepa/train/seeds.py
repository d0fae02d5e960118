"""``cvsjepa train CONFIG --seeds 0 1 2``: the same config once per seed, then the group summary.

Each seed is an ordinary run in ``GROUP/seed<k>/`` (layout in :mod:`cvsjepa.rundir`), trained by
the one training path (:func:`cvsjepa.train.classifier.train`) with ``seed=k``; then
:func:`cvsjepa.groups.write_group` writes ``group.json`` (mean and sd over the seeds, the ensemble
of their probabilities). Running the same command again skips finished seeds and resumes an
interrupted one from its last complete epoch, so a group is never half lost.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace
from pathlib import Path

from ..config import RunConfig
from ..errors import ConfigError
from ..groups import write_group
from ..rundir import GROUP_FILE, RESUME_MANIFEST, RunDir, seed_dir

log = logging.getLogger("cvsjepa")

_MEMBER = re.compile(r"^seed\d+$")


def group_dir(cfg: RunConfig) -> Path:
    """``cfg.out``, or ``runs/<name>-<timestamp>``; an existing folder must hold nothing but a group."""
    group = Path(cfg.out) if cfg.out else Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if group.exists():
        if not group.is_dir():
            raise ConfigError(f"out={group} is an existing file, not a directory; choose another out=...")
        stray = [p.name for p in group.iterdir()
                 if not (_MEMBER.match(p.name) or p.name == GROUP_FILE or p.name.startswith("predictions_"))]
        if stray:
            raise ConfigError(f"{group} already holds {stray[0]}, which is not part of a seed group; choose another "
                              f"out=... (finished work is never overwritten)")
    return group


def train_seeds(cfg: RunConfig, seeds: list[int], progress: bool = True) -> tuple[Path, dict]:
    """Train one run per seed into ``GROUP/seed<k>`` and summarise them; returns (group, group.json)."""
    from .classifier import train

    if cfg.resume:
        raise ConfigError("--seeds cannot be combined with --resume: run the same --seeds command again instead "
                          "(finished seeds are skipped, an interrupted one is resumed)")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {seeds}")
    group = group_dir(cfg)
    for i, k in enumerate(seeds):
        member = group / seed_dir(k)
        if RunDir(member).is_finished():
            log.info("seed %d (%d/%d): %s is finished, skipped", k, i + 1, len(seeds), member)
            continue
        resume = (member / RESUME_MANIFEST).is_file()
        log.info("seed %d (%d/%d): %s%s", k, i + 1, len(seeds), "resuming " if resume else "", member)
        train(replace(cfg, seed=k, out=str(member), resume=resume), progress=progress)
    return group, write_group(group, list(seeds), cfg.name, tuple(cfg.data.criteria))
