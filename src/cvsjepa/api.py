"""Python API for inference: a trained CVS classifier with its calibration and decision rule.

    from cvsjepa import CVSModel
    m = CVSModel.from_run("runs/exp2")            # or "runs/exp2/checkpoints/best"; policy="specificity"
    m = CVSModel.from_run("runs/exp2", backbone_path="/models/vjepa2-vitl")  # the backbone moved since training
    tl = m.predict_video("case_042.mp4")         # a Timeline: tl.times, tl.probs [T, 3], tl.cvs_reached_at
    tl.save("case_042_timeline")                 # timeline.csv, timeline.json, timeline.png
    probs = m.predict_clip(frames)               # uint8 [T, H, W, 3], or preprocessed [T, 3, crop, crop]
    s = m.stream(); p = s(clips)                 # a temporal run, live: the next seconds' clips -> probabilities

A checkpoint directory (``model.safetensors`` + ``config.json``, as ``train`` writes into
``RUN/checkpoints/best``) is all that is needed: the backbone is rebuilt from the recorded config
(a random preset, or the local weights directory it names, or ``backbone_path`` when it moved: the
weights are recognised by their fingerprint, not their path). Every file's sha256 is checked on
load, and a non-finite probability is a :class:`~cvsjepa.errors.CheckpointError` naming the
checkpoint, never a result. The thresholds document, its policies and its calibration are found as
:mod:`cvsjepa.predict.operating` says (``RUN/thresholds.json``, then ``CKPT/thresholds.json``, then
computed from ``RUN/predictions_val.csv``, then 0.5 with a warning). Probabilities returned are
**calibrated** when the document holds a calibration (``m.calibration``; ``raw=True`` gives the
model's own sigmoid outputs).

A temporal run (``head.type=temporal_*``) scores a second from its history: ``predict_video``
streams it (:mod:`cvsjepa.predict.stream`: each second's clip is embedded and pushed into the head's
rolling state, memory flat in video length), ``stream()`` gives that state for a live feed, and
``predict_clip`` (one clip, no history) is refused. Its checkpoint holds the stage-1 pooler's weights,
so the checkpoint directory (and the backbone) is still all it needs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .checkpoint import check_probabilities, load_classifier
from .data.transforms import preprocess_frames, view_count
from .predict.operating import Operating, resolve_operating
from .predict.timeline import Timeline, build_timeline
from .data.video import open_frames
from .rundir import locate_checkpoint
from .runtime import configure_threads, resolve_device

log = logging.getLogger("cvsjepa")

TRAINING_FPS = 1.0  # Endoscapes2023 frames are extracted at 1 fps; configs have no rate key


class CVSModel:
    """A classifier (backbone + head) in eval mode, its run config, calibration and decision rule."""

    def __init__(self, model, cfg, meta: dict, operating: Operating, *, checkpoint_dir: Path, device: torch.device):
        self.model, self.cfg, self.meta = model, cfg, meta
        self.operating = operating
        self.checkpoint_dir = checkpoint_dir
        self.device = device

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_run(cls, path: str | Path, device: str | torch.device = "auto",
                 thresholds: list[float] | None = None, policy: str | None = None,
                 backbone_path: str | Path | None = None) -> "CVSModel":
        """Load from a run directory or a checkpoint directory. ``policy``: the operating point that
        declares CVS (None: ``specificity``, see :mod:`cvsjepa.evaluate.operating_points`);
        ``thresholds``: per-criterion thresholds given by hand instead; ``backbone_path``: where the
        backbone weights are now, if they moved since training."""
        run_dir, ckpt_dir = locate_checkpoint(Path(path))
        device = resolve_device(device)
        configure_threads()
        model, cfg, meta = load_classifier(ckpt_dir, device=device, backbone_path=backbone_path)
        operating = resolve_operating(run_dir, ckpt_dir, tuple(cfg.data.criteria), policy, thresholds)
        return cls(model, cfg, meta, operating, checkpoint_dir=ckpt_dir, device=device)

    @property
    def rule(self):
        """The :class:`~cvsjepa.evaluate.decision.DecisionRule` of "CVS reached" and "uncertain"."""
        return self.operating.rule

    @property
    def thresholds(self) -> tuple[float | None, ...]:
        """Per criterion, the threshold for CVS (None where val could not support the policy)."""
        return self.operating.rule.thresholds

    @property
    def threshold_source(self) -> str:
        return self.operating.source

    @property
    def calibration(self):
        """The :class:`~cvsjepa.evaluate.temperature.Temperature` applied to probabilities, or None."""
        return self.operating.calibration

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
    def view(self) -> str:
        """The field of view the model was trained on (``data.view``): clips are preprocessed with it."""
        return self.cfg.data.view

    @property
    def fps(self) -> float:
        return TRAINING_FPS

    @property
    def criteria(self) -> tuple[str, ...]:
        return tuple(self.cfg.data.criteria)

    @property
    def temporal(self) -> bool:
        """A temporal run: it scores each second from the history of the video so far."""
        return self.model.temporal

    def stream(self):
        """A new :class:`~cvsjepa.predict.stream.VideoStream` (a temporal run): call it with the clips
        of the next seconds of one video, in order; it returns their raw probabilities ``[S, 3]``
        (apply :attr:`calibration` for the calibrated ones)."""
        from .predict.stream import VideoStream

        return VideoStream(self.model, self.device, self.checkpoint_dir)

    def describe(self) -> dict:
        temporal = {}
        if self.temporal:
            pooler = self.model.pooler.describe()
            temporal = {"temporal": {"head": self.cfg.head.type, "history_offsets": list(self.model.head.offsets),
                                     "pooler": pooler["kind"], "stage1": pooler.get("stage1")}}
        return {**temporal, "checkpoint": str(self.checkpoint_dir), "backbone": self.model.backbone.name,
                "backbone_path": self.cfg.backbone.path,
                "crop": self.crop, "view": self.view, "frames": self.frames, "stride": self.stride,
                "training_fps": self.fps,
                "thresholds": list(self.thresholds), "threshold_source": self.threshold_source,
                "policy": self.rule.policy, "calibrated": self.calibration is not None, "device": str(self.device)}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_clip(self, clip: torch.Tensor | np.ndarray, raw: bool = False) -> torch.Tensor:
        """Probabilities for one clip ``[3]`` or a batch ``[B, 3]``: the sigmoid of the logits, then the
        run's calibration (``raw=True``: without it).

        ``clip``: preprocessed float ``[T, 3, crop, crop]`` / ``[B, T, 3, crop, crop]`` (a
        ``three_crops`` model: ``[3, T, 3, crop, crop]`` / ``[B, 3, T, 3, crop, crop]``), or raw uint8
        frames ``[T, H, W, 3]`` / ``[B, T, H, W, 3]`` (preprocessed here with ``self.view``, as in
        training). T is the clip length; the model was trained on ``self.frames`` frames ``self.stride`` s apart.
        """
        x = torch.as_tensor(clip)
        if x.dtype == torch.uint8:
            if x.ndim not in (4, 5) or x.shape[-1] != 3:
                raise ValueError(f"uint8 frames must be [T, H, W, 3] or [B, T, H, W, 3], got {tuple(x.shape)}")
            single = x.ndim == 4
            x = torch.stack([preprocess_frames(c, self.crop, self.view) for c in (x[None] if single else x)])
        else:
            one = 4 if view_count(self.view) == 1 else 5  # dims of one preprocessed clip
            if x.ndim not in (one, one + 1):
                shape = "[T, 3, crop, crop]" if one == 4 else "[3, T, 3, crop, crop] (data.view=three_crops)"
                raise ValueError(f"a preprocessed clip must be {shape}, or a batch of them, got {tuple(x.shape)}")
            single = x.ndim == one
            x = x[None] if single else x
        probs = self._raw_probs(x) if raw else self._probs(x)
        return probs[0] if single else probs

    def _raw_probs(self, video: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, crop, crop] -> [B, 3], exactly as ``evaluate.inference.predict_loader`` scores clips."""
        if self.temporal:
            raise ValueError(f"{self.checkpoint_dir} is a temporal run ({self.cfg.head.type}): it scores a second from "
                             f"the video's history, not one clip; use predict_video, or stream() for a live feed")
        video = video.to(self.device).float()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                             enabled=self.device.type == "cuda"):
            logits = self.model({"video": video}).float()
        return check_probabilities(torch.sigmoid(logits).cpu(), self.checkpoint_dir)

    def _probs(self, video: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities: the same map (float64) that chose the thresholds on val."""
        p = self._raw_probs(video)
        return p if self.calibration is None else self.calibration.apply(p.double())

    def predict_video(self, path: str | Path, fps: float | None = None, consecutive: float = 3.0,
                      batch_size: int = 8, progress: bool = False) -> Timeline:
        """A CVS timeline for a video file or a folder of frames (see :mod:`cvsjepa.predict`).

        ``fps``: the sampling rate (default: the training rate, 1 fps); for a folder, the rate its
        frames were taken at. ``consecutive``: seconds all three criteria must pass in a row.
        Probabilities are calibrated and states decided by :attr:`rule`.
        A file that cannot be opened raises :class:`~cvsjepa.errors.DataError`; one that fails
        part way returns the timeline so far with ``complete=False`` and the error.
        """
        if not consecutive > 0:
            raise ValueError(f"consecutive must be > 0 seconds, got {consecutive}")
        with open_frames(path, fps or self.fps) as reader:  # a temporal run: a fresh history per video
            predict = self.stream() if self.temporal else self._raw_probs
            return build_timeline(reader, predict, crop=self.crop, frames=self.frames, stride=self.stride,
                                  rule=self.rule, consecutive_s=consecutive, batch_size=batch_size,
                                  progress=progress, model_info=self.describe(), criteria=self.criteria,
                                  calibration=self.calibration, view=self.view)


def read_thresholds(path: str | Path) -> tuple[float, float, float]:
    """The legacy thresholds (balanced accuracy, on raw probabilities) of any version of a thresholds
    file; the policies and calibration are read by :func:`cvsjepa.predict.operating.read_document`."""
    from .predict.operating import read_document

    return read_document(Path(path)).legacy
