"""A temporal run scoring a video as it plays: each new second's clip is embedded (backbone, then the
run's per-second pooler) and pushed into the temporal head's rolling state.

    clips [S, T, 3, crop, crop] of the next S seconds  ->  embeddings [S, E]  ->  probabilities [S, 3]

The state is :class:`cvsjepa.heads.temporal.HistoryBuffer`: a ring buffer of the last ``W`` seconds'
embeddings (``head.history_seconds``), so memory is the same after an hour of video as after a
minute, and the output at each second is the head on exactly the history the offline computation
(training, evaluation: :func:`~cvsjepa.heads.temporal.gather_history`) gives it: the two agree to
float rounding (tested to 1e-6). One :class:`VideoStream` per video: a new video starts a new history.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import check_probabilities
from ..heads.temporal import TemporalStream


class VideoStream:
    """``stream(clips) -> raw probabilities [S, 3]`` (sigmoid, before calibration) for the next ``S``
    seconds of one video; the ``predict`` callable of :func:`cvsjepa.predict.timeline.build_timeline`."""

    def __init__(self, model, device: torch.device, checkpoint_dir: Path | str):
        if not getattr(model, "temporal", False) or model.pooler is None:
            raise ValueError("VideoStream runs a temporal run (head.type=temporal_*); this model scores clips")
        self.model, self.device, self.checkpoint_dir = model, device, checkpoint_dir
        self.state = TemporalStream(model.head, model.pooler.out_dim, device=device)

    @property
    def seconds(self) -> int:
        """Seconds pushed so far."""
        return self.state.buffer.seen

    def state_nbytes(self) -> int:
        """Bytes the stream keeps between seconds (the ring buffer): flat in video length."""
        return sum(t.numel() * t.element_size() for t in self.state.buffer.state_tensors())

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        video = clips.to(self.device).float()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            emb = self.model.embed_seconds(video)
        logits = self.state.push(emb.float())
        return check_probabilities(torch.sigmoid(logits.float()).cpu(), self.checkpoint_dir)
