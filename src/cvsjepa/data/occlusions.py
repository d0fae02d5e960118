"""Occlusions of the synthetic scene (``cvsjepa synth --occlusions``, the default): events that hide
the anatomy for a few seconds while the dissection goes on underneath.

A step of the scene model of its own, after the anatomy and the framing: it has its own random
stream (``SeedSequence([seed, video, 2])``), so every other draw (and so a dataset written with
``--no-occlusions``) is unchanged by it. Per video, events follow one another: the first starts
after ``FIRST_S`` seconds, each lasts ``LENGTH_S`` seconds and the next starts ``GAP_S`` seconds
after it ends (uniform draws, ~25 % of the seconds occluded), each of a kind drawn uniformly:

* ``tool``: a wide retractor passes across the anatomy: a grey band painted over every criterion
  structure (segmentation masks show it as ``tool``);
* ``smoke``: the frame is washed out towards a grey-white haze (``SMOKE_ALPHA`` of it) and softened;
* ``blur``: the camera is out of focus (a Gaussian blur of ``BLUR_RADIUS`` px) and fogged.

Smoke and blur leave at most a few percent of the structures' contrast; the masks keep the true
geometry under them. The **labels follow the true state**: the visibilities, the raters' votes and
the oracle posterior ``q`` ignore occlusions, because what the surgeon has exposed stays exposed.
A model that sees only the current frame cannot know ``q`` while the anatomy is hidden; a model
with memory can carry it over. ``oracle.json`` reports both bounds (:func:`frame_only_scores`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

OCCLUSION_KINDS = ("tool", "smoke", "blur")  # code k + 1 in a video's per-second occlusion array; 0 = none
FIRST_S = (5, 25)  # the first event starts in this range of seconds
LENGTH_S = (4, 12)  # an event lasts this many seconds (inclusive)
GAP_S = (12, 40)  # seconds from the end of one event to the start of the next
SMOKE_ALPHA = 0.96
SMOKE_BLUR = 10  # px: smoke is diffuse, no sharp edge shows through
SMOKE_RGB = (206, 202, 198)
BLUR_RADIUS = 36
BLUR_FOG = 0.85
TOOL_BAND_PX = 390  # width of the retractor's band, wide enough to cover every criterion structure


def draw_occlusions(rng: np.random.Generator, seconds: int, enabled: bool = True) -> np.ndarray:
    """``[seconds]`` int8: 0 where nothing hides the anatomy, else ``1 + OCCLUSION_KINDS.index(kind)``."""
    out = np.zeros(seconds, dtype=np.int8)
    if not enabled:
        return out
    t = int(rng.integers(FIRST_S[0], FIRST_S[1] + 1))
    while t < seconds:
        length = int(rng.integers(LENGTH_S[0], LENGTH_S[1] + 1))
        out[t:t + length] = int(rng.integers(1, len(OCCLUSION_KINDS) + 1))
        t += length + int(rng.integers(GAP_S[0], GAP_S[1] + 1))
    return out


def occlusion_name(code: int) -> str:
    """``""`` for 0, else the kind's name."""
    return OCCLUSION_KINDS[code - 1] if code else ""


def event_start(codes: np.ndarray, t: int) -> int:
    """The first second of the occlusion event ``t`` is in."""
    s = t
    while s > 0 and codes[s - 1] == codes[t]:
        s -= 1
    return s


def tool_band(start: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """The retractor of a ``tool`` event that began at second ``start``, in scene coordinates
    (relative to the frame centre, before the video's flip and framing): its body and a highlight
    stripe. It covers the criterion structures (the triangle, both tubes and the plate's crescent
    below the gallbladder); its angle differs from event to event (a pure function of ``start``)."""
    angle = np.deg2rad(15 + (start * 37) % 21)
    u = np.array([np.cos(angle), np.sin(angle)])  # along the band
    n = np.array([-u[1], u[0]])
    c = np.array([-25.0, 40.0])
    half = TOOL_BAND_PX / 2
    body = [c - 700 * u - half * n, c + 700 * u - half * n, c + 700 * u + half * n, c - 700 * u + half * n]
    shine = [c - 700 * u - 0.55 * half * n, c + 700 * u - 0.55 * half * n, c + 700 * u - 0.35 * half * n,
             c - 700 * u - 0.35 * half * n]
    return [tuple(p) for p in body], [tuple(p) for p in shine]


def occlude_pixels(img: np.ndarray, code: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` as smoke or blur shows it (``code`` 2 or 3); other codes unchanged (a tool
    pass is painted with the scene)."""
    kind = occlusion_name(code)
    if kind not in ("smoke", "blur"):
        return img
    radius, alpha = (SMOKE_BLUR, SMOKE_ALPHA) if kind == "smoke" else (BLUR_RADIUS, BLUR_FOG)
    soft = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    haze = np.asarray(SMOKE_RGB, dtype=np.float32)
    return np.clip(soft * (1 - alpha) + haze * alpha, 0, 255).astype(np.uint8)


def frame_only_scores(q: np.ndarray, occluded: np.ndarray) -> np.ndarray:
    """The best scores a model that sees only the current frame can give keyframes ``[K, 3]``: the true
    posterior ``q`` where the anatomy is visible; where it is hidden the frame tells nothing of the
    state, so one score for every occluded keyframe, the mean of their ``q`` (the posterior given only
    "occluded"). An approximation where smoke or blur leave a trace of contrast."""
    out = np.array(q, dtype=np.float64, copy=True)
    occ = np.asarray(occluded, dtype=bool)
    if occ.any():
        out[occ] = out[occ].mean(axis=0)
    return out
