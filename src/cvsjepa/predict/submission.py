"""The SAGES CVS Challenge 2024 submission output: ``cvs-criteria.json`` from a timeline.

Contract (shared/reference/sages2024.md, the challenge's example container): the input is one
video, ``/input/laparoscopic-video.mp4``, at 1 fps with 90 frames; the output is
``/output/cvs-criteria.json`` = ``{"overall_outputs": [[p_C1, p_C2, p_C3], ...]}`` with one row per
second, shape 90 x 3, every value a probability in [0, 1]. :func:`check_outputs` applies the
challenge's own checks (a dict, the key, the shape, the range) and refuses NaN, so a file that
would fail there fails here first, naming why.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import CVSJepaError
from ..io import atomic_write_json

SUBMISSION_FILE = "cvs-criteria.json"
OUTPUT_KEY = "overall_outputs"
CHALLENGE_SECONDS = 90  # the challenge's input: a 90-s video at 1 fps


class SubmissionError(CVSJepaError):
    """The output would not pass the challenge's checks."""


def check_outputs(outputs: object, seconds: int = CHALLENGE_SECONDS) -> None:
    """Raise :class:`SubmissionError` unless ``outputs`` is ``{"overall_outputs": seconds x 3 in [0, 1]}``."""
    if not isinstance(outputs, dict) or OUTPUT_KEY not in outputs:
        raise SubmissionError(f"the output must be a dict with the key {OUTPUT_KEY!r}")
    rows = outputs[OUTPUT_KEY]
    shape = np.shape(rows)
    if shape != (seconds, 3):
        raise SubmissionError(f"{OUTPUT_KEY} has shape {shape}; the challenge expects ({seconds}, 3): one row of "
                              f"C1, C2, C3 probabilities per second of a {seconds}-s 1 fps video")
    values = [float(x) for row in rows for x in row]
    bad = next((x for x in values if not (math.isfinite(x) and 0.0 <= x <= 1.0)), None)
    if bad is not None:
        raise SubmissionError(f"{OUTPUT_KEY} holds {bad}, not a probability in [0, 1]")


def challenge_outputs(timeline, seconds: int = CHALLENGE_SECONDS) -> dict:
    """``{"overall_outputs": [[p1, p2, p3], ...]}`` of a 1 fps timeline, checked."""
    if timeline.fps != 1:
        raise SubmissionError(f"the challenge scores one row per second; the timeline was sampled at {timeline.fps:g} "
                              f"fps: predict at 1 fps (the default)")
    if not timeline.complete:
        raise SubmissionError(f"reading the video stopped early ({'; '.join(timeline.errors)}); "
                              f"{len(timeline)} of {seconds} rows could be scored")
    outputs = {OUTPUT_KEY: [[float(p) for p in row] for row in np.asarray(timeline.probs, dtype=float)]}
    check_outputs(outputs, seconds)
    return outputs


def write_submission(timeline, out_dir: str | Path, seconds: int = CHALLENGE_SECONDS) -> Path:
    """Write ``out_dir/cvs-criteria.json`` (atomically) after the challenge's checks."""
    outputs = challenge_outputs(timeline, seconds)
    path = Path(out_dir) / SUBMISSION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, outputs)
    return path
