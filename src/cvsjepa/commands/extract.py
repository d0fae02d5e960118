"""`cvsjepa extract CONFIG features.store=DIR [key=value ...]`."""

from __future__ import annotations

from ._common import CONFIG_HELP, split_config_args

NAME = "extract"
HELP = "run the frozen backbone once over every keyframe clip; write a feature store"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME, help=HELP,
        description="Run the frozen backbone once over every keyframe clip of the chosen splits and write the "
                    "tokens to a feature store (features.store=DIR): checksummed shards listed in a manifest, keyed "
                    "by everything that changes the tokens. Interrupted? Run the same command again: it resumes "
                    "after the last finished shard. Then train from it with `cvsjepa train CONFIG "
                    "features.store=DIR ...` or `cvsjepa sweep`. Options: features.dtype (float16|bfloat16|float32), "
                    "features.pool (none|avg2x2), features.views (1 = center crop; up to 9 shifted crops), "
                    "features.splits (default: data.train/val/test_split), features.shard_clips, "
                    "features.batch_size (clips per forward), data.num_workers (decoding processes). "
                    "features.seconds=true also stores one embedding per 1 fps second of every video (the causal "
                    "clip ending there, pooled: features.second_pooler=mean, or =run with features.pooler_run=RUN, "
                    "a stage-1 run's head), for temporal heads (head.type=temporal_gated|temporal_gru); a store "
                    "keeps the embeddings of each pooler side by side. " + CONFIG_HELP)
    p.add_argument("config_and_overrides", nargs="*", metavar="CONFIG [key=value ...]")
    p.add_argument("--verify", action="store_true",
                   help="only check the sha256 of every shard of features.store (no extraction)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import load_config
    from ..features.extract import extract, verify_store

    path, overrides = split_config_args(args.config_and_overrides)
    cfg = load_config(path, overrides)
    if args.verify:
        if not cfg.features.store:
            from ..errors import ConfigError

            raise ConfigError("--verify needs features.store=DIR")
        store = verify_store(cfg.features.store, progress=not args.no_progress)
        n = sum(len(e["sample_ids"]) for e in store.splits.values())
        seconds = sum(len(e["sample_ids"]) for a in store.seconds.values() for e in a["splits"].values())
        print(f"feature store {store.root}: {len(store.shard_paths(everything=True))} shards, {n} clips"
              + (f" and {seconds} per-second embeddings" if seconds else "") + ": every checksum matches")
        return 0
    result = extract(cfg, progress=not args.no_progress)
    s, layout = result.stats, result.layout
    print(f"feature store {result.store}: {result.total_clips} clips ({s.clips} extracted now, {s.clips_before} "
          f"already stored), {layout.get('tokens_per_clip')} tokens x {layout.get('embed_dim')} "
          f"{layout.get('dtype')} x {layout.get('views')} view(s) per clip")
    if result.seconds is not None:
        s, layout = result.seconds, result.seconds_layout
        print(f"  per-second embeddings ({layout.get('pooler')}): {result.seconds_total} seconds ({s.clips} extracted "
              f"now, {s.clips_before} already stored), {layout.get('embed_dim')} {layout.get('dtype')} per second")
    return 0
