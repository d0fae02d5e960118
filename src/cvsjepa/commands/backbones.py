"""`cvsjepa backbones`."""

from __future__ import annotations

import json

from ._common import print_table

NAME = "backbones"
HELP = "list backbone presets: parameters, tokens and FLOPs per clip"
_COLUMNS = ("family", "name", "params", "embed_dim", "layers", "heads", "crop_size", "clip_frames",
            "tokens_per_clip", "tflops_per_clip", "weights")


def add_parser(sub) -> None:
    b = sub.add_parser(NAME, help=HELP, description=(
        "Backbone presets of every family (backbone.name / backbone.preset) with encoder parameters, tokens per "
        "clip and encoder forward TFLOPs per clip (2 x multiply-accumulates, computed from the shape; predictor "
        "excluded). Families: vjepa2 (V-JEPA 2 and SurgMotion), vjepa21 (V-JEPA 2.1, 384 px), videomae, and the "
        "per-frame image models dinov2 and dinov3, which run each frame separately. VideoMAE runs only at its own "
        "clip length, so it is listed there whatever --frames says."))
    b.add_argument("--frames", type=int, default=16, help="frames per clip (default: 16)")
    b.add_argument("--json", action="store_true", help="print the full rows as JSON instead of a table")
    b.set_defaults(func=run)


def run(args) -> int:
    from ..backbones.registry import list_presets
    from ..errors import ConfigError

    if args.frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {args.frames}")
    rows = list_presets(args.frames)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = []
    for r in rows:
        row = {c: r.get(c) for c in _COLUMNS}
        row["params"] = f"{r['params'] / 1e6:.1f}M" if r["params"] >= 1e6 else f"{r['params'] / 1e3:.0f}k"
        row["tflops_per_clip"] = _tflops(r["flops_per_clip"])
        table.append(row)
    print_table(table)
    return 0


def _tflops(flops: int) -> str:
    t = flops / 1e12
    return f"{t:.3g}" if t >= 0.01 else f"{t:.1e}"
