"""Python API for inference: a trained CVS classifier with its decision thresholds.

    from cvsjepa import CVSModel
    m = CVSModel.from_run("runs/exp2")            # or "runs/exp2/checkpoints/best"
    m = CVSModel.from_run("runs/exp2", backbone_path="/models/vjepa2-vitl")  # the backbone moved since training
    tl = m.predict_video("case_042.mp4")         # a Timeline: tl.times, tl.probs [T, 3], tl.cvs_reached_at
    tl.save("case_042_timeline")                 # timeline.csv, timeline.json, timeline.png
    probs = m.predict_clip(frames)               # uint8 [T, H, W, 3], or preprocessed [T, 3, crop, crop]

A checkpoint directory (``model.safetensors`` + ``config.json``, as ``train`` writes into
``RUN/checkpoints/best``) is all that is needed: the backbone is rebuilt from the recorded config
(a random preset, or the local weights directory it names, or ``backbone_path`` when it moved: the
weights are recognised by their fingerprint, not their path). Every file's sha256 is checked on
load, and a non-finite probability is a :class:`~cvsjepa.errors.CheckpointError` naming the
checkpoint, never a result. Thresholds, first found wins:

1. ``RUN/thresholds.json`` (written by ``cvsjepa evaluate``): ``{"thresholds": [t1, t2, t3]}``, a
   ``{"C1": t1, ...}`` mapping (under ``"thresholds"`` or at the top), or a plain list;
2. ``CKPT/thresholds.json``: a copy cached there by an earlier call, so the checkpoint directory
   alone is enough later;
3. computed from ``RUN/predictions_val.csv`` (``prob_C*``, ``label_C*``) by balanced accuracy
   (:func:`cvsjepa.evaluate.thresholds.choose_thresholds`);
4. 0.5 each, with a warning.

Results of 1 and 3 are cached into ``CKPT/thresholds.json`` (best effort: a read-only directory
only logs a warning).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from .criteria import CRITERIA
from .checkpoint import check_probabilities, load_classifier
from .data.transforms import preprocess_frames
from .errors import CheckpointError
from .io import atomic_write_json
from .predict.timeline import Timeline, build_timeline
from .data.video import open_frames
from .rundir import THRESHOLDS_FILE, RunDir, locate_checkpoint, predictions_file
from .runtime import configure_threads, resolve_device

log = logging.getLogger("cvsjepa")

TRAINING_FPS = 1.0  # Endoscapes2023 frames are extracted at 1 fps; configs have no rate key


class CVSModel:
    """A classifier (backbone + head) in eval mode, its run config and its thresholds."""

    def __init__(self, model, cfg, meta: dict, thresholds: tuple[float, float, float], *,
                 threshold_source: str, checkpoint_dir: Path, device: torch.device):
        self.model, self.cfg, self.meta = model, cfg, meta
        self.thresholds = thresholds
        self.threshold_source = threshold_source
        self.checkpoint_dir = checkpoint_dir
        self.device = device

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_run(cls, path: str | Path, device: str | torch.device = "auto",
                 thresholds: list[float] | None = None, backbone_path: str | Path | None = None) -> "CVSModel":
        """Load from a run directory or a checkpoint directory; ``thresholds`` overrides the files;
        ``backbone_path``: where the backbone weights are now, if they moved since training."""
        run_dir, ckpt_dir = locate_checkpoint(Path(path))
        device = resolve_device(device)
        configure_threads()
        model, cfg, meta = load_classifier(ckpt_dir, device=device, backbone_path=backbone_path)
        if thresholds is not None:
            found, source = _validate(thresholds, "thresholds argument"), "given"
        else:
            found, source = resolve_thresholds(run_dir, ckpt_dir)
        return cls(model, cfg, meta, found, threshold_source=source, checkpoint_dir=ckpt_dir, device=device)

    # ------------------------------------------------------------------ geometry
    @property
    def crop(self) -> int:
        return self.model.backbone.crop_size

    @property
    def frames(self) -> int:
        return self.cfg.data.frames

    @property
    def stride(self) -> int:
        return self.cfg.data.stride

    @property
    def fps(self) -> float:
        return TRAINING_FPS

    @property
    def criteria(self) -> tuple[str, ...]:
        return tuple(self.cfg.data.criteria)

    def describe(self) -> dict:
        return {"checkpoint": str(self.checkpoint_dir), "backbone": self.model.backbone.name,
                "backbone_path": self.cfg.backbone.path,
                "crop": self.crop, "frames": self.frames, "stride": self.stride, "training_fps": self.fps,
                "thresholds": list(self.thresholds), "threshold_source": self.threshold_source,
                "device": str(self.device)}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_clip(self, clip: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Probabilities (sigmoid of the logits) for one clip ``[3]`` or a batch ``[B, 3]``.

        ``clip``: preprocessed float ``[T, 3, crop, crop]`` / ``[B, T, 3, crop, crop]``, or raw uint8
        frames ``[T, H, W, 3]`` / ``[B, T, H, W, 3]`` (preprocessed here, as in training). T is the
        clip length; the model was trained on ``self.frames`` frames ``self.stride`` s apart.
        """
        x = torch.as_tensor(clip)
        if x.dtype == torch.uint8:
            if x.ndim not in (4, 5) or x.shape[-1] != 3:
                raise ValueError(f"uint8 frames must be [T, H, W, 3] or [B, T, H, W, 3], got {tuple(x.shape)}")
            single = x.ndim == 4
            x = torch.stack([preprocess_frames(c, self.crop) for c in (x[None] if single else x)])
        else:
            if x.ndim not in (4, 5):
                raise ValueError(f"a preprocessed clip must be [T, 3, crop, crop] or [B, T, 3, crop, crop], "
                                 f"got {tuple(x.shape)}")
            single = x.ndim == 4
            x = x[None] if single else x
        probs = self._probs(x)
        return probs[0] if single else probs

    def _probs(self, video: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, crop, crop] -> [B, 3], exactly as ``evaluate.inference.predict_loader`` scores clips."""
        video = video.to(self.device).float()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                             enabled=self.device.type == "cuda"):
            logits = self.model({"video": video}).float()
        return check_probabilities(torch.sigmoid(logits).cpu(), self.checkpoint_dir)

    def predict_video(self, path: str | Path, fps: float | None = None, consecutive: float = 3.0,
                      batch_size: int = 8, progress: bool = False) -> Timeline:
        """A CVS timeline for a video file or a folder of frames (see :mod:`cvsjepa.predict`).

        ``fps``: the sampling rate (default: the training rate, 1 fps); for a folder, the rate its
        frames were taken at. ``consecutive``: seconds all three criteria must pass in a row.
        A file that cannot be opened raises :class:`~cvsjepa.errors.DataError`; one that fails
        part way returns the timeline so far with ``complete=False`` and the error.
        """
        if not consecutive > 0:
            raise ValueError(f"consecutive must be > 0 seconds, got {consecutive}")
        with open_frames(path, fps or self.fps) as reader:
            return build_timeline(reader, self._probs, crop=self.crop, frames=self.frames, stride=self.stride,
                                  thresholds=self.thresholds, consecutive_s=consecutive, batch_size=batch_size,
                                  progress=progress, model_info=self.describe(), criteria=self.criteria)


# ---------------------------------------------------------------------- checkpoints and thresholds


def resolve_thresholds(run_dir: RunDir | None, ckpt_dir: Path) -> tuple[tuple[float, float, float], str]:
    """The decision thresholds and where they came from (order in the module docstring)."""
    if run_dir is not None and (run_dir / THRESHOLDS_FILE).is_file():
        found = read_thresholds(run_dir / THRESHOLDS_FILE)
        _cache(ckpt_dir, found, f"copied from {run_dir / THRESHOLDS_FILE}")
        return found, str(run_dir / THRESHOLDS_FILE)
    if (ckpt_dir / THRESHOLDS_FILE).is_file():
        return read_thresholds(ckpt_dir / THRESHOLDS_FILE), str(ckpt_dir / THRESHOLDS_FILE)
    preds = run_dir / predictions_file("val") if run_dir is not None else None
    if preds is not None and preds.is_file():
        found = thresholds_from_predictions(run_dir)
        _cache(ckpt_dir, found, f"balanced accuracy on {preds}")
        return found, f"computed from {preds} (balanced accuracy)"
    log.warning("no %s and no %s next to %s: using 0.5 for every criterion (run `cvsjepa evaluate` on the run to "
                "choose them on val)", THRESHOLDS_FILE, predictions_file("val"), ckpt_dir)
    return (0.5, 0.5, 0.5), "default 0.5 (no thresholds found)"


def read_thresholds(path: Path) -> tuple[float, float, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} cannot be read as JSON ({e})") from e
    if isinstance(data, dict) and "thresholds" in data:
        data = data["thresholds"]
    if isinstance(data, dict):  # {"C1": t1, "C2": t2, "C3": t3}
        data = [data.get(c) for c in CRITERIA]
    return _validate(data, str(path))


def thresholds_from_predictions(run: RunDir) -> tuple[float, float, float]:
    """Per criterion, the balanced-accuracy threshold on the run's val predictions."""
    from .evaluate.thresholds import choose_thresholds

    preds = run.read_predictions("val", tuple(run.read_config().data.criteria))
    if not preds["probs"]:
        raise CheckpointError(f"{run / predictions_file('val')} holds no predictions; cannot choose thresholds from it")
    return _validate(choose_thresholds(torch.tensor(preds["probs"]), torch.tensor(preds["labels"])),
                     str(run / predictions_file("val")))


def _validate(values, where: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in out):
        raise CheckpointError(f"{where}: thresholds must be 3 numbers in [0, 1] (C1, C2, C3), got {values!r}")
    return out  # type: ignore[return-value]


def _cache(ckpt_dir: Path, thresholds: tuple[float, float, float], source: str) -> None:
    path = ckpt_dir / THRESHOLDS_FILE
    try:
        if path.is_file() and read_thresholds(path) == thresholds:
            return
    except CheckpointError:
        pass  # a damaged cache is simply rewritten
    try:
        atomic_write_json(path, {"thresholds": list(thresholds), "criteria": list(CRITERIA), "source": source})
    except OSError as e:
        log.warning("could not cache the thresholds into %s (%s); the run directory is still needed", path, e)
