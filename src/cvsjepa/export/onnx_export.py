"""ONNX: the full classifier (``model.onnx``: preprocessed video -> logits, raw probabilities) at the
run's frame count and crop, and the head alone (``head.onnx``: tokens -> logits), batch size free.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), opset :data:`OPSET`.
It traces V-JEPA 2's rotary position embeddings and the attentive head with a symbolic batch
dimension; the TorchScript exporter (``dynamo=False``) fails on the head's ``layer_norm`` over
``x.shape[-1:]`` once the batch is dynamic, and is deprecated. A LoRA adapter is merged into the
weights first (as in the bundle); frames and crop are fixed because the RoPE grid and the token count
depend on them.

Each file is checked with onnxruntime (CPU) against torch on the same seeded input, batch 2 and 3;
the largest absolute differences go into ``cvsjepa_export.json`` and an export above
:data:`~cvsjepa.export.folder.PARITY_TOLERANCE` fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import RunConfig
from ..errors import CheckpointError, ConfigError
from ..model import CVSClassifier
from .folder import PARITY_TOLERANCE
from .bundle import effective_backbone

log = logging.getLogger("cvsjepa")

OPSET = 18
MODEL_FILE, HEAD_FILE = "model.onnx", "head.onnx"
EXTRA = "pip install 'cvsjepa[onnx]'"


class VideoClassifier(nn.Module):
    """``video [B, T, 3, crop, crop]`` (preprocessed) -> ``(logits [B, 3], sigmoid(logits) [B, 3])``."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.backbone(video))
        return logits, torch.sigmoid(logits)


class TokenHead(nn.Module):
    """``tokens [B, N, D]`` -> ``logits [B, 3]`` (the head of a feature-store run, or of any run)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(tokens)


def _require() -> None:
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"--format onnx needs {', '.join(missing)}: {EXTRA}")


def _export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, outputs: list[str]) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed. Skipping torchvision::nms", x4
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # its progress lines and notices
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=OPSET,
                              input_names=[input_name], output_names=outputs,
                              dynamic_shapes={input_name: {0: batch}}, verbose=False)
    except Exception as e:  # torch.export / onnxscript cannot express something in this model
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise CheckpointError(f"the ONNX exporter could not export {path.stem} ({type(e).__name__}: {first}); "
                              f"--format safetensors-bundle works for every backbone") from e
    finally:
        quiet.setLevel(level)


def _check(module: nn.Module, path: Path, shape: tuple[int, ...], input_name: str) -> dict:
    """Run the ONNX file with onnxruntime and ``module`` with torch on the same inputs (batch 2 and 3)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    diffs: dict[str, float] = {}
    for b in (2, 3):
        x = torch.randn(b, *shape[1:], generator=gen)
        with torch.no_grad():
            ref = module(x)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = session.run(None, {input_name: x.numpy()})
        for o, r, g in zip(session.get_outputs(), ref, got):
            diffs[o.name] = max(diffs.get(o.name, 0.0), float(np.abs(g - r.numpy()).max()))
    worst = max(diffs.values())
    if not worst <= PARITY_TOLERANCE:
        raise CheckpointError(f"{path.name} differs from torch by {worst:.3g} (> {PARITY_TOLERANCE:g}) on the same "
                              f"input; it was not written")
    return {"file": path.name, "input": input_name, "input_shape": ["batch", *shape[1:]],
            "max_abs_diff": diffs, "checked_batches": [2, 3]}


def write_onnx(model: CVSClassifier, cfg: RunConfig, out: Path) -> dict:
    """``model.onnx`` and ``head.onnx`` in ``out``, each checked; returns what ``cvsjepa_export.json`` records."""
    _require()
    backbone = effective_backbone(model)
    crop, frames = backbone.crop_size, cfg.data.frames
    full = VideoClassifier(backbone, model.head).eval()
    video_shape = (2, frames, 3, crop, crop)
    log.info("exporting %s to ONNX (opset %d, torch.onnx dynamo exporter); this takes a while for a large backbone",
             backbone.name, OPSET)
    _export(full, torch.zeros(video_shape), out / MODEL_FILE, "video", ["logits", "probabilities"])
    full_check = _check(full, out / MODEL_FILE, video_shape, "video")
    head = TokenHead(model.head).eval()
    token_shape = (2, backbone.num_tokens(frames), backbone.embed_dim)
    _export(head, torch.zeros(token_shape), out / HEAD_FILE, "tokens", ["logits"])
    head_check = _check(head, out / HEAD_FILE, token_shape, "tokens")
    return {"exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}", "opset": OPSET,
            "lora_merged": backbone is not model.backbone, "model": {**full_check, "input_shape": [
                "batch", frames, 3, crop, crop]}, "head": head_check,
            "outputs": {"logits": "[B, 3] per criterion", "probabilities": "[B, 3] sigmoid(logits), not calibrated"}}
