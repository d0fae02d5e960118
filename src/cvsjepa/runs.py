"""The research log's summary table, generated from run directories.

One row per run: experiment, approach, trainable params, best val mAP, per-criterion val AP, test
mAP, delta vs a baseline run, epochs to best, train-val gap at the best epoch, backbone, and the run
directory (two runs of one experiment name are told apart by it). A run directory whose summary or
config cannot be read is left out with a warning naming it; the table of the others is still made.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from .criteria import CRITERIA
from .errors import CVSJepaError
from .io import atomic_write_text
from .rundir import CONFIG_FILE, RunDir

log = logging.getLogger("cvsjepa")

COLUMNS = ["experiment", "approach", "trainable_params", "best_val_map", *[f"val_ap_{c}" for c in CRITERIA],
           "test_map", "delta_vs_baseline", "epochs_to_best", "gap_at_best", "backbone", "run"]


def read_run(run_dir: Path) -> dict:
    run = RunDir.open(run_dir)
    s = run.read_summary()
    cfg = run.read_config_data() if (run / CONFIG_FILE).is_file() else {}
    val_ap = s.get("val_ap") or [None] * len(CRITERIA)
    return {
        "experiment": s.get("name") or run.name,
        "approach": cfg.get("description") or s.get("adapt", ""),
        "trainable_params": s.get("trainable_params"),
        "best_val_map": s.get("best_val_map"),
        **{f"val_ap_{c}": a for c, a in zip(CRITERIA, val_ap)},
        "test_map": s.get("test_map"),
        "epochs_to_best": s.get("best_epoch"),
        "gap_at_best": s.get("train_val_gap_at_best"),
        "backbone": s.get("backbone"),
        "run": run.name,
        "run_dir": str(run.path),
    }


def read_runs(run_dirs: list[Path]) -> list[dict]:
    """:func:`read_run` of each directory; a damaged one is skipped with a warning naming it (a path
    that is not a directory at all stays an error: it is a typo, not a damaged run)."""
    rows = []
    for d in run_dirs:
        RunDir.open(d)
        try:
            rows.append(read_run(d))
        except CVSJepaError as e:
            log.warning("skipping %s: %s", d, e)
    return rows


def runs_table(run_dirs: list[Path], baseline: str | None = None) -> list[dict]:
    """Rows in the given order; ``baseline`` is a run directory or an experiment name (default: the first)."""
    rows = read_runs(run_dirs)
    if not rows:
        return rows
    base = rows[0]
    if baseline:
        matches = [r for r in rows if r["run_dir"] == str(Path(baseline)) or r["experiment"] == baseline]
        if not matches:
            raise CVSJepaError(f"baseline {baseline!r} is neither one of the given run directories nor an "
                               f"experiment name among them")
        base = matches[0]
    for r in rows:
        ok = r["best_val_map"] is not None and base["best_val_map"] is not None
        r["delta_vs_baseline"] = (r["best_val_map"] - base["best_val_map"]) if ok else None
    return rows


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def format_row(r: dict) -> dict:
    out = dict(r)
    for k in ("best_val_map", *[f"val_ap_{c}" for c in CRITERIA], "test_map", "gap_at_best"):
        out[k] = _pct(r[k])
    d = r.get("delta_vs_baseline")
    out["delta_vs_baseline"] = "" if d is None else f"{100 * d:+.2f}%"
    p = r["trainable_params"]
    out["trainable_params"] = "" if p is None else f"{p / 1e6:.2f}M"
    return out


def to_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        f = format_row(r)
        lines.append("| " + " | ".join(str(f.get(c, "")) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS + ["run_dir"], extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_tables(rows: list[dict], out_prefix: Path) -> tuple[Path, Path]:
    md, cs = out_prefix.with_suffix(".md"), out_prefix.with_suffix(".csv")
    atomic_write_text(md, to_markdown(rows))
    atomic_write_text(cs, to_csv(rows))
    return md, cs
