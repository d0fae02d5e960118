"""`cvsjepa train CONFIG [key=value ...]`."""

from __future__ import annotations

import json

from ._common import CONFIG_HELP, split_config_args

NAME = "train"
HELP = "train a CVS classifier; writes a run directory"


def add_parser(sub) -> None:
    t = sub.add_parser(NAME, help=HELP,
                       description="Train a CVS classifier and write a run directory (config.yaml, metrics.csv, "
                                   "summary.json, checkpoints/best, predictions, training_curve.png). " + CONFIG_HELP)
    t.add_argument("config_and_overrides", nargs="*", metavar="CONFIG [key=value ...]")
    t.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    t.add_argument("--resume", metavar="RUN",
                   help="continue RUN from its last complete epoch with its saved config.yaml "
                        "(same as: cvsjepa train RUN/config.yaml out=RUN resume=true)")
    t.add_argument("--dry-run", action="store_true",
                   help="build the model (random weights when backbone.path is empty) without data or training "
                        "and print one JSON object: trainable_params, total_params, breakdown by part")
    t.set_defaults(func=run)


def run(args) -> int:
    from ..config import load_config
    from ..errors import ConfigError
    from ..train.loop import dry_run, train

    path, overrides = split_config_args(args.config_and_overrides)
    if args.resume:
        if path:
            raise ConfigError("--resume RUN takes the config from RUN/config.yaml; do not pass a config file too")
        path, overrides = f"{args.resume}/config.yaml", [*overrides, f"out={args.resume}", "resume=true"]
    cfg = load_config(path, overrides)
    if args.dry_run:
        print(json.dumps(dry_run(cfg), indent=2))
        return 0
    result = train(cfg, progress=not args.no_progress)
    s = result.summary
    print(f"best val mAP {s['best_val_map']:.4f} at epoch {s['best_epoch']}"
          + (f" | test mAP {s['test_map']:.4f}" if s.get("test_map") is not None else "")
          + f" | run directory: {result.run_dir}")
    return 0
