"""`cvsjepa` command line. Thin: discover the subcommands in `cvsjepa.commands`, parse, dispatch.

A mistake the user can fix (bad path, unknown config key, bad label file, mismatching checkpoint)
prints one line on stderr and exits with status 2; so does a place the command cannot write (no
permission, read-only, disk full); a numerical failure exits 3; Ctrl-C exits 130.

Python warnings (a criterion without positives, a library's notice) become one logged line each,
without the source line Python would print, and each distinct message is said once per command.
Nothing may reach the network: the Hugging Face libraries are put in offline mode before any of
them is imported (a user who exported ``HF_HUB_OFFLINE=0`` keeps that choice).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import pkgutil
import sys
import warnings

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # before transformers/peft/huggingface_hub load
    os.environ.setdefault(_var, "1")

from .version import __version__

from . import commands
from .errors import CVSJepaError

log = logging.getLogger("cvsjepa")


def _command_modules():
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"{commands.__name__}.{n}") for n in names]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cvsjepa",
        description="Critical View of Safety classifiers on V-JEPA 2 video features "
                    "(Endoscapes2023 and SAGES CVS Challenge 2024 layouts). Start with `cvsjepa demo`.",
    )
    p.add_argument("--version", action="version", version=f"cvsjepa {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _command_modules():
        module.add_parser(sub)
    for command in sub.choices.values():  # one knob for every command
        command.add_argument("--threads", type=int, default=None, metavar="N",
                             help="CPU threads for torch in this process (default: train.threads, else "
                                  "OMP_NUM_THREADS, else one per usable core left after data workers, 1 on a "
                                  "machine of 2 cores or fewer; see docs/benchmarks.md)")
    return p


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Like ``parse_args``, but ``key=value`` overrides may also come after options
    (``cvsjepa train CONFIG --no-progress train.epochs=2``): argparse stops at the first option."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "config_and_overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.config_and_overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


# Errors of the place a command writes to (or reads from), not of cvsjepa: one line, like a user mistake.
_ENVIRONMENT_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                       errno.EISDIR, errno.ENAMETOOLONG)


def _log_warnings():
    """A ``warnings.showwarning`` that logs each distinct message once, as one line."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message).strip()
        if text not in seen:
            seen.add(text)
            log.warning("warning: %s", text)

    return show


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        with warnings.catch_warnings():  # restored on return: callers of main() keep their own handling
            warnings.showwarning = _log_warnings()
            if args.threads is not None:
                from .runtime import set_cli_threads

                set_cli_threads(args.threads)
            return args.func(args)
    except CVSJepaError as e:
        print(f"cvsjepa: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        log.debug("", exc_info=True)  # -v: the traceback, for a bug report
        what = f"{e.filename}: " if e.filename else ""
        hint = ("free space (or raise the quota) and run again" if e.errno in (errno.ENOSPC, errno.EDQUOT) else
                "choose a location this user may write to (or fix its permissions) and run again")
        print(f"cvsjepa: error: {what}{e.strerror or e}; {hint}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"cvsjepa: numerical error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("cvsjepa: interrupted; finished checkpoints and files are intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
