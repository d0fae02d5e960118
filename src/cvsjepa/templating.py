"""The Jinja2 environment of the model card (Markdown) and the HTML report: the templates in
``cvsjepa/templates/`` and the few filters they share (numbers, intervals)."""

from __future__ import annotations

import math
from functools import lru_cache

from jinja2 import Environment, PackageLoader, StrictUndefined


def num(v, digits: int = 3) -> str:
    """A number to ``digits`` decimals; ``n/a`` for None or NaN (an undefined value is never shown as a result)."""
    if v is None or isinstance(v, str):
        return "n/a" if v is None else v
    if isinstance(v, float) and not math.isfinite(v):
        return "n/a"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return f"{v:.{digits}f}"


def interval(ci, digits: int = 3) -> str:
    """``[lo, hi]`` of a 95 % interval, or "" when there is none."""
    if not ci or any(x is None or (isinstance(x, float) and not math.isfinite(x)) for x in ci):
        return ""
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


@lru_cache(maxsize=None)
def environment(html: bool) -> Environment:
    """HTML templates autoescape every value; Markdown ones do not (a card is plain text)."""
    env = Environment(loader=PackageLoader("cvsjepa", "templates"), undefined=StrictUndefined,
                      autoescape=html,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(num=num, interval=interval)
    return env


def render(template: str, **context) -> str:
    return environment(template.endswith(".html.j2")).get_template(template).render(**context)
