"""Weights & Biases, offline: ``RUN/wandb/offline-run-*`` (upload later with ``wandb sync RUN/wandb``;
look at it locally with ``wandb leet RUN/wandb``).

Always ``mode="offline"`` with W&B's error reporting off (its service then starts with
``--no-observability``), no git or code capture and no system-metrics sampling: nothing leaves the
machine. The run id is kept in ``trackers.json``; a resumed run starts W&B with the same id
(``resume="allow"``), which ``wandb sync`` joins into one run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import RunConfig, to_dict
from . import Tracker, numbers


FLUSH_S = 1.0  # seconds between writes of the .wandb file (W&B's default, 15 s, loses more to a crash)


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, cfg: RunConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.run = None
        self.step = 0

    def start(self, config: dict[str, Any], previous: dict | None, resume_step: int) -> dict:
        os.environ["WANDB_ERROR_REPORTING"] = "false"  # before wandb starts its service: no Sentry, no telemetry
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        run_id = (previous or {}).get("run_id")  # None: W&B draws a new id
        extra = {"x_transaction_log_flush_interval": FLUSH_S} if "x_transaction_log_flush_interval" in \
            wandb.Settings.model_fields else {}
        settings = wandb.Settings(mode="offline", console="off", save_code=False, disable_git=True,
                                  x_disable_stats=True, silent=True, **extra)
        self.run = wandb.init(project=self.cfg.train.tracker_project, dir=str(self.run_dir.resolve()), id=run_id,
                              name=self.run_dir.name, resume="allow", config=to_dict(self.cfg), mode="offline",
                              settings=settings)
        self.step = resume_step
        run_id = self.run.id
        return {"run_id": run_id, "project": self.cfg.train.tracker_project, "dir": "wandb",
                "where": f"offline run {run_id} in {self.run_dir / 'wandb'}"}

    def log_epoch(self, step: int, metrics: dict[str, Any]) -> None:
        self.step = step
        self.run.log(numbers(metrics), step=step, commit=True)  # committed now, on disk within FLUSH_S

    def log_history(self, history: list[tuple[int, dict[str, Any]]]) -> None:
        # W&B keeps an interrupted process's last FLUSH_S of records in memory; the resumed segment
        # logs the saved epochs again, and `wandb sync` keeps the first copy of a step it already has
        for step, metrics in history:
            self.run.log(numbers(metrics), step=step, commit=True)

    def log_summary(self, metrics: dict[str, Any]) -> None:
        self.run.summary.update({f"final/{k}": v for k, v in numbers(metrics).items()})

    def log_figure(self, path: Path) -> None:
        import wandb

        self.run.summary[f"figures/{Path(path).stem}"] = wandb.Image(str(path))  # every epoch's step is committed

    def close(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
