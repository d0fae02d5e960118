"""`cvsjepa train CONFIG [key=value ...]`."""

from __future__ import annotations

import json
import os

from ._common import CONFIG_HELP, load_run_config

NAME = "train"
HELP = "train a CVS classifier; writes a run directory"


def add_parser(sub) -> None:
    t = sub.add_parser(NAME, help=HELP,
                       description="Train a CVS classifier and write a run directory (config.yaml, metrics.csv, "
                                   "summary.json, checkpoints/best, predictions, training_curve.png). " + CONFIG_HELP)
    t.add_argument("config_and_overrides", nargs="*", metavar="CONFIG [key=value ...]")
    t.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    t.add_argument("--resume", metavar="RUN",
                   help="continue RUN (wherever it is now, auto-named or moved) from its last complete epoch with "
                        "its saved config.yaml; key=value overrides may change only how it runs (train.device, "
                        "train.threads, data.num_workers, data.frame_cache_mb)")
    t.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N processes on this node through torchrun (DDP; one GPU each, or gloo on "
                        "CPU); train.batch_size is the global batch. For several nodes call torchrun yourself: "
                        "see docs/scaling.md")
    t.add_argument("--seeds", type=int, nargs="+", metavar="K",
                   help="train the config once per seed K into OUT/seed<K>/ and write OUT/group.json: mean and sd "
                        "of the seeds' val/test mAP and APs, and the ensemble of their probabilities (also "
                        "OUT/predictions_<split>.csv). Running it again skips finished seeds and resumes an "
                        "interrupted one. `cvsjepa runs` shows the group as mean +- sd")
    t.add_argument("--dry-run", action="store_true",
                   help="build the model (random weights when backbone.path is empty) without data or training "
                        "and print one JSON object: trainable_params, total_params, breakdown by part")
    t.set_defaults(func=run)


def _launch_torchrun(nproc: int) -> int:
    """Re-run this command under torchrun with ``nproc`` processes (same arguments, minus --nproc)."""
    import subprocess
    import sys

    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        argv.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "cvsjepa", *argv]
    return subprocess.call(cmd)


def run(args) -> int:
    if args.seeds and (args.nproc > 1 or "RANK" in os.environ):
        from ..errors import ConfigError

        raise ConfigError("--seeds trains the seeds one after the other in this process; for DDP, run one "
                          "`cvsjepa train --nproc N ... seed=K out=GROUP/seedK` per seed")
    if args.nproc > 1:
        return _launch_torchrun(args.nproc)
    from ..train.build import dry_run
    from ..train.classifier import train

    cfg = load_run_config(args)
    if args.dry_run:
        print(json.dumps(dry_run(cfg), indent=2))
        return 0
    if args.seeds:
        return _run_seeds(cfg, args.seeds, not args.no_progress)
    result = train(cfg, progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    s = result.summary
    print(f"best val mAP {s['best_val_map']:.4f} at epoch {s['best_epoch']}"
          + (f" | test mAP {s['test_map']:.4f}" if s.get("test_map") is not None else "")
          + f" | run directory: {result.run_dir}")
    return 0


def _run_seeds(cfg, seeds: list[int], progress: bool) -> int:
    from ..train.seeds import train_seeds

    group, doc = train_seeds(cfg, seeds, progress)
    m, ens = doc["metrics"], doc["ensemble"]
    fmt = (lambda d: "n/a" if d["mean"] is None else f"{d['mean']:.4f}" + (f" +- {d['sd']:.4f}" if d["sd"] is not None
                                                                               else ""))  # noqa: E731
    print(f"seeds {', '.join(map(str, seeds))}: best val mAP {fmt(m['best_val_map'])} | test mAP {fmt(m['test_map'])}"
          + "".join(f" | ensemble {role} mAP {ens[role]['map']:.4f}" for role in ("val", "test") if role in ens
                    and ens[role]["map"] is not None)
          + f" | group directory: {group}")
    return 0
