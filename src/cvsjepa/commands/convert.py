"""`cvsjepa convert CKPT --out DIR`: Meta's V-JEPA 2 checkpoint -> a Hugging Face directory."""

from __future__ import annotations

import json

NAME = "convert"
HELP = "convert Meta's V-JEPA 2 checkpoint (vitl.pt, ...) into a Hugging Face directory"


def add_parser(sub) -> None:
    c = sub.add_parser(
        NAME, help=HELP,
        description="Convert an original V-JEPA 2 checkpoint as released by facebookresearch/vjepa2 (vitl.pt, "
                    "vith.pt, vitg.pt, vitg-384.pt) into a Hugging Face directory (config.json + model.safetensors, "
                    "README.md) that backbone.path=DIR loads quickly. The file is read with "
                    "torch.load(weights_only=True); every key must be used and every encoder weight filled. "
                    "Only the encoder is converted (the predictor is randomly initialised: classification never "
                    "uses it). backbone.path=CKPT also works directly, at the cost of converting on every load.")
    c.add_argument("checkpoint", metavar="CKPT", help="Meta checkpoint file (.pt)")
    c.add_argument("--out", required=True, help="directory to write (must not exist unless --overwrite)")
    c.add_argument("--preset", default="auto",
                   help="shape: auto (from the tensors; vitg vs vitg384 from the file name) or one of "
                        "tiny, vitl, vith, vitg, vitg384 (default: auto)")
    c.add_argument("--key", default="auto",
                   help="which encoder to take: auto (target_encoder if present, else encoder), target_encoder, "
                        "encoder, or '' for a flat state dict (default: auto)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    c.set_defaults(func=run)


def run(args) -> int:
    from ..backbones.meta import convert_checkpoint

    out = convert_checkpoint(args.checkpoint, args.out, preset=args.preset, key=args.key, overwrite=args.overwrite)
    note = json.loads((out / "cvsjepa_conversion.json").read_text())
    print(f"wrote {out} ({note['preset']}, encoder from {note['checkpoint_key']}); "
          f"use backbone.path={out}")
    return 0
