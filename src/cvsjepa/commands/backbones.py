"""`cvsjepa backbones`."""

from __future__ import annotations

from ._common import print_table

NAME = "backbones"
HELP = "list backbone presets: parameters, tokens and FLOPs per clip"


def add_parser(sub) -> None:
    b = sub.add_parser(NAME, help=HELP, description="Backbone presets with their parameters and tokens per clip.")
    b.set_defaults(func=run)


def run(args) -> int:
    from ..backbones.registry import list_presets

    print_table(list_presets())
    return 0
