"""The run directory: the one owner of its layout, written by ``train``/``sweep`` and read by
``evaluate``, ``diagnose``, ``predict``, the API and ``runs``. No other module spells these names.

    config.yaml                 fully resolved config (what ``--resume`` restarts from)
    train.log                   the run's log
    metrics.csv                 one row per epoch (train/val loss and mAP, val AP per criterion, LRs)
    sweep.csv                   (sweep) every head's row per epoch, then one final row per head
    summary.json                written last: the run is finished when it exists
    predictions_<split>.csv     one row per keyframe clip of the best checkpoint
    splits.json                 SAGES: the videos of each split (the drawn val/test included); resume,
                                evaluate and diagnose reuse it (feature stores hold one too)
    training_curve.png
    checkpoints/best/           model.safetensors + config.json (self-contained; LoRA: adapter/)
    checkpoints/stage1_best/    (exp9) stage 1's best, kept when stage 2 starts
    checkpoints/resume-eNNNN.pt the resume state after epoch NNNN (one file: weights, optimizer, RNG, ...)
    checkpoints/resume.json     names the complete resume file and its sha256; written after it
    eval_<split>[_tag].json, thresholds[_tag].json, calibration[_tag].json, pr_curves_<split>[_tag].png,
    reliability_<split>[_tag].png, predictions_<split>[_tag].csv   (``cvsjepa evaluate``; on other data
                                the tag always starts with data_tag(root), so the run's own files stay)
    diagnose/                   (``cvsjepa diagnose``)

A seed group (``cvsjepa train CONFIG --seeds 0 1 2``): ``GROUP/seed<k>/`` (a run each, seed k),
``GROUP/group.json`` (mean and sd of their metrics, groups.py) and ``GROUP/predictions_<split>.csv``
(the ensemble: the mean of the members' probabilities, same format).

Resume state is one atomic unit: the epoch's file is written whole (temp + fsync + rename), then the
manifest that names it and its hash, and only then are older resume files removed. A crash at any
point leaves the previous manifest naming a complete, older file, so ``--resume`` continues from the
last consistent epoch and says so; a file whose hash differs from its manifest is refused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from .criteria import CRITERIA
from .checkpoint import META_FILE
from .config import RunConfig, from_dict, to_dict, to_yaml
from .errors import CheckpointError, ConfigError
from .io import atomic_torch_save, atomic_write_json, atomic_write_text, read_json_object, safe_torch_load, sha256_file

log = logging.getLogger("cvsjepa")

CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
METRICS_FILE = "metrics.csv"
SWEEP_FILE = "sweep.csv"
SUMMARY_FILE = "summary.json"
CURVE_FILE = "training_curve.png"
THRESHOLDS_FILE = "thresholds.json"
CALIBRATION_FILE = "calibration.json"
GROUP_FILE = "group.json"
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = f"{CHECKPOINTS_DIR}/best"
STAGE1_BEST_DIR = f"{CHECKPOINTS_DIR}/stage1_best"
RESUME_MANIFEST = f"{CHECKPOINTS_DIR}/resume.json"
DIAGNOSE_DIR = "diagnose"
TRACKERS_FILE = "trackers.json"  # the experiment trackers' run ids and folders (tracking/), so a resume continues them
REPORT_FILE = "report.html"  # `cvsjepa report`: one self-contained page (report/)
SPLITS_FILE = "splits.json"  # the split assignment (data/splits.py), in run directories and feature stores
RESUME_FORMAT, RESUME_VERSION = "cvsjepa-resume", 2
_RESUME_RE = re.compile(r"^resume-e(\d{4,})\.pt$")

METRIC_COLUMNS = ["epoch", "stage", "train_loss", "train_map", "val_loss", "val_map",
                  *[f"val_ap_{c}" for c in CRITERIA], "lr_head", "lr_backbone", "seconds"]
# Keys that say how a run executes, not what it computes: a resume may change them.
RUNTIME_KEYS = ("out", "resume", "train.device", "train.threads", "data.num_workers", "data.frame_cache_mb")


def _sfx(tag: str) -> str:
    return f"_{tag}" if tag else ""


def predictions_file(role: str, tag: str = "") -> str:
    return f"predictions_{role}{_sfx(tag)}.csv"


def eval_file(split: str, tag: str = "") -> str:
    return f"eval_{split}{_sfx(tag)}.json"


def thresholds_file(tag: str = "") -> str:
    return f"thresholds{_sfx(tag)}.json"


def calibration_file(tag: str = "") -> str:
    return f"calibration{_sfx(tag)}.json"


def seed_dir(seed: int) -> str:
    """A seed group's member run directory, relative to the group."""
    return f"seed{seed}"


def is_group(path: str | Path) -> bool:
    return (Path(path) / GROUP_FILE).is_file()


def pr_curves_file(split: str, tag: str = "") -> str:
    return f"pr_curves_{split}{_sfx(tag)}.png"


def reliability_file(split: str, tag: str = "") -> str:
    return f"reliability_{split}{_sfx(tag)}.png"


def data_tag(root: str | Path) -> str:
    """File-name tag of an evaluation on another dataset than the run's: ``data-<folder>-<6 hex>``
    (the hex, of the absolute path, keeps two folders of the same name apart)."""
    resolved = Path(root).expanduser().resolve()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", resolved.name).strip("-.") or "root"
    return f"data-{name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:6]}"


def resume_file(epoch: int) -> str:
    return f"{CHECKPOINTS_DIR}/resume-e{epoch:04d}.pt"


@dataclass(frozen=True)
class RunDir:
    """A run directory on disk. ``RunDir.create(cfg)`` claims a new one; ``RunDir.open(path)`` an
    existing one. Paths are relative to wherever the directory is now: runs can be moved."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, cfg: RunConfig) -> "RunDir":
        """Claim ``cfg.out`` (or a fresh ``runs/<name>-<timestamp>``) and write config.yaml.

        The claim is ``mkdir`` of ``checkpoints/``, which the file system grants to one process
        only, so two trainings started together on the same ``out`` cannot both own it."""
        if cfg.out:
            out = Path(cfg.out)
            if out.exists() and not out.is_dir():
                raise ConfigError(f"out={out} is an existing file, not a directory; choose another out=...")
            _mkdir(out, parents=True, exist_ok=True)
            if any(p.name != CHECKPOINTS_DIR for p in out.iterdir()) or not _claim(out):
                raise ConfigError(f"run directory {out} already exists and is not empty; finished work is never "
                                  f"overwritten: choose another out=... or remove it")
        else:
            stem = Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            out, k = stem, 1
            _mkdir(out.parent, parents=True, exist_ok=True)
            while not (_mkdir(out) and _claim(out)):  # taken: another run started in the same second
                k += 1
                out = stem.with_name(f"{stem.name}-{k}")
        run = cls(out)
        atomic_write_text(run / CONFIG_FILE, to_yaml(cfg))
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing directory (not checked for contents: see the ``require_*`` methods)."""
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"run directory {p} does not exist")
        if not p.is_dir():
            raise ConfigError(f"{p} is a file, not a run directory")
        return cls(p)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def best_dir(self) -> Path:
        return self.path / BEST_DIR

    def has_best(self) -> bool:
        return (self.best_dir / META_FILE).is_file()

    def require_best(self) -> Path:
        """``checkpoints/best`` after checking it exists."""
        if not self.has_best():
            raise CheckpointError(f"{self.path} has no best checkpoint ({self.best_dir / META_FILE} is "
                                  f"missing): is it a run directory, and did training finish at least one epoch?")
        return self.best_dir

    def is_finished(self) -> bool:
        return (self.path / SUMMARY_FILE).is_file()

    # ------------------------------------------------------------------ config and summary
    def read_config_data(self) -> dict:
        """config.yaml as plain data (not checked against this version's keys)."""
        path = self.path / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"{path} does not exist (is {self.path} a run directory?)")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML ({e}); the run directory is damaged") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path} does not hold a config mapping; the run directory is damaged")
        return data

    def read_config(self) -> RunConfig:
        return from_dict(self.read_config_data(), where=str(self.path / CONFIG_FILE))

    def read_summary(self) -> dict:
        if not self.is_finished():
            raise ConfigError(f"{self.path} is not a finished run directory (no {SUMMARY_FILE}); an unfinished "
                              f"run can be resumed with `cvsjepa train --resume {self.path}`")
        return read_json_object(self.path / SUMMARY_FILE, ConfigError, "the run directory is damaged")

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / SUMMARY_FILE, summary)

    # ------------------------------------------------------------------ per-epoch tables
    def write_metrics(self, rows: list[dict]) -> None:
        """Rewrite metrics.csv whole (atomically) so a crash never leaves half a row."""
        extra = sorted({k for r in rows for k in r} - set(METRIC_COLUMNS))  # e.g. val_miou, val_iou_<class>
        write_csv(self.path / METRICS_FILE, METRIC_COLUMNS + extra, rows)

    def read_metrics(self) -> list[dict]:
        path = self.path / METRICS_FILE
        if not path.is_file():
            raise ConfigError(f"{self.path} has no {METRICS_FILE}: is it a run directory written by `cvsjepa train`?")
        with open(path, newline="") as f:
            return [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]

    # ------------------------------------------------------------------ predictions
    def write_predictions(self, role: str, preds, names: tuple[str, ...] = CRITERIA, tag: str = "") -> Path:
        """One row per keyframe clip: sample id, video, frame, labels, rater means, probabilities."""
        path = self.path / predictions_file(role, tag)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["sample_id", "video_id", "frame"] + [f"label_{n}" for n in names]
                   + [f"rater_mean_{n}" for n in names] + [f"prob_{n}" for n in names])
        for i in range(len(preds.sample_ids)):
            w.writerow([preds.sample_ids[i], preds.video_ids[i], preds.frames[i]]
                       + [int(x) for x in preds.labels[i]] + [f"{float(x):.4f}" for x in preds.rater_means[i]]
                       + [f"{float(x):.6f}" for x in preds.probs[i]])
        atomic_write_text(path, buf.getvalue())
        return path

    def read_predictions(self, role: str, names: tuple[str, ...] = CRITERIA, tag: str = "") -> dict[str, list]:
        """``{"sample_ids", "video_ids", "frames", "probs" [[p1, p2, p3], ...], "labels" [[y1, y2, y3], ...],
        "rater_means"}`` (lists, in file order)."""
        path = self.path / predictions_file(role, tag)
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            return {"sample_ids": [r["sample_id"] for r in rows],
                    "video_ids": [int(v) if v.isdigit() else v for v in (r["video_id"] for r in rows)],  # SAGES: names
                    "frames": [int(r["frame"]) for r in rows],
                    "probs": [[float(r[f"prob_{n}"]) for n in names] for r in rows],
                    "labels": [[float(r[f"label_{n}"]) for n in names] for r in rows],
                    "rater_means": [[float(r.get(f"rater_mean_{n}") or "nan") for n in names] for r in rows]}
        except (OSError, KeyError, ValueError) as e:
            raise CheckpointError(f"{path} cannot be read as predictions (need sample_id, video_id, prob_<criterion> "
                                  f"and label_<criterion> columns): {e}") from e

    # ------------------------------------------------------------------ resume
    def check_resumable(self, cfg: RunConfig) -> None:
        """Refuse a resume whose config computes something else than the saved one. Where the run
        directory is (``out``: auto-named, moved, relative or absolute) and how it runs
        (:data:`RUNTIME_KEYS`) may differ."""
        saved = _without(to_dict(self.read_config()), RUNTIME_KEYS)
        now = _without(to_dict(cfg), RUNTIME_KEYS)
        diffs = _diff(saved, now)
        if diffs:
            raise ConfigError(f"cannot resume {self.path}: the config differs from the one it was started with "
                              f"({'; '.join(diffs[:5])}); drop the changed overrides and resume with the saved "
                              f"config: cvsjepa train --resume {self.path}")

    def save_resume(self, epoch: int, state: dict) -> Path:
        """Write the resume state after ``epoch`` as one unit (see the module docstring). ``state``
        holds plain containers of tensors and numbers, so it loads back with ``weights_only=True``."""
        rel = resume_file(epoch)
        path = self.path / rel
        atomic_torch_save(path, {"format": RESUME_FORMAT, "version": RESUME_VERSION, "epoch": epoch, **state})
        atomic_write_json(self.path / RESUME_MANIFEST, {
            "format": RESUME_FORMAT, "version": RESUME_VERSION, "epoch": epoch, "file": rel,
            "sha256": sha256_file(path), "bytes": path.stat().st_size})
        for old in self._resume_files():
            if old != path:
                old.unlink(missing_ok=True)
        return path

    def _resume_files(self) -> list[Path]:
        ckpt = self.path / CHECKPOINTS_DIR
        return sorted(p for p in ckpt.glob("resume-e*.pt") if _RESUME_RE.match(p.name)) if ckpt.is_dir() else []

    def load_resume(self) -> dict:
        """The last complete resume state, its hash checked; CheckpointError when there is none or
        it is damaged. A newer file the manifest does not name (a save interrupted before its
        manifest) is left aside with a warning."""
        manifest = self.path / RESUME_MANIFEST
        if not manifest.is_file():
            raise ConfigError(f"cannot resume: {self.path} has no complete epoch yet ({RESUME_MANIFEST} is "
                              f"missing); start it again without resume after removing {self.path}")
        m = read_json_object(manifest, CheckpointError, "the run cannot be resumed safely")
        try:
            rel, digest, epoch = m["file"], m["sha256"], int(m["epoch"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{manifest} is damaged ({e}); the run cannot be resumed safely") from e
        if m.get("format") != RESUME_FORMAT or m.get("version") != RESUME_VERSION:
            raise CheckpointError(f"{manifest} is not a cvsjepa resume manifest of version {RESUME_VERSION}")
        path = self.path / rel
        if not path.is_file():
            raise CheckpointError(f"cannot resume: {manifest} names {rel}, which is missing")
        if sha256_file(path) != digest:
            raise CheckpointError(f"cannot resume: {path} is damaged (its sha256 differs from the one {manifest} "
                                  f"recorded when it was written); the run cannot continue from it")
        for stray in self._resume_files():
            k = int(_RESUME_RE.match(stray.name).group(1))
            if k > epoch:
                log.warning("%s was being written when the run stopped (its save is incomplete); resuming after "
                            "epoch %d, the last complete save", stray, epoch)
        state = safe_torch_load(path)
        if state.get("epoch") != epoch or state.get("format") != RESUME_FORMAT:
            raise CheckpointError(f"{path} does not hold the resume state of epoch {epoch} that {manifest} names")
        return state


def write_split_file(folder: str | Path, splits: dict) -> Path | None:
    """``folder/splits.json`` (a run directory or a feature store) from the split assignment the
    indices of ``splits`` ({name: SplitData or SplitIndex}) were built with; nothing for a dataset
    whose splits are its folders (Endoscapes)."""
    indices = [getattr(sd, "index", sd) for sd in splits.values()]
    plan = next((i.plan for i in indices if i.plan), None)
    if plan is None:
        return None
    atomic_write_json(Path(folder) / SPLITS_FILE, plan)
    return Path(folder) / SPLITS_FILE


def with_saved_splits(cfg: RunConfig, folder: str | Path | None) -> RunConfig:
    """``cfg`` with ``data.splits_file`` = ``folder/splits.json`` when that folder (a run or a feature
    store) has one and the config names none: a recorded split is reused, never drawn again."""
    saved = Path(folder) / SPLITS_FILE if folder else None
    if cfg.data.splits_file or saved is None or not saved.is_file():
        return cfg
    return replace(cfg, data=replace(cfg.data, splits_file=str(saved)))


def _mkdir(path: Path, parents: bool = False, exist_ok: bool = False) -> bool:
    """``Path.mkdir`` with one-line errors for unwritable places; False (not an error) when the
    directory already exists and ``exist_ok`` is False."""
    try:
        path.mkdir(parents=parents, exist_ok=exist_ok)
        return True
    except FileExistsError:
        return False
    except PermissionError as e:
        raise ConfigError(f"cannot create {path}: permission denied; choose a writable location with out=...") from e
    except OSError as e:
        raise ConfigError(f"cannot create {path}: {e.strerror}; choose another out=...") from e


def _claim(out: Path) -> bool:
    """Exclusive ownership of a run directory: True for the one process whose mkdir succeeds."""
    return _mkdir(out / CHECKPOINTS_DIR, exist_ok=False)


def locate_checkpoint(path: Path) -> tuple[RunDir | None, Path]:
    """``(run or None, checkpoint_dir)`` for a run directory or a checkpoint directory."""
    path = Path(path)
    if (path / BEST_DIR / META_FILE).is_file():
        return RunDir(path), path / BEST_DIR
    if (path / META_FILE).is_file():
        run = path.parent.parent if path.parent.name == CHECKPOINTS_DIR else None
        return (RunDir(run) if run is not None and (run / CONFIG_FILE).is_file() else None), path
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give a run directory (from `cvsjepa train`) or its "
                              f"{BEST_DIR} directory")
    raise CheckpointError(f"{path} is neither a run directory (no {BEST_DIR}/{META_FILE}) nor a checkpoint "
                          f"directory (no {META_FILE})")


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """A CSV with these columns (missing values empty, floats to 6 significant digits), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _fmt(v: Any):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def _parse(v: str):
    if v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def _without(d: dict, keys: tuple[str, ...]) -> dict:
    d = json.loads(json.dumps(d))  # deep copy of plain data
    for key in keys:
        node, *path = key.split(".")
        parent = d
        for part in [node, *path][:-1]:
            parent = parent.get(part, {})
        parent.pop(key.split(".")[-1], None)
    return d


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def run_environment() -> dict[str, Any]:
    """What produced a run, for summary.json: versions, git commit, threads and usable cores."""
    import torch

    from .version import __version__
    from .runtime import git_hash, usable_cpus

    return {"cvsjepa_version": __version__, "git": git_hash(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "usable_cpus": usable_cpus()}
