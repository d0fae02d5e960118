"""Helpers shared by the command modules."""

from __future__ import annotations

CONFIG_HELP = ("CONFIG is a YAML file (e.g. configs/exp2_attention.yaml); every key can be overridden with "
               "dotted key=value pairs after it, e.g. data.root=/data/endoscapes train.epochs=2 out=runs/x. "
               "`backbone=tiny` is short for backbone.preset=tiny. An unknown key is an error; "
               "`cvsjepa config-keys` lists them all.")


def split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """`CONFIG k=v ...` or just `k=v ...` (defaults + overrides)."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def fmt_cell(v) -> str:
    if isinstance(v, int) and v > 10_000:
        return f"{v / 1e6:.1f}M"
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)


def print_table(rows: list[dict]) -> None:
    if not rows:
        print("(nothing to show)")
        return
    cols = list(rows[0].keys())
    widths = {c: max(len(c), *(len(fmt_cell(r.get(c))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(fmt_cell(r.get(c)).ljust(widths[c]) for c in cols))
