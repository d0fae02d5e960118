"""`cvsjepa convert CKPT --out DIR`: a Meta-format checkpoint (V-JEPA 2, SurgMotion, V-JEPA 2.1) -> a directory."""

from __future__ import annotations

import json

NAME = "convert"
HELP = "convert a Meta-format V-JEPA 2 / SurgMotion / V-JEPA 2.1 checkpoint (.pt) into a directory"


def add_parser(sub) -> None:
    c = sub.add_parser(
        NAME, help=HELP,
        description="Convert an original checkpoint into a directory (config.json + model.safetensors, README.md, "
                    "cvsjepa_conversion.json) that backbone.path=DIR loads quickly: V-JEPA 2 as released by "
                    "facebookresearch/vjepa2 (vitl.pt, vith.pt, vitg.pt, vitg-384.pt), SurgMotion "
                    "(SurgMotion-vitl.pt, SurgMotion-vitg-xformer.pt) and V-JEPA 2.1 "
                    "(vjepa2_1_vit{b,l}_dist_vitG_384.pt, vjepa2_1_vit{g,G}_384.pt). The family (V-JEPA 2 or 2.1) and "
                    "size are read from the tensors. The file is read with torch.load(weights_only=True); every key "
                    "must be used and every encoder weight filled, or nothing is written. Only the encoder is "
                    "converted (classification never runs the predictor). V-JEPA 2 / SurgMotion become a "
                    "transformers VJEPA2Model directory; V-JEPA 2.1 a cvsjepa VJEPA21Model directory "
                    "(backbone.name=vjepa21). backbone.path=CKPT also works directly, at the cost of converting "
                    "on every load.")
    c.add_argument("checkpoint", metavar="CKPT", help="Meta-format checkpoint file (.pt)")
    c.add_argument("--out", required=True, help="directory to write (must not exist unless --overwrite)")
    c.add_argument("--preset", default="auto",
                   help="shape: auto (from the tensors; presets with the same tensors, such as vitg, vitg384 and "
                        "surgmotion-vitg, told apart by the file name) or a preset of the detected family "
                        "(`cvsjepa backbones` lists them) (default: auto)")
    c.add_argument("--key", default="auto",
                   help="which encoder to take: auto (V-JEPA 2: target_encoder, else encoder; SurgMotion: encoder "
                        "first, as its authors' probing does; V-JEPA 2.1: ema_encoder, then target_encoder, then "
                        "encoder), a top-level key such as encoder, or '' for a flat state dict (default: auto)")
    c.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out directory written by an earlier `cvsjepa convert` (any other "
                        "non-empty folder is refused, never deleted)")
    c.set_defaults(func=run)


def run(args) -> int:
    from ..backbones.conversion import convert_checkpoint

    out = convert_checkpoint(args.checkpoint, args.out, preset=args.preset, key=args.key, overwrite=args.overwrite)
    note = json.loads((out / "cvsjepa_conversion.json").read_text())
    name = "" if note["family"] == "vjepa2" else f"backbone.name={note['family']} "
    print(f"wrote {out} ({note['family']} {note['preset']}, encoder from {note['checkpoint_key']}); "
          f"use {name}backbone.path={out}")
    return 0
