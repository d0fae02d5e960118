"""Which videos are in which split, when the dataset does not say it all: seeded by-video draws and the
split file that makes a run reproducible.

SAGES ships train and test only. The val split is drawn from the train videos: ``round(val_fraction
* n)`` of them (at least 1, leaving at least 1), chosen by a permutation of the sorted names with
``numpy.random.default_rng([seed, salt])``. A copy without any test split gets its test videos the
same way (same fraction, another salt), before val is drawn. The resulting assignment is written
into the run (``splits.json``) and read back by ``evaluate``/``diagnose``/a resumed run, so the
split is never redrawn for a run that has one.

Split file (``data.splits_file``; also what ``train`` and ``extract`` write)::

    {"format": "sages2024", "splits": {"train": ["vid001", ...], "val": [...], "test": [...]},
     "drawn": {"val": "12 of the 70 videos of train (val_fraction 0.15, seed 0)"}, ...}
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

log = logging.getLogger("cvsjepa")

_SALT = {"test": 2, "val": 1}


@dataclass
class SplitPlan:
    """Video names per split name, and how each drawn split was drawn."""

    splits: dict[str, list[str]]
    drawn: dict[str, str] = field(default_factory=dict)
    source: str = "official"  # "official" (+ draws) or the split file it was read from

    def owner(self) -> dict[str, str]:
        return {v: s for s, vids in self.splits.items() for v in vids}

    def to_dict(self, fmt: str, root: str | os.PathLike) -> dict:
        return {"format": fmt, "root": str(root), "source": self.source, "drawn": self.drawn,
                "splits": {s: list(v) for s, v in self.splits.items()}}


def draw_videos(videos: list[str], fraction: float, seed: int, salt: int) -> list[str]:
    """``round(fraction * n)`` names (at least 1, at most n - 1) drawn without replacement, sorted."""
    names = sorted(videos)
    if len(names) < 2:
        raise DataError(f"cannot draw a split from {len(names)} video(s): need at least 2")
    k = min(len(names) - 1, max(1, round(fraction * len(names))))
    perm = np.random.default_rng([int(seed), salt]).permutation(len(names))
    return sorted(names[i] for i in perm[:k])


def plan_splits(official: dict[str, list[str]], roles: dict[str, str], val_fraction: float, seed: int,
                where: str) -> SplitPlan:
    """The official splits, plus each role's split that is missing, drawn from the train split.

    ``roles``: role (train/val/test) -> split name in use. ``where``: names the dataset in messages.
    """
    splits = {s: sorted(v) for s, v in official.items()}
    plan = SplitPlan(splits)
    train = roles.get("train")
    missing = [r for r in ("test", "val") if r in roles and roles[r] not in splits]
    if not missing:
        return plan
    if train not in splits:
        raise DataError(f"{where} has no split '{train}' (data.train_split) to draw {', '.join(missing)} from; "
                        f"it has {', '.join(sorted(splits)) or 'none'}")
    if not 0 < val_fraction < 1:
        raise DataError(f"{where} has no '{roles[missing[0]]}' split, so it is drawn from '{train}' with "
                        f"data.val_fraction, which must be in (0, 1); got {val_fraction}")
    for role in missing:
        name, pool = roles[role], splits[train]
        drawn = draw_videos(pool, val_fraction, seed, _SALT[role])
        splits[train] = sorted(set(pool) - set(drawn))
        splits[name] = drawn
        plan.drawn[name] = (f"{len(drawn)} of the {len(pool)} videos of {train} (val_fraction {val_fraction}, "
                            f"seed {seed})")
        if role == "test":
            log.warning("%s has no official test split: drew %s; its figures are not the challenge's test figures",
                        where, plan.drawn[name])
    return plan


def read_split_file(path: str | os.PathLike) -> SplitPlan:
    """A split file (module docstring); DataError naming it when it is unreadable or a video is
    listed twice."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"split file {path} (data.splits_file) does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read split file {path}: {e}") from e
    splits = data.get("splits") if isinstance(data, dict) else None
    ok = isinstance(splits, dict) and all(isinstance(v, list) and all(isinstance(x, (str, int)) for x in v)
                                          for v in splits.values())
    if not ok:
        raise DataError(f"{path} is not a split file: expected {{\"splits\": {{\"train\": [video names], ...}}}}")
    plan = SplitPlan({s: sorted(str(x) for x in v) for s, v in splits.items()}, dict(data.get("drawn") or {}),
                     str(path))
    seen: dict[str, str] = {}
    for s, vids in plan.splits.items():
        for v in vids:
            if seen.setdefault(v, s) != s:
                raise DataError(f"{path}: video {v!r} is in split '{seen[v]}' and in split '{s}'; splits are by video")
    return plan
