"""`cvsjepa config-keys`: every config key, its default, its one-line description (the comment on its
field in config.py, read by ``config_docs.key_docs``) and, for an enumerated key, its choices."""

from __future__ import annotations

NAME = "config-keys"
HELP = "list every config key with its default, what it does and its choices"


def add_parser(sub) -> None:
    k = sub.add_parser(NAME, help=HELP,
                       description="Every config key with its default value, a one-line description and, for a "
                                   "key with a fixed set of values, its choices. Set any of them in a YAML config "
                                   "or as key=value after the config on the command line.")
    k.add_argument("prefix", nargs="?", default="", help="only keys starting with this, e.g. train or train.lr")
    k.set_defaults(func=run)


def lines(prefix: str = "") -> list[str]:
    from ..config import all_keys, choices
    from ..config_docs import key_docs

    docs = key_docs()
    out = []
    for key, default in all_keys():
        if not key.startswith(prefix):
            continue
        allowed = choices(key)
        doc = docs.get(key, "")
        if allowed:
            doc = f"{doc} [choices: {' | '.join(allowed)}]".strip()
        out.append(f"{key} = {default!r}" + (f"  # {doc}" if doc else ""))
    return out


def run(args) -> int:
    from ..errors import ConfigError

    found = lines(args.prefix)
    if not found:
        raise ConfigError(f"no config key starts with {args.prefix!r}; `cvsjepa config-keys` lists them all")
    print("\n".join(found))
    return 0
