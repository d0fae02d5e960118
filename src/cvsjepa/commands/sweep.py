"""`cvsjepa sweep CONFIG features.store=DIR [key=value ...]`."""

from __future__ import annotations

from ._common import CONFIG_HELP, load_run_config

NAME = "sweep"
HELP = "train K heads at once from a feature store (lr x weight-decay grid); keep the best on val"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME, help=HELP,
        description="Train K = len(sweep.lrs) x len(sweep.weight_decays) heads at once on one pass over the "
                    "stored tokens of features.store=DIR (write it with `cvsjepa extract`), each with its own "
                    "lr and weight decay and the same seed, schedule and batches. The head with the best val mAP "
                    "is scored on test and saved as the run's checkpoints/best; sweep.csv records every head's "
                    "val mAP per epoch. Default grid: the official V-JEPA 2 probe grid, lr {5e-3, 3e-3, 1e-3, "
                    "3e-4, 1e-4} x wd {0.01, 0.1, 0.4, 0.8}; e.g. 'sweep.lrs=[1e-3,3e-4]'. " + CONFIG_HELP)
    p.add_argument("config_and_overrides", nargs="*", metavar="CONFIG [key=value ...]")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--resume", metavar="RUN",
                   help="continue the sweep in RUN from its last complete epoch with its saved config.yaml")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train.sweep import sweep

    cfg = load_run_config(args)
    result = sweep(cfg, progress=not args.no_progress)
    s = result.summary
    w = s["sweep"]["winner"]
    print(f"{s['sweep']['k']} heads; winner lr {w['lr']:g} wd {w['weight_decay']:g}: val mAP {s['best_val_map']:.4f} "
          f"at epoch {s['best_epoch']}" + (f" | test mAP {s['test_map']:.4f}" if s.get("test_map") is not None else "")
          + f" | run directory: {result.run_dir}")
    return 0
