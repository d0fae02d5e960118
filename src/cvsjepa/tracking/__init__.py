"""Experiment trackers: the run's config, every ``metrics.csv`` column per epoch, the final metrics
and the plots, also sent to TensorBoard, MLflow or Weights & Biases (``train.loggers``).

    tracker = open_tracker(cfg, run_dir, resume_step)   # a Composite of the chosen ones, or the null Tracker
    tracker.log_epoch(epoch, {"val_map": ..., "head3/val_map": ...})    # the training loop, once per epoch
    tracker.log_summary({"test_map": ..., ...}); tracker.log_figure(png)  # train/finish.py
    tracker.close(failed=False)

``csv`` is the run directory's own ``metrics.csv`` (``rundir.py`` writes it whatever the list says), so
``[csv]`` (the default) opens nothing. Every tracker writes into the run directory and never reaches
the network: TensorBoard event files in ``RUN/tensorboard/``, an MLflow SQLite store in ``RUN/mlflow/``
(or the store ``train.mlflow_uri`` names), W&B in offline mode in ``RUN/wandb/`` (upload later with
``wandb sync``). A missing package is one line naming the extra to install. The trackers' run ids go
to ``RUN/trackers.json`` (``rundir.TRACKERS_FILE``), so ``--resume`` continues the same tracker runs.

A sweep is one tracker run: each head's columns under ``head<i>/`` (its lr and weight decay are in the
logged config's sweep grid and in ``sweep.csv``), then the winner's final metrics unprefixed.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

from ..config import RunConfig, TrackerName, to_dict
from ..errors import ConfigError
from ..io import atomic_write_json, read_json_object
from ..rundir import TRACKERS_FILE

log = logging.getLogger("cvsjepa")

# name -> (module, class, the packages it imports): the extra of the same name installs them
TRACKERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "tensorboard": ("cvsjepa.tracking.tensorboard_tracker", "TensorBoardTracker", ("tensorboard",)),
    "mlflow": ("cvsjepa.tracking.mlflow_tracker", "MLflowTracker", ("mlflow", "sqlalchemy", "alembic")),
    "wandb": ("cvsjepa.tracking.wandb_tracker", "WandbTracker", ("wandb",)),
}
BUILT_IN = "csv"  # metrics.csv, owned by rundir.py


class Tracker:
    """The interface, and the null tracker (``[csv]``: nothing beyond the run directory)."""

    name = "csv"

    def start(self, config: dict[str, Any], previous: dict | None, resume_step: int) -> dict:
        """Open (``previous``: this tracker's record from an earlier process of the run, to continue it;
        ``resume_step``: the epochs already done) and log the flattened resolved ``config`` (``{"train.lr":
        ...}``). Returns the record to keep in ``trackers.json`` (its run id, where it writes)."""
        return {}

    def log_epoch(self, step: int, metrics: dict[str, Any]) -> None:
        """One epoch's numbers (``None`` and non-numbers are skipped; NaN is kept: an undefined AP)."""

    def log_history(self, history: list[tuple[int, dict[str, Any]]]) -> None:
        """After a resume: the epochs the resume state holds, ``[(epoch, metrics)]``, for a tracker that
        may have lost some of them with the interrupted process (W&B buffers); the others keep theirs."""

    def log_summary(self, metrics: dict[str, Any]) -> None:
        """The final numbers of the run (best val mAP, test mAP and APs, ...)."""

    def log_figure(self, path: Path) -> None:
        """A PNG of the run (its name without suffix is the figure's name)."""

    def close(self, failed: bool = False) -> None: ...


class CompositeTracker(Tracker):
    """Several trackers as one: each call goes to every one, in order."""

    name = "composite"

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log_epoch(self, step: int, metrics: dict[str, Any]) -> None:
        for t in self.trackers:
            t.log_epoch(step, metrics)

    def log_history(self, history: list[tuple[int, dict[str, Any]]]) -> None:
        for t in self.trackers:
            t.log_history(history)

    def log_summary(self, metrics: dict[str, Any]) -> None:
        for t in self.trackers:
            t.log_summary(metrics)

    def log_figure(self, path: Path) -> None:
        for t in self.trackers:
            t.log_figure(Path(path))

    def close(self, failed: bool = False) -> None:
        for t in self.trackers:
            t.close(failed)


def numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The entries a tracker can plot: ints, floats and bools as float; None and text left out."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def chosen(loggers: list[str]) -> list[str]:
    """The trackers to open for ``train.loggers`` (csv is always written by the run directory)."""
    names = list(dict.fromkeys(loggers))
    unknown = [n for n in names if n not in (BUILT_IN, *TRACKERS)]
    if unknown:  # config.py's Literal refuses these first; this guards callers that build configs by hand
        raise ConfigError(f"train.loggers: unknown tracker(s) {unknown}; choose from "
                          f"{', '.join(get_args(TrackerName))}")
    return [n for n in names if n != BUILT_IN]


def check_available(loggers: list[str]) -> None:
    """One line naming the extra for the first chosen tracker whose package is not installed (before
    a run directory is claimed, so a missing package never leaves a half-started run)."""
    for name in chosen(loggers):
        missing = [p for p in TRACKERS[name][2] if importlib.util.find_spec(p) is None]
        if missing:
            raise ConfigError(f"train.loggers includes {name}, but {', '.join(missing)} is not installed: "
                              f"pip install 'cvsjepa[{name}]' (or drop {name} from train.loggers)")


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """``{"train.lr": 0.0005, "data.criteria": ["C1", ...], ...}``: what trackers record as the config."""
    def walk(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(walk(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    return walk(to_dict(cfg))


def open_tracker(cfg: RunConfig, run_dir: str | Path, resume_step: int = 0) -> Tracker:
    """The trackers ``cfg.train.loggers`` chooses, started (continuing the runs ``trackers.json``
    names when ``resume_step`` > 0), as one :class:`Tracker`; the null tracker for ``[csv]``."""
    names = chosen(cfg.train.loggers)
    if not names:
        return Tracker()
    check_available(cfg.train.loggers)
    run_dir = Path(run_dir)
    path = run_dir / TRACKERS_FILE
    records = read_json_object(path, ConfigError, "the run directory is damaged") if path.is_file() else {}
    config = flat_config(cfg)
    started: list[Tracker] = []
    try:
        for name in names:
            module, cls, _ = TRACKERS[name]
            tracker = getattr(importlib.import_module(module), cls)(cfg, run_dir)
            previous = records.get(name) if resume_step else None
            records[name] = tracker.start(config, previous, resume_step)
            started.append(tracker)
            log.info("%s: %s%s", name, records[name].get("where", ""),
                     f" (continuing run {records[name].get('run_id')})" if previous else "")
    except BaseException:
        CompositeTracker(started).close(failed=True)
        raise
    atomic_write_json(path, records)
    return CompositeTracker(started)


@contextmanager
def tracking(cfg: RunConfig, run_dir: str | Path, resume_step: int = 0, enabled: bool = True):
    """``open_tracker`` for the duration of a block (``enabled`` False: the null tracker, e.g. on the
    ranks of a DDP run other than 0); closed as failed when the block raises."""
    tracker = open_tracker(cfg, run_dir, resume_step) if enabled else Tracker()
    try:
        yield tracker
    except BaseException:
        tracker.close(failed=True)
        raise
    tracker.close()


def epoch_metrics(members, epoch: int) -> dict[str, Any]:
    """The metrics.csv row of every member that ran ``epoch`` (objects with ``index`` and
    ``progress.rows``, train/members.py), keys prefixed ``head<index>/`` when there are several."""
    out: dict[str, Any] = {}
    for m in members:
        if not m.progress.rows or m.progress.rows[-1].get("epoch") != epoch:
            continue
        prefix = f"head{m.index}/" if len(members) > 1 else ""
        out.update({f"{prefix}{k}": v for k, v in m.progress.rows[-1].items()})
    return out


def history_of(members) -> list[tuple[int, dict[str, Any]]]:
    """Every epoch the members' rows hold (a resume state's), as :func:`epoch_metrics` gives them."""
    epochs = sorted({r["epoch"] for m in members for r in m.progress.rows})
    out = []
    for epoch in epochs:
        row: dict[str, Any] = {}
        for m in members:
            prefix = f"head{m.index}/" if len(members) > 1 else ""
            row.update({f"{prefix}{k}": v for r in m.progress.rows if r["epoch"] == epoch for k, v in r.items()})
        out.append((epoch, row))
    return out
