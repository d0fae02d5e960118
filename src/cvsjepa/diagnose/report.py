"""Markdown helpers for ``diagnose/report.md``: tables and number formatting."""

from __future__ import annotations

import math
from typing import Callable, Sequence


def fmt(v, kind: str = "g") -> str:
    """``pct``: 0.4979 -> 49.8% (``pct2``: 49.79%); ``f3``: 3 decimals; ``sci``: 1.96e-03; ``g``: general; None/NaN -> n/a."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, str):
        return v
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "pct2":
        return f"{100 * v:.2f}%"
    if kind == "f3":
        return f"{v:.3f}"
    if kind == "sci":
        return f"{v:.3g}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def md_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str | Callable]]) -> str:
    """``columns``: (key, header, kind or formatter). Returns a GitHub-flavoured Markdown table."""
    if not rows:
        return "_(no rows)_\n"
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = []
    for r in rows:
        cells = []
        for key, _, kind in columns:
            v = r.get(key)
            cells.append(kind(r) if callable(kind) else fmt(v, kind))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body]) + "\n"


def image(path_name: str, alt: str) -> str:
    return f"![{alt}]({path_name})\n"
