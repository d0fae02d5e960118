"""TensorBoard: event files in ``RUN/tensorboard/`` (``tensorboard --logdir RUN/tensorboard``).

Written with ``torch.utils.tensorboard.SummaryWriter`` (the ``tensorboard`` package). A resumed run
writes a new event file in the same folder with ``purge_step`` = the first epoch it trains, so
TensorBoard drops whatever the interrupted process logged after its last complete epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RunConfig, to_yaml
from . import Tracker, numbers

FOLDER = "tensorboard"


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, cfg: RunConfig, run_dir: Path):
        self.cfg, self.log_dir = cfg, Path(run_dir) / FOLDER
        self.writer = None
        self.step = 0

    def start(self, config: dict[str, Any], previous: dict | None, resume_step: int) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        self.step = resume_step
        self.writer = SummaryWriter(str(self.log_dir), purge_step=resume_step + 1 if previous else None)
        if previous is None:
            self.writer.add_text("config", f"```yaml\n{to_yaml(self.cfg)}```", 0)
            self.writer.flush()
        return {"log_dir": FOLDER, "where": f"event files in {self.log_dir}"}

    def log_epoch(self, step: int, metrics: dict[str, Any]) -> None:
        self.step = step
        for key, value in numbers(metrics).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # an epoch is minutes of work: never leave it in a buffer

    def log_summary(self, metrics: dict[str, Any]) -> None:
        values = numbers(metrics)
        for key, value in values.items():
            self.writer.add_scalar(f"final/{key}", value, self.step)
        self.writer.add_text("final", "```json\n" + json.dumps(values, indent=1) + "\n```", self.step)
        self.writer.flush()

    def log_figure(self, path: Path) -> None:
        from PIL import Image

        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))
        self.writer.add_image(f"figures/{Path(path).stem}", pixels, self.step, dataformats="HWC")
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
