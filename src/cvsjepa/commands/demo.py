"""`cvsjepa demo`."""

from __future__ import annotations

from pathlib import Path

NAME = "demo"
HELP = "synth a small dataset, train the tiny backbone + head, report mAP"


def add_parser(sub) -> None:
    d = sub.add_parser(NAME, help=HELP,
                       description="End to end on the embedded default: writes a synthetic dataset, extracts the "
                                   "tokens of a TINY RANDOM V-JEPA 2-shaped backbone (not V-JEPA weights) over three "
                                   "crops of every clip into a feature store, trains the attentive head from it with "
                                   "the default budget, and prints val/test mAP next to the oracle and the label "
                                   "prevalence.")
    d.add_argument("--out", default="demo_runs", help="folder for the dataset and the run (default: demo_runs)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--epochs", type=int, default=None,
                   help="train exactly this many epochs instead of the default budget (train.min_steps floor)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo

    run_demo(Path(args.out), seed=args.seed, epochs=args.epochs, progress=not args.no_progress)
    return 0
