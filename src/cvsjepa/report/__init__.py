"""`cvsjepa report RUN` (and `cvsjepa evaluate RUN --report`): one self-contained HTML page of a run.

    RUN/report.html (rundir.REPORT_FILE): metrics with 95 % CIs, the training curve, PR and reliability
    plots (raw and calibrated), operating points, time-to-CVS, the per-video table, the attention
    overlays of `cvsjepa diagnose`, timeline examples, the model card (its Markdown rendered by markdown-it-py)

Everything comes from files the run already holds (``eval_<split>.json``, ``predictions_<split>.csv``,
the PNGs, ``diagnose/``, the card), rendered with the Jinja2 template ``templates/report.html.j2``.
Images are embedded as base64 ``data:`` URIs and the style is inline, so the file opens from disk
with no server and nothing to fetch. A section whose inputs are missing says which command makes them.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt
from markupsafe import Markup

from ..card import card_context, metric_rows
from ..checkpoint import CARD_FILE
from ..errors import ConfigError
from ..io import atomic_write_text
from ..rundir import (CURVE_FILE, DIAGNOSE_DIR, REPORT_FILE, RunDir, eval_file, pr_curves_file, reliability_file)
from ..templating import render
from ..version import __version__
from .tables import eval_for, operating_rows, per_video_rows, time_to_cvs_rows

log = logging.getLogger("cvsjepa")

SECTIONS = ("metrics", "curves", "operating-points", "time-to-cvs", "per-video", "attention", "timelines",
            "model-card")  # the page's sections, in order (tests check each is present)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Figure:
    title: str
    uri: str  # data:image/png;base64,...


def embed(path: Path, title: str | None = None) -> Figure:
    """A PNG as a data URI (the page carries its images)."""
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ConfigError(f"{path} is not a PNG file; cannot embed it in the report")
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    return Figure(title or Path(path).stem.replace("_", " "), uri)


def _timelines(paths: list[Path]) -> list[Figure]:
    out = []
    for p in paths:
        png = p / "timeline.png" if p.is_dir() else p
        if not png.is_file():
            raise ConfigError(f"--timeline {p}: no timeline.png there (write one with "
                              f"`cvsjepa predict VIDEO --run RUN`)")
        out.append(embed(png, f"timeline: {png.parent.name}"))
    return out


def build_page(run: RunDir, split: str = "test", timelines: list[Path] = ()) -> str:
    """The report's HTML for ``run`` (its ``split`` evaluation when there is one)."""
    ckpt = run.require_best()
    evaluation, split = eval_for(run, split)
    card = card_context(run.path, ckpt)
    card_file = ckpt / CARD_FILE
    card_text = card_file.read_text() if card_file.is_file() else render("card.md.j2", note="", **card)
    card_html = MarkdownIt("commonmark", {"html": False}).enable("table").render(card_text)  # raw HTML escaped
    curves = [embed(run / name, title) for name, title in (
        (CURVE_FILE, "training curve"), (pr_curves_file(split), f"precision-recall, {split}"),
        (reliability_file(split), f"reliability, {split} (raw and calibrated)")) if (run / name).is_file()]
    diag = run / DIAGNOSE_DIR
    attention = [embed(p) for p in sorted(diag.glob("*.png"))] if diag.is_dir() else []
    found = sorted(p for p in run.path.rglob("timeline*.png") if "checkpoints" not in p.parts)
    return render("report.html.j2", title=f"{run.name}: CVS report", run=str(run.path), split=split,
                  evaluation=evaluation, card=card, card_html=Markup(card_html),
                  metrics=metric_rows(evaluation, card["criteria"]), curves=curves,
                  operating=operating_rows(evaluation), time_to_cvs=time_to_cvs_rows(evaluation),
                  per_video=per_video_rows(run, split, evaluation, tuple(card["criteria"])),
                  attention=attention, timelines=[embed(p, f"timeline: {p.parent.name}") for p in found]
                  + _timelines([Path(t) for t in timelines]), sections=SECTIONS, version=__version__,
                  eval_name=eval_file(split))


def write_report(run_dir: str | Path, out: str | Path | None = None, split: str = "test",
                 timelines: list[Path] = ()) -> Path:
    """Write the page (default ``RUN/report.html``); returns its path."""
    run = RunDir.open(run_dir)
    path = Path(out) if out else run / REPORT_FILE
    atomic_write_text(path, build_page(run, split, list(timelines)))
    return path
