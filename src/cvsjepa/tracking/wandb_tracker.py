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
        settings = wandb.Settings(mode="offline", console="off", save_code=False, disable_git=True,
                                  x_disable_stats=True, silent=True)
        self.run = wandb.init(project=self.cfg.train.tracker_project, dir=str(self.run_dir.resolve()), id=run_id,
                              name=self.run_dir.name, resume="allow", config=to_dict(self.cfg), mode="offline",
                              settings=settings)
        self.step = resume_step
        run_id = self.run.id
        return {"run_id": run_id, "project": self.cfg.train.tracker_project, "dir": "wandb",
                "where": f"offline run {run_id} in {self.run_dir / 'wandb'}"}

    def log_epoch(self, step: int, metrics: dict[str, Any]) -> None:
        self.step = step
        self.run.log(numbers(metrics), step=step)

    def log_summary(self, metrics: dict[str, Any]) -> None:
        self.run.summary.update({f"final/{k}": v for k, v in numbers(metrics).items()})

    def log_figure(self, path: Path) -> None:
        import wandb

        self.run.log({f"figures/{Path(path).stem}": wandb.Image(str(path))}, step=self.step)

    def close(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
