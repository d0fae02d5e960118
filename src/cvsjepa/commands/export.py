"""`cvsjepa export RUN --format safetensors-bundle|onnx --out DIR [--overwrite]`."""

from __future__ import annotations

from typing import get_args

from ..config import ExportFormat
from ._common import add_backbone_path_arg

NAME = "export"
HELP = "export a run's best model: a self-contained safetensors bundle, or ONNX (checked with onnxruntime)"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME, help=HELP,
        description="Write RUN's best checkpoint as a folder that travels on its own. safetensors-bundle: the "
                    "backbone weights (a LoRA adapter merged into them) in DIR/backbone, the head, config.json "
                    "with content hashes of every file, so that `CVSModel.from_run(DIR)` and `cvsjepa predict "
                    "VIDEO --run DIR` need no other path; the bundle is loaded back and compared with the run "
                    "before it is kept. onnx: DIR/model.onnx (preprocessed video [B, frames, 3, crop, crop] at the "
                    "run's frames and crop -> logits and raw probabilities) and DIR/head.onnx (tokens [B, N, D] -> "
                    "logits), exported with torch.onnx (dynamo) and checked with onnxruntime against torch on the "
                    "same input (needs pip install 'cvsjepa[onnx]'). Both hold the model card (README.md), "
                    "thresholds.json, calibration.json, preprocessing.json and cvsjepa_export.json (source, "
                    "parity checks). An existing DIR is replaced only with --overwrite, and only when it is empty "
                    "or an earlier export.")
    p.add_argument("run", metavar="RUN", help="run directory (or its checkpoints/best directory)")
    p.add_argument("--format", required=True, choices=get_args(ExportFormat), help="what to write")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (must not exist, see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DIR when it is an earlier export (holds cvsjepa_export.json) or empty; a folder "
                        "export did not write is never replaced")
    add_backbone_path_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..export import export_run
    from ..runtime import configure_threads

    configure_threads()
    res = export_run(args.run, args.format, args.out, overwrite=args.overwrite, backbone_path=args.backbone_path)
    n = res.note
    if args.format == "onnx":
        diffs = {**n["model"]["max_abs_diff"], **{f"head {k}": v for k, v in n["head"]["max_abs_diff"].items()}}
        print(f"wrote {res.out}: model.onnx + head.onnx (opset {n['opset']}); onnxruntime vs torch max abs diff "
              + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()))
    else:
        backbone = "backbone weights included" if n["backbone_shipped"] else "random preset rebuilt from its seed"
        print(f"wrote {res.out}: a self-contained bundle ({backbone}{', LoRA merged' if n['lora_merged'] else ''}); "
              f"bundle vs run max abs logit diff {n['max_abs_logit_diff']:.2g}")
    return 0
