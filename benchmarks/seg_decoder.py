"""Segmentation decoders on synthetic masks: per-class test IoU of ``seg.decoder=coarse`` (two x2
upsamplings of the token grid) against ``fine`` (every token decodes its own patch of pixels).

    python benchmarks/seg_decoder.py --seeds 0 1                   # data.view=letterbox
    python benchmarks/seg_decoder.py --seeds 0 1 --view center     # twice the pixels per structure

For each seed: ``cvsjepa synth --seed s --seg-fraction 1 --seg-every 5`` (a mask on every CVS
keyframe of every video, the default framing), then per decoder one multi-task run on the tiny
random backbone, frozen, the log's 5 classes, ``data.view`` letterbox (the whole frame: the
synthetic anatomy is often outside the centre crop) or center (``--view``), 2-frame clips (the decoder reads the
keyframe's time step only), the default budget. Printed: test mIoU and IoU per class, the
constant-prediction floor, and the mean over seeds. Figures go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

COMMON = ["backbone=tiny", "seg.enabled=true", "adapt.mode=frozen", "data.frames=2", "head.num_heads=4",
          "head.mlp_hidden=128", "train.batch_size=16", "train.lr=1e-3", "seg.decoder_dim=64"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--decoders", nargs="+", default=["coarse", "fine"])
    p.add_argument("--view", default="letterbox", choices=["letterbox", "center"])
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import torch

    torch.set_num_threads(1)
    from cvsjepa.config import load_config
    from cvsjepa.data.synth import write_synthetic_dataset
    from cvsjepa.train.classifier import train

    work = args.work or Path(tempfile.mkdtemp(prefix="cvsjepa_seg_"))
    table: dict[str, list[dict]] = {d: [] for d in args.decoders}
    for s in args.seeds:
        data = work / f"segdata{s}"
        if not (data / "oracle.json").is_file():
            write_synthetic_dataset(data, seed=s, seg_fraction=1.0, seg_every_s=5, progress=False, occlusions=False)
        for dec in args.decoders:
            out = work / f"seg{s}_{dec}" if args.view == "letterbox" else work / f"seg{s}_{dec}_{args.view}"
            if not (out / "summary.json").is_file():
                train(load_config(None, [*COMMON, f"seg.decoder={dec}", f"data.view={args.view}", f"data.root={data}",
                                         f"out={out}", f"seed={s}"]), progress=False)
            seg = json.loads((out / "summary.json").read_text())["test_seg"]
            table[dec].append(seg)
            print(f"seed {s} {dec}: test mIoU {seg['miou']:.3f} (constant {seg['constant_miou']:.3f}) "
                  + " ".join(f"{k} {v:.3f}" for k, v in seg["iou"].items()), flush=True)
    names = list(table[args.decoders[0]][0]["iou"])
    print(f"\n| decoder | test mIoU | {' | '.join(names)} |\n|---|---|" + "---|" * len(names))
    for dec, rows in table.items():
        cells = [np.nanmean([r["iou"][n] for r in rows]) for n in names]
        miou = np.nanmean([r["miou"] for r in rows])
        print(f"| {dec} | {miou:.3f} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
