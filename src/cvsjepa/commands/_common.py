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


def load_run_config(args):
    """The config of ``train``/``sweep``: ``CONFIG [key=value ...]``, or with ``--resume RUN`` the run's
    own config.yaml (plus overrides, which the run then checks) with ``out=RUN resume=true``."""
    from ..config import load_config
    from ..errors import ConfigError
    from ..rundir import CONFIG_FILE, RunDir

    path, overrides = split_config_args(args.config_and_overrides)
    if getattr(args, "resume", None):
        if path:
            raise ConfigError(f"--resume RUN takes the config from RUN/{CONFIG_FILE}; do not pass a config file too")
        run = RunDir.open(args.resume)
        path, overrides = run / CONFIG_FILE, [*overrides, f"out={args.resume}", "resume=true"]
    return load_config(path, overrides)


def add_reopen_args(parser) -> None:
    """How a finished run is re-opened (``cvsjepa.reopen.Reopen``): shared by evaluate and diagnose."""
    parser.add_argument("--data-root", default=None, help="dataset root, if it moved since training")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per forward (default: the run's)")
    add_backbone_path_arg(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_backbone_path_arg(parser) -> None:
    parser.add_argument("--backbone-path", default=None, metavar="DIR",
                        help="where the run's backbone weights are now, if they moved since training (a local "
                             "weights directory or Meta .pt); recognised by their fingerprint, not their path")


def reopen_from_args(args):
    from ..errors import ConfigError
    from ..reopen import Reopen

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    return Reopen(data_root=args.data_root, device=args.device, batch_size=args.batch_size,
                  progress=not args.no_progress, backbone_path=args.backbone_path)


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
