"""`cvsjepa config-keys`."""

from __future__ import annotations

NAME = "config-keys"
HELP = "list every config key with its default"


def add_parser(sub) -> None:
    k = sub.add_parser(NAME, help=HELP, description="Every config key with its default value.")
    k.set_defaults(func=run)


def run(args) -> int:
    from ..config import all_keys

    for key, default in all_keys():
        print(f"{key} = {default!r}")
    return 0
