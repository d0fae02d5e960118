"""The research log's summary table, generated from run directories and seed groups.

One row per run: experiment, approach, trainable params, best val mAP, per-criterion val AP, test
mAP, delta vs a baseline run, epochs to best, train-val gap at the best epoch, backbone, and the run
directory (two runs of one experiment name are told apart by it). A run directory whose summary or
config cannot be read is left out with a warning naming it; the table of the others is still made.
A seed group (``cvsjepa train --seeds``) is one row whose numbers are the mean over its seeds,
shown as ``mean +- sd``.

With an explicit baseline, ``delta_ci95`` and ``delta_p`` come from the paired bootstrap over
videos of the val mAP difference (:mod:`cvsjepa.evaluate.compare`, on ``predictions_val.csv``;
a group counts as the mean over its seeds); rows whose val predictions are missing or hold other
keyframes than the baseline's get no interval, and ``delta_note`` says why.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from .criteria import CRITERIA
from .errors import CVSJepaError
from .io import atomic_write_text
from .rundir import CONFIG_FILE, RunDir, is_group

log = logging.getLogger("cvsjepa")

COLUMNS = ["experiment", "approach", "trainable_params", "best_val_map", *[f"val_ap_{c}" for c in CRITERIA],
           "test_map", "delta_vs_baseline", "delta_ci95", "delta_p", "epochs_to_best", "gap_at_best", "backbone",
           "seeds", "run"]
SD_KEYS = ("best_val_map", *[f"val_ap_{c}" for c in CRITERIA], "test_map")  # shown as mean +- sd for groups


def read_group_row(group_dir: Path) -> dict:
    """One row for a seed group: the first member's description, the mean over members of each number."""
    from .groups import group_members, read_group

    doc = read_group(group_dir)
    members = [read_run(m.path) for m in group_members(group_dir)]
    row = dict(members[0])
    m = doc["metrics"]
    row.update({"experiment": doc.get("name") or Path(group_dir).name, "run_dir": str(Path(group_dir)),
                "run": Path(group_dir).name,
                "best_val_map": m["best_val_map"]["mean"], "test_map": m["test_map"]["mean"],
                **{f"val_ap_{c}": m.get(f"val_ap_{c}", {}).get("mean") for c in CRITERIA},
                "seeds": len(doc["members"]), "group": True,
                "sd": {"best_val_map": m["best_val_map"]["sd"], "test_map": m["test_map"]["sd"],
                       **{f"val_ap_{c}": m.get(f"val_ap_{c}", {}).get("sd") for c in CRITERIA}}})
    for k in ("epochs_to_best", "gap_at_best"):
        vals = [r[k] for r in members if r[k] is not None]
        row[k] = sum(vals) / len(vals) if vals else None
    return row


def read_row(path: Path) -> dict:
    return read_group_row(path) if is_group(path) else read_run(path)


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
        "seeds": 1,
    }


def read_runs(run_dirs: list[Path]) -> list[dict]:
    """:func:`read_row` of each directory (a run or a seed group); a damaged one is skipped with a
    warning naming it (a path that is not a directory at all stays an error: it is a typo, not a
    damaged run)."""
    rows = []
    for d in run_dirs:
        RunDir.open(d)
        try:
            rows.append(read_row(d))
        except CVSJepaError as e:
            log.warning("skipping %s: %s", d, e)
    return rows


def runs_table(run_dirs: list[Path], baseline: str | None = None, bootstrap: int = 1000, seed: int = 0) -> list[dict]:
    """Rows in the given order; ``baseline`` is a run directory or an experiment name (default: the
    first, without intervals). With ``baseline`` and ``bootstrap`` > 0, each row's delta gets a paired
    bootstrap interval and p-value on the val predictions."""
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
    if baseline and bootstrap > 0:
        add_paired_intervals(rows, base, bootstrap, seed)
    return rows


def add_paired_intervals(rows: list[dict], base: dict, bootstrap: int, seed: int) -> None:
    """``delta_ci95``/``delta_p`` of each row against ``base``: paired bootstrap of the val mAP
    difference on the same keyframes (``delta_note`` where the predictions do not allow it)."""
    from .evaluate.compare import compare, load_scored

    try:
        ref, names = load_scored(Path(base["run_dir"]), "val")
    except CVSJepaError as e:
        for r in rows:
            r["delta_note"] = f"no interval: {e}"
        return
    for r in rows:
        if r is base:
            continue
        try:
            other, _ = load_scored(Path(r["run_dir"]), "val")
            c = compare([ref, other], names, bootstrap, seed)["comparisons"][0]
        except CVSJepaError as e:
            r["delta_note"] = f"no interval: {e}"
            continue
        r["delta_ci95"], r["delta_p"], r["delta_resamples"] = c["ci95"], c["p_value"], bootstrap


def format_p(p: float, resamples: int | None) -> str:
    """A bootstrap p-value; 0 is shown as below the resolution 2 / B."""
    return f"< {2 / resamples:.2g}" if p == 0 and resamples else f"{p:.3g}"


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def format_row(r: dict) -> dict:
    out = dict(r)
    sd = r.get("sd") or {}
    for k in ("best_val_map", *[f"val_ap_{c}" for c in CRITERIA], "test_map", "gap_at_best"):
        out[k] = _pct(r[k]) + (f" +- {100 * sd[k]:.2f}" if sd.get(k) is not None else "")
    d = r.get("delta_vs_baseline")
    out["delta_vs_baseline"] = "" if d is None else f"{100 * d:+.2f}%"
    ci = r.get("delta_ci95")
    out["delta_ci95"] = "" if not ci or ci[0] is None or ci[0] != ci[0] else f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"
    p = r.get("delta_p")
    out["delta_p"] = "" if p is None or p != p else format_p(p, r.get("delta_resamples"))
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
    """Plain numbers: a group's mean in the column, its sd in ``<column>_sd``; the interval as two columns."""
    extra = [f"{k}_sd" for k in SD_KEYS] + ["delta_ci95_lo", "delta_ci95_hi", "run_dir", "delta_note"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[c for c in COLUMNS if c != "delta_ci95"] + extra, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        sd = r.get("sd") or {}
        lo, hi = r.get("delta_ci95") or (None, None)
        w.writerow({**r, **{f"{k}_sd": sd.get(k) for k in SD_KEYS}, "delta_ci95_lo": lo, "delta_ci95_hi": hi})
    return buf.getvalue()


def write_tables(rows: list[dict], out_prefix: Path) -> tuple[Path, Path]:
    md, cs = out_prefix.with_suffix(".md"), out_prefix.with_suffix(".csv")
    atomic_write_text(md, to_markdown(rows))
    atomic_write_text(cs, to_csv(rows))
    return md, cs
