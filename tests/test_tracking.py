"""Experiment trackers (train.loggers), read back with each tracker's own reader: TensorBoard's event
accumulator, the MLflow client, W&B's transaction-log inspector (`wandb leet inspect`)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cvsjepa.rundir import METRICS_FILE, SUMMARY_FILE, TRACKERS_FILE


def _metrics_csv(run: Path) -> list[dict]:
    with open(run / METRICS_FILE, newline="") as f:
        return list(csv.DictReader(f))


def _same(a: float, b: str) -> bool:
    """A tracker's value against metrics.csv's text (6 significant digits; NaN where undefined)."""
    return (math.isnan(a) and b.lower() == "nan") or math.isclose(a, float(b), rel_tol=1e-5, abs_tol=1e-7)


def _columns(rows: list[dict]) -> list[str]:
    """metrics.csv columns with a value in every row (lr_backbone is empty while the backbone is frozen)."""
    return [k for k in rows[0] if all(r[k] != "" for r in rows)]


def _summary(run: Path) -> dict:
    return json.loads((run / SUMMARY_FILE).read_text())


def test_tensorboard_events_hold_every_metrics_column_per_epoch_and_the_final_test_map(ecosystem_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = ecosystem_run.path
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    rows = _metrics_csv(run)
    for col in _columns(rows):
        events = acc.Scalars(col)
        assert [e.step for e in events] == [int(r["epoch"]) for r in rows], col
        assert all(_same(e.value, r[col]) for e, r in zip(events, rows)), col
    assert math.isclose(acc.Scalars("final/test_map")[-1].value, _summary(run)["test_map"], rel_tol=1e-6)
    assert "figures/training_curve" in acc.Tags()["images"]
    assert "config/text_summary" in acc.Tags()["tensors"]  # the resolved config, as YAML text


def test_mlflow_store_holds_the_config_every_column_per_epoch_and_the_final_test_map(ecosystem_run):
    from mlflow.tracking import MlflowClient

    run = ecosystem_run.path
    record = json.loads((run / TRACKERS_FILE).read_text())["mlflow"]
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow' / 'mlflow.db'}")  # found where the run is
    mlrun = client.get_run(record["run_id"])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["train.loggers"] == str(["csv", "tensorboard", "mlflow", "wandb"])
    assert mlrun.data.params["backbone.path"] == str(ecosystem_run.weights)
    rows = _metrics_csv(run)
    for col in _columns(rows):
        history = sorted(client.get_metric_history(record["run_id"], col), key=lambda m: m.step)
        assert [m.step for m in history] == [int(r["epoch"]) for r in rows], col
        assert all(_same(m.value, r[col]) for m, r in zip(history, rows)), col
    assert math.isclose(mlrun.data.metrics["final/test_map"], _summary(run)["test_map"], rel_tol=1e-9)
    artifacts = [a.path for a in client.list_artifacts(record["run_id"], "figures")]
    assert artifacts == ["figures/training_curve.png"]


def _wandb_records(where: Path, summary: bool = False):
    """W&B's own reader of an offline run's transaction log: ``wandb leet inspect --json`` of a
    ``wandb/`` folder (its latest run) or of one run's folder."""
    cmd = [str(Path(sys.executable).with_name("wandb")), "leet", "inspect", "--json"]
    cmd += ["--summary"] if summary else []
    out = subprocess.run([*cmd, str(where)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "WANDB_ERROR_REPORTING": "false"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if summary else [json.loads(line) for line in out.stdout.splitlines()]


def test_wandb_offline_run_holds_the_config_every_column_per_epoch_and_the_final_test_map(ecosystem_run):
    run = ecosystem_run.path
    record = json.loads((run / TRACKERS_FILE).read_text())["wandb"]
    summary = _wandb_records(run / "wandb", summary=True)
    assert summary["run_id"] == record["run_id"] and summary["state"] == "finished"
    assert summary["config"]["train"]["loggers"] == ["csv", "tensorboard", "mlflow", "wandb"]
    assert math.isclose(summary["summary"]["final/test_map"], _summary(run)["test_map"], rel_tol=1e-9)
    history = [r["history"]["item"] for r in _wandb_records(run / "wandb") if r["type"] == "history"]
    rows = _metrics_csv(run)
    by_step = {int(h["_step"]): h for h in history}
    assert sorted(by_step) == [int(r["epoch"]) for r in rows]
    for col in _columns(rows):
        assert all(_same(float(by_step[int(r["epoch"])][col]), r[col]) for r in rows), col
    assert summary["summary"]["figures/training_curve"]["format"] == "png"
    runs = [p.name for p in (run / "wandb").iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(runs) == 1 and runs[0].startswith("offline-run-")


def test_no_tracker_reached_for_the_network(ecosystem_run):
    assert ecosystem_run.attempts == []


def test_csv_only_opens_no_tracker(tmp_path):
    from cvsjepa.config import load_config
    from cvsjepa.tracking import Tracker, open_tracker

    tracker = open_tracker(load_config(overrides=["backbone=tiny"]), tmp_path)
    assert type(tracker) is Tracker and not (tmp_path / TRACKERS_FILE).exists()


def test_a_missing_tracker_package_is_one_line_naming_the_extra(synth_root, tmp_path, capsys, monkeypatch):
    import importlib.util

    from cvsjepa.cli import main
    from tiny_runs import tiny_train_args

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    rc = main(["train", *tiny_train_args(synth_root, tmp_path / "run"), "train.loggers=[csv,wandb]", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'cvsjepa[wandb]'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before any run directory was claimed


@pytest.mark.slow
def test_resume_continues_the_same_tracker_runs(synth_root, tmp_path):
    """SIGKILL before the resume state of epoch 2 is saved, then --resume: one MLflow run and one W&B run
    id throughout, and TensorBoard shows each epoch once (the killed process's epoch 2 is purged)."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cvsjepa.cli import main
    from tiny_runs import tiny_train_args

    out = tmp_path / "run"
    args = [*tiny_train_args(synth_root, out, epochs=3), "train.loggers=[csv,tensorboard,mlflow,wandb]",
            "--no-progress"]
    killer = Path(__file__).parent / "faults" / "kill_after_steps.py"
    # its own W&B service, as a separate `cvsjepa train` would have (not this process's, which an earlier
    # test may have started and whose WANDB_SERVICE a child would inherit and keep the run id busy in)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    killed = subprocess.run([sys.executable, str(killer), "save:2", "train", *args], capture_output=True, text=True,
                            timeout=600, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    first = json.loads((out / TRACKERS_FILE).read_text())
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    again = json.loads((out / TRACKERS_FILE).read_text())
    assert [again[t]["run_id"] for t in ("mlflow", "wandb")] == [first[t]["run_id"] for t in ("mlflow", "wandb")]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cvsjepa").experiment_id])
    assert [r.info.run_id for r in runs] == [first["mlflow"]["run_id"]] and runs[0].info.status == "FINISHED"
    rows = _metrics_csv(out)
    steps = sorted({m.step for m in client.get_metric_history(first["mlflow"]["run_id"], "val_map")})
    assert steps == [1, 2, 3] == [int(r["epoch"]) for r in rows]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val_map")] == [1, 2, 3]
    assert all(_same(e.value, r["val_map"]) for e, r in zip(acc.Scalars("val_map"), rows))
    segments = sorted((out / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and all(p.name.endswith(first["wandb"]["run_id"]) for p in segments)
    # a SIGKILL loses W&B's last second of records; the resumed segment logs the saved epochs again
    steps = [{int(r["history"]["item"]["_step"]) for r in _wandb_records(seg) if r["type"] == "history"}
             for seg in segments]
    assert steps[1] == {1, 2, 3} and steps[0] <= {1, 2}


@pytest.mark.slow
def test_a_sweep_logs_every_head_in_one_tracker_run(synth_root, tmp_path):
    """Each head's metrics.csv columns under head<i>/ per epoch, then the winner's final metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cvsjepa.config import load_config
    from cvsjepa.features.extract import extract
    from cvsjepa.train.sweep import sweep

    common = ["backbone=tiny", f"data.root={synth_root}", "data.frames=4", "data.limit_per_split=16",
              f"features.store={tmp_path / 'store'}", "head.num_heads=4", "head.mlp_hidden=32", "train.batch_size=8",
              "train.epochs=2", "train.patience=0", "train.min_steps=0"]
    extract(load_config(None, common), progress=False)
    result = sweep(load_config(None, [*common, f"out={tmp_path / 'run'}", "sweep.lrs=[3e-3,1e-3]",
                                      "sweep.weight_decays=[0.01]", "train.loggers=[csv,tensorboard]"]), progress=False)
    acc = EventAccumulator(str(result.run_dir / "tensorboard"))
    acc.Reload()
    with open(result.run_dir / "sweep.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["epoch"] != "final"]
    for head in ("0", "1"):
        mine = [r for r in rows if r["head"] == head]
        events = acc.Scalars(f"head{head}/val_map")
        assert [e.step for e in events] == [1, 2] and all(_same(e.value, r["val_map"]) for e, r in zip(events, mine))
    assert math.isclose(acc.Scalars("final/test_map")[-1].value, result.summary["test_map"], rel_tol=1e-6)
    assert "val_map" not in acc.Tags()["scalars"]  # per head only: no unprefixed duplicate
