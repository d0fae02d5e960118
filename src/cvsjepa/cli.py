"""`cvsjepa` command line. Thin: parse arguments, load the config, call the library.

A mistake the user can fix (bad path, unknown config key, bad label file, mismatching checkpoint)
prints one line on stderr and exits with status 2; an interrupted run exits 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import CVSJepaError

log = logging.getLogger("cvsjepa")

CONFIG_HELP = ("CONFIG is a YAML file (e.g. configs/exp2_attention.yaml); every key can be overridden with "
               "dotted key=value pairs after it, e.g. data.root=/data/endoscapes train.epochs=2 out=runs/x. "
               "`backbone=tiny` is short for backbone.preset=tiny. An unknown key is an error; "
               "`cvsjepa config-keys` lists them all.")


def _split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """`CONFIG k=v ...` or just `k=v ...` (defaults + overrides)."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def cmd_train(args) -> int:
    from .config import load_config
    from .train.loop import train

    path, overrides = _split_config_args(args.config_and_overrides)
    cfg = load_config(path, overrides)
    result = train(cfg, progress=not args.no_progress)
    s = result.summary
    print(f"best val mAP {s['best_val_map']:.4f} at epoch {s['best_epoch']}"
          + (f" | test mAP {s['test_map']:.4f}" if s.get("test_map") is not None else "")
          + f" | run directory: {result.run_dir}")
    return 0


def cmd_synth(args) -> int:
    from .data.synth import write_synthetic_dataset

    summary = write_synthetic_dataset(Path(args.out), seed=args.seed, videos=tuple(args.videos),
                                      overwrite=args.overwrite, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), seed=args.seed, epochs=args.epochs, progress=not args.no_progress)
    return 0


def cmd_config_keys(args) -> int:
    from .config import all_keys

    for key, default in all_keys():
        print(f"{key} = {default!r}")
    return 0


def cmd_backbones(args) -> int:
    from .backbones.registry import list_presets

    rows = list_presets()
    cols = list(rows[0].keys()) if rows else []
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(widths[c]) for c in cols))
    return 0


def _fmt(v) -> str:
    if isinstance(v, int) and v > 10_000:
        return f"{v / 1e6:.1f}M"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cvsjepa",
        description="Critical View of Safety classifiers on V-JEPA 2 video features "
                    "(Endoscapes2023 layout). Start with `cvsjepa demo`.",
    )
    p.add_argument("--version", action="version", version=f"cvsjepa {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a CVS classifier; writes a run directory",
                       description="Train a CVS classifier and write a run directory (config.yaml, metrics.csv, "
                                   "summary.json, checkpoints/best, predictions, training_curve.png). " + CONFIG_HELP)
    t.add_argument("config_and_overrides", nargs="*", metavar="CONFIG [key=value ...]")
    t.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("synth", help="write a synthetic dataset in the Endoscapes2023 layout",
                       description="Write a SYNTHETIC dataset in exactly the Endoscapes2023 layout (1 fps 854x480 "
                                   "JPEGs, COCO JSONs with ds, all_metadata.csv, *_vids.txt, semseg PNGs, symlinked "
                                   "seg folders) with labels driven by drawn structures and 3 noisy raters, plus "
                                   "oracle.json (the best achievable mAP).")
    s.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--videos", type=int, nargs=3, default=[16, 6, 6], metavar=("TRAIN", "VAL", "TEST"),
                   help="videos per split (default: 16 6 6)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_synth)

    d = sub.add_parser("demo", help="synth a small dataset, train the tiny backbone + head, report mAP",
                       description="End to end on the embedded default: writes a synthetic dataset, trains the "
                                   "attentive head on a TINY RANDOM V-JEPA 2-shaped backbone (not V-JEPA weights), "
                                   "and prints val/test mAP next to the oracle and the label prevalence.")
    d.add_argument("--out", default="demo_runs", help="folder for the dataset and the run (default: demo_runs)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--epochs", type=int, default=None, help="override the demo's number of epochs")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)

    k = sub.add_parser("config-keys", help="list every config key with its default")
    k.set_defaults(func=cmd_config_keys)

    b = sub.add_parser("backbones", help="list backbone presets: parameters, tokens and FLOPs per clip")
    b.set_defaults(func=cmd_backbones)
    return p


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except CVSJepaError as e:
        print(f"cvsjepa: error: {e}", file=sys.stderr)
        return e.exit_code
    except FloatingPointError as e:
        print(f"cvsjepa: numerical error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("cvsjepa: interrupted; finished checkpoints and files are intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
