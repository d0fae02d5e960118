"""MLflow: a local SQLite store in ``RUN/mlflow/`` (``mlflow ui --backend-store-uri sqlite:///RUN/mlflow/mlflow.db``),
or the tracking URI ``train.mlflow_uri`` names.

Through ``MlflowClient`` only (no global active run): parameters = the flattened resolved config,
``config.yaml`` as an artifact, metrics per epoch with the epoch as step, the final metrics, the
figures under ``figures/``. MLflow's telemetry is switched off before it is imported. A resumed
run reopens the same MLflow run (``trackers.json``); an epoch the interrupted process had logged
and logs again has the same values (resume is exact), at the same step.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ..config import RunConfig, to_yaml
from . import Tracker, numbers

log = logging.getLogger("cvsjepa")

FOLDER = "mlflow"
DB_FILE = "mlflow.db"
MAX_PARAM = 6000  # MLflow's limit on a parameter value's length


class MLflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, cfg: RunConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.client = None
        self.run_id = ""
        self.step = 0
        self.figures = True  # False when the local store's artifact folder is not in the run directory any more

    def _client(self):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("DO_NOT_TRACK", "true")
        for name in ("mlflow", "alembic"):  # their INFO lines (creating tables...) are not the run's news
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        local = not self.cfg.train.mlflow_uri
        folder = (self.run_dir / FOLDER).resolve()
        if local:
            folder.mkdir(parents=True, exist_ok=True)
        uri = self.cfg.train.mlflow_uri or f"sqlite:///{folder / DB_FILE}"
        return MlflowClient(tracking_uri=uri), uri, (folder / "artifacts").as_uri() if local else None

    def start(self, config: dict[str, Any], previous: dict | None, resume_step: int) -> dict:
        from mlflow.entities import Param

        self.client, uri, artifacts = self._client()
        self.step = resume_step
        project = self.cfg.train.tracker_project
        # the local store is found where the run directory is now (runs can move); another store by its URI
        if previous and previous.get("tracking_uri", uri) == uri and previous.get("run_id"):
            self.run_id = previous["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            exp = self.client.get_experiment_by_name(project)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(project, artifact_location=artifacts)
            self.run_id = self.client.create_run(exp_id, run_name=self.run_dir.name,
                                                 tags={"cvsjepa.run_dir": str(self.run_dir.resolve())}).info.run_id
            params = [Param(k[:250], str(v)[:MAX_PARAM]) for k, v in config.items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
            self.client.log_text(self.run_id, to_yaml(self.cfg), "config.yaml")
        if artifacts is not None:
            where = self.client.get_experiment(self.client.get_run(self.run_id).info.experiment_id).artifact_location
            self.figures = where == artifacts
            if not self.figures:  # MLflow keeps absolute artifact paths: never write to where the run used to be
                log.warning("the run directory moved since its MLflow store was made (artifacts at %s): figures are "
                            "not logged to MLflow; metrics are", where)
        record = {"run_id": self.run_id, "experiment": project, "where": f"run {self.run_id} in {uri}"}
        return record if artifacts is not None else {**record, "tracking_uri": uri}

    def _metrics(self, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in numbers(metrics).items()]
        for i in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def log_epoch(self, step: int, metrics: dict[str, Any]) -> None:
        self.step = step
        self._metrics(metrics, step)

    def log_summary(self, metrics: dict[str, Any]) -> None:
        self._metrics({f"final/{k}": v for k, v in metrics.items()}, self.step)

    def log_figure(self, path: Path) -> None:
        if self.figures:
            self.client.log_artifact(self.run_id, str(path), "figures")

    def close(self, failed: bool = False) -> None:
        if self.client is not None and self.run_id:
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
            self.client = None
