"""``cvsjepa synth``: a small SYNTHETIC dataset in exactly the Endoscapes2023 on-disk layout.

Nothing here is real surgical data. The generator draws laparoscopic-looking 854x480 frames (pink
tissue with a low-frequency texture and a vignette, a liver band, fat, a gallbladder, a moving grey
instrument, camera drift) and three criterion-specific structures whose size and contrast grow as a
latent dissection progresses. Without framing (``outside_crop=False``) they lie inside the central
region that the ``center`` view sees (x in ~[217, 637], y in ~[30, 450] for every crop size, see
:mod:`cvsjepa.data.transforms`); with it (the default) each video frames the anatomy to the left,
centre or right with a slow pan (:func:`_draw_framing`), so part of it often lies outside that crop
but always inside the frame:

* C1, hepatocystic triangle cleared: a dark cavity triangle at the gallbladder neck
  (seg class 2, calot_triangle), scaled out of the neck and darkened by its visibility ``v1``;
* C2, cystic plate: a yellowish-white plate under the gallbladder (class 1, cystic_plate) whose
  visible crescent grows with ``v2``;
* C3, two structures: a cystic duct (class 4) and a cystic artery (class 3), two tubes out of the
  neck whose visible length, width and contrast grow with their own visibilities; the criterion
  needs both, so ``v3 = min(v_artery, v_duct)``.

Labels come from what is drawn: each of 3 independent raters scores criterion c positive with
probability ``p_c = sigmoid(K * (v_c - 0.5))`` (``K = 10``: raters disagree near the boundary);
``ds`` is the mean of the 3 votes, the binary label ``round(ds)`` the majority. The true posterior
of that label is ``q = p^3 + 3 p^2 (1 - p)``; its AP against the realised labels is written to
``oracle.json``: the best any model that sees the whole frame can score, up to sampling noise
(framing moves the structures, never their visibilities, and keeps them inside the frame).

Occlusions (:mod:`cvsjepa.data.occlusions`) hide the anatomy at times; the labels go on.

Layout written under ``out`` (see shared/reference/endoscapes2023.md)::

    train/ val/ test/         {vid}_{frame}.jpg (854x480, JPEG q90), one frame per second; frame
                              numbers count 25 fps source frames (step 25, CVS keyframes every
                              5 s = step 125, BBox frames every 30 s = step 750)
        annotation_ds_coco.json   CVS keyframes only
        annotation_coco_vid.json  every frame; non-keyframes repeat the last keyframe's ds
        annotation_coco.json      BBox frames (every 30 s) with one box per drawn class (and its
                                  instance mask as COCO RLE on the frames that are also masked)
    train_seg/ val_seg/ test_seg/ relative symlinks to the masked frames + annotation_coco.json, one
                              instance per drawn class with its mask as compressed RLE (iscrowd 0)
    semseg/{vid}_{frame}.png  480x854x3, channels identical, class ids 0-6, 255 = ignore (a 2 px
                              band on every class border, where the image is blurred)
    all_metadata.csv          one row per 1 fps frame of every split
    {train,val,test}_vids.txt, {train,val,test}_seg_vids.txt   ids written as floats ("1.0")
    seg_label_map.txt         one "name: id" line per class, e.g. "cystic_plate: 1"
    oracle.json               per split {"ap": [3], "map", "prevalence", "note"} (+ "map_frame_only")
    synth.json                the generator's parameters and seed
    synth_truth.csv           per frame: the latent visibilities v, the label posteriors q, occlusion
    README.txt                says that this is SYNTHETIC data

Determinism: all randomness comes from ``numpy.random.Generator`` objects seeded from ``seed``
(per video: ``SeedSequence([seed, vid])``), drawn in the parent process; rendering is a pure
function of those draws. The same seed gives byte-identical JSON/CSV/TXT files and images.

This file is long because the synthetic scene is one model: what is drawn, the visibilities that
drive the raters and the oracle computed from them must agree, so they are written side by side.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import DataError
from .endoscapes import CRITERION_COLUMNS
from .occlusions import FIRST_S, GAP_S, LENGTH_S, OCCLUSION_KINDS, draw_occlusions, event_start, frame_only_scores, occlusion_name, \
    occlude_pixels, tool_band
from .oracle import ORACLE_FILE

log = logging.getLogger("cvsjepa")

__all__ = [
    "write_synthetic_dataset",
    "write_video_mp4",
    "draw_scene",
    "render_frame",
    "Texture",
    "frame_name",
    "frame_number",
    "rater_probability",
    "majority_posterior",
    "average_precision",
    "SEG_CLASSES",
    "CATEGORIES",
    "SPLITS",
    "WIDTH",
    "HEIGHT",
    "SOURCE_FPS",
    "KEYFRAME_STEP",
    "DET_STEP",
    "RATER_SLOPE",
]

WIDTH, HEIGHT = 854, 480
SOURCE_FPS = 25  # frame numbers count frames of a 25 fps source
KEYFRAME_EVERY_S = 5
DET_EVERY_S = 30
KEYFRAME_STEP = SOURCE_FPS * KEYFRAME_EVERY_S  # 125
DET_STEP = SOURCE_FPS * DET_EVERY_S  # 750
SPLITS = ("train", "val", "test")
SEG_CLASSES = ("background", "cystic_plate", "calot_triangle", "cystic_artery", "cystic_duct",
               "gallbladder", "tool")
CATEGORIES = [{"id": i, "name": n, "supercategory": "tool" if n == "tool" else "anatomy"}
              for i, n in enumerate(SEG_CLASSES) if i > 0]
IGNORE = 255
RATER_SLOPE = 10.0  # K in p = sigmoid(K (v - 0.5))
JPEG_QUALITY = 90
IGNORE_BAND_PX = 2
# 2: instance masks (COCO RLE) in the *_seg annotation files; 3: framing (outside_crop); 4: occlusions
GENERATOR_VERSION = 4
# Framing: the anatomy's horizontal offset per video. Criterion structures span x in ~[-175, 175]
# around the centre (either flip), the drift adds <= 16 px, the frame's half-width is 427: an offset
# up to 230 px keeps them whole inside the frame, while the centre crop ends at ~210 px.
FRAMING_MAX_PX = 230

# Internal paint ids (several shades per class); _CLASS_OF maps them to the seg class ids.
_BG, _LIVER, _FAT, _PLATE, _GB, _GB_SHINE, _TRI, _DUCT, _ARTERY, _TOOL, _TOOL_SHINE = range(11)
_CLASS_OF = np.array([0, 0, 0, 1, 5, 5, 2, 4, 3, 6, 6], dtype=np.uint8)
_N_IDS = len(_CLASS_OF)
# RGB of each paint id (before the texture modulation); background uses the tissue texture itself.
_COLOUR = np.array([
    [0, 0, 0],        # bg: unused (alpha 0)
    [105, 32, 30],    # liver: dark red-brown
    [222, 178, 96],   # fat: orange-yellow
    [246, 236, 196],  # cystic plate: yellowish white
    [150, 172, 128],  # gallbladder: green-grey
    [235, 240, 235],  # gallbladder specular highlight
    [40, 10, 16],     # calot triangle cleared: dark cavity
    [236, 226, 212],  # cystic duct: pale, whitish
    [120, 12, 30],    # cystic artery: deep crimson
    [128, 130, 138],  # tool shaft: grey metal
    [208, 210, 215],  # tool highlight
], dtype=np.float32)

_SOFTEN = ImageFilter.Kernel((3, 3), [1, 2, 1, 2, 4, 2, 1, 2, 1], scale=16)  # edges soften over ~1 px
_CX, _CY = WIDTH / 2, HEIGHT / 2  # scene coordinates are relative to the frame centre
_MARGIN = 24  # texture margin for the camera drift (|drift| <= 16 px)


# ----------------------------------------------------------------------------------- the scene


@dataclass
class _Video:
    """Everything random about one video, drawn in the parent: rendering is a pure function of it."""

    vid: int
    split: str
    seconds: int
    seg: bool
    texture_seed: int
    flip: bool
    layout: dict  # small per-video offsets of the anatomy
    drift: np.ndarray  # [T, 2] int camera shift in px
    tool_tip: np.ndarray  # [T, 2] float, scene coordinates
    tool_angle: np.ndarray  # [T] radians
    jaw: np.ndarray  # [T] jaw opening in [0, 1]
    vis: np.ndarray  # [T, 4] visibilities: triangle, plate, artery, duct
    votes: np.ndarray = field(default=None)  # [n_keyframes, 3 raters, 3 criteria] in {0, 1}
    pan: np.ndarray = field(default=None)  # [T, 2] int framing offset of the anatomy in px (zeros: centred)
    occlusion: np.ndarray = field(default=None)  # [T] int8: 0, or what hides the anatomy (data/occlusions.py)

    @property
    def v(self) -> np.ndarray:
        """[T, 3] per-criterion visibility (C3 needs both tubes)."""
        return np.stack([self.vis[:, 0], self.vis[:, 1], np.minimum(self.vis[:, 2], self.vis[:, 3])], axis=1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def rater_probability(v: np.ndarray) -> np.ndarray:
    """Probability that one rater scores a criterion positive, given its drawn visibility."""
    return _sigmoid(RATER_SLOPE * (np.asarray(v, dtype=np.float64) - 0.5))


def majority_posterior(p: np.ndarray) -> np.ndarray:
    """P(at least 2 of 3 independent raters say yes) = p^3 + 3 p^2 (1 - p)."""
    return p ** 3 + 3 * p ** 2 * (1 - p)


def _smooth_noise(rng: np.random.Generator, n: int, every: float) -> np.ndarray:
    """Smooth 1-D noise over ``n`` seconds, roughly N(0, 1): cosine-interpolated knots ``every`` s apart."""
    k = int(math.ceil(n / every)) + 2
    knots = rng.standard_normal(k)
    x = np.arange(n) / every
    i = np.floor(x).astype(int)
    f = x - i
    w = (1 - np.cos(np.pi * f)) / 2
    return knots[i] * (1 - w) + knots[i + 1] * w


def _draw_video(rng: np.random.Generator, vid: int, split: str, seg: bool, min_s: int, max_s: int) -> _Video:
    T = int(rng.integers(min_s, max_s + 1))
    t = np.arange(T, dtype=np.float64)
    # Latent dissection progress s(t): a ramp with per-video onset and speed, plus small jitter.
    # Some videos end before the ramp does (they never reach a full CVS), as in real data.
    onset = rng.uniform(-0.25, 0.35) * T
    duration = rng.uniform(0.45, 1.3) * T
    s = np.clip((t - onset) / duration, 0, 1) + 0.025 * _smooth_noise(rng, T, 6.0)
    # Per-structure onsets relative to s: shared video factor (criteria appear together) + own jitter.
    common = rng.standard_normal()
    base = np.array([0.30, 0.38, 0.25, 0.22])  # triangle, plate, artery, duct
    onsets = base + 0.09 * common + 0.11 * rng.standard_normal(4)
    widths = rng.uniform(0.8, 1.4, size=4)  # slow: many keyframes near the raters' boundary
    vis = np.clip((s[:, None] - onsets[None, :]) / widths[None, :], 0, 1)

    drift = np.stack([9 * _smooth_noise(rng, T, 9.0), 7 * _smooth_noise(rng, T, 11.0)], axis=1)
    drift = np.clip(np.round(drift), -16, 16).astype(np.int64)
    tip = np.stack([130 + 38 * _smooth_noise(rng, T, 7.0), 105 + 38 * _smooth_noise(rng, T, 8.0)], axis=1)
    tip = np.clip(tip, [80, 45], [190, 165])
    angle = np.deg2rad(32 + 8 * _smooth_noise(rng, T, 10.0))
    jaw = np.clip(0.5 + 0.5 * _smooth_noise(rng, T, 4.0), 0, 1)
    layout = {
        "gb_dx": float(rng.uniform(-12, 12)), "gb_dy": float(rng.uniform(-10, 10)),
        "gb_angle": float(rng.uniform(152, 166)),
        "liver_phase": float(rng.uniform(0, 2 * np.pi)),
        "fat": [[float(rng.uniform(-190, -120)), float(rng.uniform(-150, -110)), float(rng.uniform(20, 34))],
                [float(rng.uniform(120, 190)), float(rng.uniform(175, 200)), float(rng.uniform(18, 30))]],
        "shine": [float(rng.uniform(-0.3, 0.5)), float(rng.uniform(-0.5, 0.1))],
    }
    return _Video(vid=vid, split=split, seconds=T, seg=seg, texture_seed=int(rng.integers(2 ** 31)),
                  flip=bool(rng.random() < 0.5), layout=layout, drift=drift, tool_tip=tip,
                  tool_angle=angle, jaw=jaw, vis=vis)


def draw_scene(seed: int, vid: int, split: str, min_seconds: int, max_seconds: int) -> _Video:
    """Every random draw of one video's scene (no masks, no votes), from ``SeedSequence([seed, vid])``:
    the public entry for other layouts' writers (``data/sages_synth.py``)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, vid]))
    return _draw_video(rng, vid, split, False, min_seconds, max_seconds)


def render_frame(video: _Video, t: int, texture: "Texture") -> np.ndarray:
    """uint8 ``[HEIGHT, WIDTH, 3]``: second ``t`` of ``video`` as the Endoscapes writer draws it."""
    return _compose(video, t, _paint(video, t), texture)


def _draw_framing(rng: np.random.Generator, seconds: int, outside_crop: bool) -> np.ndarray:
    """[T, 2] int offset of everything drawn (not the tissue texture), a step of the scene model of
    its own (own random stream, so the other draws do not depend on it). Per video: a third centred
    (|x| <= 30 px), a third to the left and a third to the right (140-230 px), plus a slow pan of
    ~25 px and +-12 px vertically; clipped to ``FRAMING_MAX_PX``. Zeros without ``outside_crop``."""
    if not outside_crop:
        return np.zeros((seconds, 2), dtype=np.int64)
    side = int(rng.integers(3)) - 1  # -1 left, 0 centre, +1 right
    base = side * rng.uniform(140, 230) if side else rng.uniform(-30, 30)
    x = base + 25 * _smooth_noise(rng, seconds, 20.0)
    y = rng.uniform(-12, 12) + 4 * _smooth_noise(rng, seconds, 15.0)
    pan = np.stack([np.clip(x, -FRAMING_MAX_PX, FRAMING_MAX_PX), np.clip(y, -14, 14)], axis=1)
    return np.round(pan).astype(np.int64)


def _draw_votes(rng: np.random.Generator, video: _Video) -> None:
    key_t = np.arange(0, video.seconds, KEYFRAME_EVERY_S)
    p = rater_probability(video.v[key_t])  # [K, 3]
    video.votes = (rng.random((len(key_t), 3, 3)) < p[:, None, :]).astype(np.int64)  # [K, rater, criterion]


# ----------------------------------------------------------------------------------- rendering


def _ellipse(cx: float, cy: float, a: float, b: float, angle_deg: float, n: int = 48) -> np.ndarray:
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ca, sa = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    x, y = a * np.cos(th), b * np.sin(th)
    return np.stack([cx + x * ca - y * sa, cy + x * sa + y * ca], axis=1)


def _bezier(p0, p1, p2, upto: float, n: int = 24) -> np.ndarray:
    u = np.linspace(0, upto, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - u) ** 2 * p0 + 2 * (1 - u) * u * p1 + u ** 2 * p2


class Texture:
    """Per-video tissue texture (with a margin for the camera drift) and the fixed vignette."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        h, w = HEIGHT + 2 * _MARGIN, WIDTH + 2 * _MARGIN

        def field_(cells: int) -> np.ndarray:
            small = rng.standard_normal((max(2, h * cells // w), cells)).astype(np.float32)
            img = Image.fromarray(small, mode="F").resize((w, h), Image.BICUBIC)
            a = np.asarray(img, dtype=np.float32)
            return (a - a.mean()) / (a.std() + 1e-6)

        lum = 0.6 * field_(7) + 0.35 * field_(20) + 0.2 * field_(60)
        hue = field_(5)
        self.mod = np.clip(1.0 + 0.11 * lum, 0.7, 1.3).astype(np.float32)  # brightness modulation [h, w]
        base = np.array([196, 104, 98], dtype=np.float32)
        warm = np.array([14, -8, -14], dtype=np.float32)
        tissue = (base[None, None, :] + hue[..., None] * warm[None, None, :]) * self.mod[..., None]
        self.tissue = np.clip(tissue, 0, 255).astype(np.float32)  # [h, w, 3]
        yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
        r2 = ((xx - _CX) / (WIDTH * 0.62)) ** 2 + ((yy - _CY) / (HEIGHT * 0.72)) ** 2
        self.vignette = np.clip(1.08 - 0.55 * r2, 0.3, 1.08).astype(np.float32)[..., None]


def _paint(video: _Video, t: int) -> np.ndarray:
    """Internal paint-id map [H, W] of second ``t``: the single geometry both image and mask come from."""
    lay = video.layout
    dx, dy = video.drift[t] + (video.pan[t] if video.pan is not None else 0)
    sign = -1.0 if video.flip else 1.0

    def P(pts) -> list[tuple[float, float]]:
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        return [(float(_CX + dx + sign * x), float(_CY + dy + y)) for x, y in pts]

    v_tri, v_plate, v_art, v_duct = (float(x) for x in video.vis[t])
    im = Image.new("L", (WIDTH, HEIGHT), _BG)
    d = ImageDraw.Draw(im)

    # Liver across the top (background class), with a wavy lower edge.
    framed = video.pan is not None and bool(video.pan.any())
    reach = _CX + 40 + (FRAMING_MAX_PX if framed else 0)  # wide enough for any framing; unframed as before
    xs = np.linspace(-reach, reach, 36 if framed else 24)
    edge = -150 + 14 * np.sin(xs / 70 + lay["liver_phase"]) + 0.06 * xs
    d.polygon(P(np.concatenate([np.stack([xs, edge], 1), [[xs[-1], -_CY - 40], [xs[0], -_CY - 40]]])),
              fill=_LIVER)
    # Fat (background class): orange-yellow distractors near the corners of the visible region.
    for fx, fy, fr in lay["fat"]:
        d.polygon(P(_ellipse(fx, fy, fr * 1.5, fr, 20, 24)), fill=_FAT)

    gx, gy = 80 + lay["gb_dx"], -95 + lay["gb_dy"]
    ga = lay["gb_angle"]
    # C2 cystic plate, under the gallbladder: the gallbladder covers its upper part, the visible
    # crescent grows with v_plate.
    if v_plate > 0.02:
        d.polygon(P(_ellipse(gx - 35, gy + 62, 45 + 80 * v_plate, 52 + 42 * v_plate, ga - 180, 40)), fill=_PLATE)
    d.polygon(P(_ellipse(gx, gy, 170, 78, ga, 64)), fill=_GB)
    sx, sy = lay["shine"]
    d.polygon(P(_ellipse(gx + 60 * sx + 40, gy + 30 * sy - 10, 22, 8, ga, 16)), fill=_GB_SHINE)
    neck = np.array([gx - 150, gy + 58])  # neck end of the gallbladder (angle ~160 deg)

    # C1 hepatocystic triangle: a dark cleared cavity grown out of the neck.
    if v_tri > 0.02:
        f = 0.3 + 0.7 * v_tri
        a_ = neck + [-8, 12]
        b_ = np.array([-165.0, 150.0])
        c_ = np.array([25.0, 128.0])
        d.polygon(P([a_, a_ + f * (b_ - a_), a_ + f * (c_ - a_)]), fill=_TRI)

    # C3: the duct and the artery, tubes out of the neck; visible length and width grow.
    for v_, pid, p1, p2, width in ((v_duct, _DUCT, [-165, 40], [-140, 168], 26),
                                   (v_art, _ARTERY, [-60, 90], [20, 160], 16)):
        if v_ > 0.02:
            pts = _bezier(neck, p1, p2, 0.25 + 0.75 * v_)
            w = int(round(width * (0.6 + 0.4 * v_)))
            q = P(pts)
            d.line(q, fill=pid, width=w, joint="curve")
            r = w / 2
            for x, y in (q[0], q[-1]):
                d.ellipse([x - r, y - r, x + r, y + r], fill=pid)

    # Instrument: a grey shaft from off-frame to the moving tip, with two jaws.
    tip = video.tool_tip[t]
    ang = float(video.tool_angle[t])
    u = np.array([math.cos(ang), math.sin(ang)])  # from the tip towards the shaft (down-right)
    n = np.array([-u[1], u[0]])
    far = tip + 700 * u
    hw = 19
    d.polygon(P([tip + hw * n, far + hw * n, far - hw * n, tip - hw * n]), fill=_TOOL)
    d.polygon(P([tip + 3 * n + 10 * u, far + 3 * n, far - 4 * n, tip - 4 * n + 10 * u]), fill=_TOOL_SHINE)
    open_ = 0.15 + 0.45 * float(video.jaw[t])
    for side in (1, -1):
        dirj = -u * math.cos(open_) + side * n * math.sin(open_)
        nj = np.array([-dirj[1], dirj[0]])
        base = tip + side * 7 * n
        d.polygon(P([base + 8 * nj, base + 48 * dirj + 2 * nj, base + 48 * dirj - 2 * nj, base - 8 * nj]),
                  fill=_TOOL)
    # Occlusion (data/occlusions.py): a retractor passing over every criterion structure.
    if video.occlusion is not None and occlusion_name(int(video.occlusion[t])) == "tool":
        body, shine = tool_band(event_start(video.occlusion, t))
        d.polygon(P(body), fill=_TOOL)
        d.polygon(P(shine), fill=_TOOL_SHINE)
    return np.asarray(im)


def _alphas(video: _Video, t: int) -> np.ndarray:
    v_tri, v_plate, v_art, v_duct = (float(x) for x in video.vis[t])
    a = np.zeros(_N_IDS, dtype=np.float32)
    a[[_LIVER, _FAT, _GB, _GB_SHINE, _TOOL, _TOOL_SHINE]] = [0.85, 0.8, 0.92, 0.8, 1.0, 1.0]
    a[_PLATE] = 0.35 + 0.6 * v_plate
    a[_TRI] = 0.35 + 0.6 * v_tri
    a[_DUCT] = 0.35 + 0.6 * v_duct
    a[_ARTERY] = 0.35 + 0.6 * v_art
    return a


def _compose(video: _Video, t: int, ids: np.ndarray, tex: Texture) -> np.ndarray:
    dx, dy = (int(x) for x in video.drift[t])
    ys = slice(_MARGIN - dy, _MARGIN - dy + HEIGHT)
    xs = slice(_MARGIN - dx, _MARGIN - dx + WIDTH)
    bg = tex.tissue[ys, xs]
    mod = tex.mod[ys, xs, None]
    alpha = _alphas(video, t)[ids][..., None]
    colour = _COLOUR[ids] * mod
    img = (bg + alpha * (colour - bg)) * tex.vignette
    img = np.clip(img, 0, 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(img).filter(_SOFTEN))
    return img if video.occlusion is None else occlude_pixels(img, int(video.occlusion[t]))


def _seg_mask(ids: np.ndarray) -> np.ndarray:
    """Seg class map with a ``IGNORE_BAND_PX`` band of 255 on every border between classes."""
    cls = _CLASS_OF[ids]
    r = IGNORE_BAND_PX
    pad = np.pad(cls, r, mode="edge")
    border = np.zeros(cls.shape, dtype=bool)
    for oy in range(-r, r + 1):
        for ox in range(-r, r + 1):
            if (oy or ox) and oy * oy + ox * ox <= r * r:
                border |= pad[r + oy:r + oy + HEIGHT, r + ox:r + ox + WIDTH] != cls
    out = cls.copy()
    out[border] = IGNORE
    return out


def _boxes(ids: np.ndarray, min_px: int = 40, rle: bool = False) -> list[tuple]:
    """(category id, [x, y, w, h], area, RLE or None) of each seg class drawn in the frame. With ``rle``
    the instance mask (every pixel of the class, no ignore band) comes as compressed COCO RLE."""
    from pycocotools import mask as mask_utils

    cls = _CLASS_OF[ids]
    out = []
    for c in range(1, len(SEG_CLASSES)):
        m = cls == c
        area = int(m.sum())
        if area < min_px:
            continue
        ys = np.flatnonzero(m.any(1))
        xs = np.flatnonzero(m.any(0))
        x0, x1, y0, y1 = int(xs[0]), int(xs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1
        seg = None
        if rle:
            enc = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            seg = {"size": [int(v) for v in enc["size"]], "counts": enc["counts"].decode("ascii")}
        out.append((c, [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], area, seg))
    return out


def frame_name(vid: int, frame: int) -> str:
    return f"{vid}_{frame}.jpg"


def _render_video(args: tuple[_Video, str, int]) -> tuple[int, dict[int, list]]:
    """Write every 1 fps JPEG of one video (and its masks); return the boxes of its BBox frames."""
    video, root_s, seg_every_s = args
    root = Path(root_s)
    tex = Texture(video.texture_seed)
    boxes: dict[int, list] = {}
    for t in range(video.seconds):
        frame = t * SOURCE_FPS
        ids = _paint(video, t)
        img = _compose(video, t, ids, tex)
        Image.fromarray(img).save(root / video.split / frame_name(video.vid, frame), quality=JPEG_QUALITY)
        masked = video.seg and t % seg_every_s == 0
        if masked:  # every drawn class, with its instance mask
            boxes[frame] = _boxes(ids, min_px=1, rle=True)
        elif t % DET_EVERY_S == 0:
            boxes[frame] = _boxes(ids)
        if masked:
            m = _seg_mask(ids)
            Image.fromarray(np.repeat(m[..., None], 3, axis=2)).save(
                root / "semseg" / f"{video.vid}_{frame}.png", optimize=False)
    return video.vid, boxes


# ----------------------------------------------------------------------------------- metrics


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Non-interpolated AP, identical to sklearn's ``average_precision_score`` (NaN if no positive)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if labels.sum() == 0:
        return math.nan
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct threshold
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / labels.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# ----------------------------------------------------------------------------------- writing


def _fmt(x: float) -> str:
    return repr(float(x))


def _vid_lines(ids: Iterable[int]) -> str:
    return "".join(f"{float(v)}\n" for v in ids)


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out} is not empty; choose an empty or new folder, or pass overwrite "
                            f"(--overwrite) to replace a dataset written by `cvsjepa synth`")
        if not (out / "synth.json").is_file():
            raise DataError(f"{out} is not empty and holds no synth.json, so it was not written by "
                            f"`cvsjepa synth`; refusing to delete it even with overwrite. Remove it yourself "
                            f"or choose another folder")


def write_synthetic_dataset(out: Path, *, seed: int = 0, videos: tuple[int, int, int] = (16, 6, 6),
                            min_seconds: int = 40, max_seconds: int = 90, seg_fraction: float = 0.3,
                            overwrite: bool = False, progress: bool = True,
                            workers: int | None = None, seg_every_s: int = DET_EVERY_S,
                            outside_crop: bool = True, occlusions: bool = True) -> dict:
    """Write a synthetic Endoscapes2023-layout dataset to ``out`` and return a summary.

    ``videos``: number of videos in train/val/test (ids 1..n_train, then val, then test);
    video lengths are drawn uniformly in ``[min_seconds, max_seconds]`` (one frame per second).
    ``seg_fraction`` of the videos of each split (at least one when > 0) get semantic masks on their
    BBox frames (every 30 s), like Endoscapes-Seg50; ``seg_every_s=5`` masks every keyframe of those
    videos instead (more supervision, to watch a segmentation head learn). ``overwrite`` replaces a folder written earlier
    by this generator (one holding ``synth.json``); any other non-empty folder is refused.
    ``workers``: rendering processes (default: up to 2). ``outside_crop``: frame each video's anatomy
    left, centre or right (:func:`_draw_framing`), so the ``center`` view often misses part of it.
    ``occlusions``: tool passes, smoke and blur hide the anatomy for a few seconds at a time while the
    true state (and so the labels) goes on (:mod:`cvsjepa.data.occlusions`).

    The dataset is built in a hidden temporary folder next to ``out`` and renamed into place at the
    end, so an interrupted run never leaves a half dataset under ``out``.

    Returns ``{"out", "seconds", "splits": {split: {"videos", "frames", "keyframes", "det_frames",
    "seg_frames", "positive_rate": [3], "all_positive_rate", "oracle_ap": [3], "oracle_map"}}}``.
    """
    t_start = time.perf_counter()
    out = Path(out)
    videos = tuple(int(v) for v in videos)
    if len(videos) != 3 or min(videos) < 1:
        raise DataError(f"videos must be 3 positive counts (train, val, test), got {videos}")
    if not (1 <= min_seconds <= max_seconds):
        raise DataError(f"need 1 <= min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    if not (0.0 <= seg_fraction <= 1.0):
        raise DataError(f"seg_fraction must be in [0, 1], got {seg_fraction}")
    if seg_every_s < 1 or seg_every_s % KEYFRAME_EVERY_S:
        raise DataError(f"seg_every_s must be a positive multiple of {KEYFRAME_EVERY_S} (keyframes), got {seg_every_s}")
    _check_target(out, overwrite)

    # ---- every random draw, in a fixed order, in this process
    split_vids: dict[str, list[int]] = {}
    nxt = 1
    for split, n in zip(SPLITS, videos):
        split_vids[split] = list(range(nxt, nxt + n))
        nxt += n
    seg_vids: dict[str, list[int]] = {}
    for i, split in enumerate(SPLITS):
        ids = split_vids[split]
        k = 0 if seg_fraction == 0 else min(len(ids), max(1, int(round(seg_fraction * len(ids)))))
        pick = np.random.default_rng(np.random.SeedSequence([seed, 10_000_000 + i])).choice(len(ids), k, replace=False)
        seg_vids[split] = sorted(ids[j] for j in pick)
    all_videos: list[_Video] = []
    for split in SPLITS:
        for vid in split_vids[split]:
            rng = np.random.default_rng(np.random.SeedSequence([seed, vid]))
            video = _draw_video(rng, vid, split, vid in seg_vids[split], min_seconds, max_seconds)
            _draw_votes(rng, video)
            video.pan = _draw_framing(np.random.default_rng(np.random.SeedSequence([seed, vid, 1])),
                                      video.seconds, outside_crop)
            video.occlusion = draw_occlusions(np.random.default_rng(np.random.SeedSequence([seed, vid, 2])),
                                              video.seconds, occlusions)
            all_videos.append(video)

    # ---- render into a temporary sibling folder
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.synth-tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for sub in (*SPLITS, *(f"{s}_seg" for s in SPLITS), "semseg"):
            (tmp / sub).mkdir(parents=True)
        boxes = _render_all(all_videos, tmp, progress, workers, seg_every_s)
        summary = _write_annotations(tmp, all_videos, split_vids, seg_vids, boxes, seed=seed, videos=videos,
                                     min_seconds=min_seconds, max_seconds=max_seconds, seg_fraction=seg_fraction,
                                     seg_every_s=seg_every_s, outside_crop=outside_crop, occlusions=occlusions)
        if out.exists():
            if any(out.iterdir()):
                shutil.rmtree(out)  # checked above: overwrite=True and a synth dataset
            else:
                out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {"out": str(out), "seconds": round(time.perf_counter() - t_start, 2), **summary}
    return summary


def _remove_stale_temps(out: Path) -> None:
    """Delete temp folders left next to ``out`` by a killed run (their process no longer exists)."""
    for p in out.parent.glob(f".{out.name}.synth-tmp-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            pass


def _render_all(all_videos: list[_Video], tmp: Path, progress: bool, workers: int | None,
                seg_every_s: int = DET_EVERY_S) -> dict[int, dict]:
    total = sum(v.seconds for v in all_videos)
    try:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, unit="frame", desc="synth", disable=not progress)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        bar = None
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    workers = max(1, min(int(workers), len(all_videos)))
    jobs = [(v, str(tmp), seg_every_s) for v in sorted(all_videos, key=lambda v: -v.seconds)]  # longest first
    lengths = {v.vid: v.seconds for v in all_videos}
    boxes: dict[int, dict] = {}

    def done(vid: int, b: dict) -> None:
        boxes[vid] = b
        if bar is not None:
            bar.update(lengths[vid])

    try:
        if workers > 1 and _can_spawn():
            # spawn, not fork: the parent may hold torch/OpenMP or tqdm threads
            try:
                with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                    futures = [pool.submit(_render_video, job) for job in jobs]
                    for fut in as_completed(futures):
                        done(*fut.result())
            except BrokenProcessPool:
                log.warning("synth: worker processes failed to start; rendering in this process")
        for job in jobs:  # serial path, and whatever a broken pool left undone
            if job[0].vid not in boxes:
                done(*_render_video(job))
    finally:
        if bar is not None:
            bar.close()
    return boxes


def _can_spawn() -> bool:
    """A spawned worker re-imports the parent's main script; impossible for ``python - < script``."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def _image_entry(vid: int, frame: int, ds: list[float], is_key: bool) -> dict:
    return {"file_name": frame_name(vid, frame), "height": HEIGHT, "width": WIDTH,
            "id": vid * 1_000_000 + frame, "video_id": vid,
            "is_det_keyframe": frame % DET_STEP == 0, "is_ds_keyframe": is_key, "ds": ds}


def _coco(images: list[dict], annotations: list[dict]) -> str:
    return json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}, indent=1) + "\n"


def _write_annotations(tmp: Path, all_videos: list[_Video], split_vids: dict, seg_vids: dict, boxes: dict, *,
                       seed: int, videos: tuple, min_seconds: int, max_seconds: int, seg_fraction: float,
                       seg_every_s: int = DET_EVERY_S, outside_crop: bool = True, occlusions: bool = True) -> dict:
    by_vid = {v.vid: v for v in all_videos}
    csv_rows: list[list[str]] = []
    truth_rows: list[list[str]] = []
    oracle: dict[str, dict] = {}
    splits_summary: dict[str, dict] = {}
    ann_id = 1
    for split in SPLITS:
        ds_images, vid_images, det_images, seg_images = [], [], [], []
        det_anns, seg_anns = [], []
        q_key, y_key, occ_key = [], [], []
        n_frames = 0
        for vid in split_vids[split]:
            video = by_vid[vid]
            p = rater_probability(video.v)  # [T, 3]
            q = majority_posterior(p)
            ds = [0.0, 0.0, 0.0]
            votes = None
            for t in range(video.seconds):
                frame = t * SOURCE_FPS
                is_key = t % KEYFRAME_EVERY_S == 0
                if is_key:
                    votes = video.votes[t // KEYFRAME_EVERY_S]  # [rater, criterion]
                    ds = [float(votes[:, c].sum()) / 3.0 for c in range(3)]
                    q_key.append(q[t])
                    y_key.append([int(round(x)) for x in ds])
                    occ_key.append(bool(video.occlusion is not None and video.occlusion[t]))
                entry = _image_entry(vid, frame, list(ds), is_key)
                vid_images.append(entry)
                if is_key:
                    ds_images.append(entry)
                has_mask = video.seg and t % seg_every_s == 0
                anns = []
                for cat, bbox, area, rle in boxes[vid].get(frame, []):
                    ann = {"id": ann_id, "image_id": entry["id"], "category_id": cat, "bbox": bbox,
                           "area": float(area), "iscrowd": 0}
                    if rle is not None:
                        ann["segmentation"] = rle
                    anns.append(ann)
                    ann_id += 1
                if has_mask:
                    seg_images.append(entry)
                    seg_anns += anns
                    os.symlink(os.path.join("..", split, entry["file_name"]),
                               tmp / f"{split}_seg" / entry["file_name"])
                if frame % DET_STEP == 0:
                    det_images.append(entry)
                    det_anns += anns
                csv_rows.append([
                    str(vid), str(frame), _fmt(sum(ds) / 3.0), *(_fmt(x) for x in ds), str(is_key),
                    *((str([int(x) for x in votes[r]]) if is_key else "") for r in range(3)),
                    f"semseg/{vid}_{frame}.png" if has_mask else "", ""])
                truth_rows.append([split, str(vid), str(frame), str(is_key),
                                   *(f"{x:.6f}" for x in video.v[t]), *(f"{x:.6f}" for x in video.vis[t]),
                                   *(f"{x:.6f}" for x in q[t]),
                                   occlusion_name(int(video.occlusion[t])) if video.occlusion is not None else ""])
                n_frames += 1
        (tmp / split / "annotation_ds_coco.json").write_text(_coco(ds_images, []))
        (tmp / split / "annotation_coco_vid.json").write_text(_coco(vid_images, []))
        (tmp / split / "annotation_coco.json").write_text(_coco(det_images, det_anns))
        (tmp / f"{split}_seg" / "annotation_coco.json").write_text(_coco(seg_images, seg_anns))
        q_arr, y_arr = np.array(q_key), np.array(y_key)
        ap = [average_precision(q_arr[:, c], y_arr[:, c]) for c in range(3)]
        valid = [a for a in ap if not math.isnan(a)]
        prev = [float(y_arr[:, c].mean()) for c in range(3)]
        oracle[split] = {
            "ap": [None if math.isnan(a) else round(a, 6) for a in ap],
            "map": round(sum(valid) / len(valid), 6) if valid else None,
            "prevalence": [round(x, 6) for x in prev],
            "keyframes": len(y_arr),
            "note": "AP of the true posterior P(majority of 3 raters says yes | the drawn state) against the "
                    "realised majority labels: the best mAP any model can expect on this split. prevalence = "
                    "the AP of a constant score.",
        }
        if occlusions:
            oracle[split].update(_frame_only_oracle(q_arr, y_arr, np.array(occ_key, dtype=bool)))
        splits_summary[split] = {
            "videos": len(split_vids[split]), "frames": n_frames, "keyframes": len(y_arr),
            "det_frames": len(det_images), "seg_frames": len(seg_images),
            "positive_rate": [round(x, 4) for x in prev],
            "all_positive_rate": round(float(y_arr.all(1).mean()), 4),
            "all_negative_rate": round(float((~y_arr.astype(bool)).all(1).mean()), 4),
            "oracle_ap": oracle[split]["ap"], "oracle_map": oracle[split]["map"],
            **({"occluded_keyframes": oracle[split]["occluded_keyframes"],
                "oracle_map_frame_only": oracle[split]["map_frame_only"]} if occlusions else {}),
        }

    header = ["vid", "frame", "avg_cvs", *CRITERION_COLUMNS, "is_ds_keyframe", "cvs_annotator_1",
              "cvs_annotator_2", "cvs_annotator_3", "mask_path", "label_path"]
    write_csv(tmp / "all_metadata.csv", header, csv_rows)
    write_csv(tmp / "synth_truth.csv",
               ["split", "vid", "frame", "is_ds_keyframe", "v_C1", "v_C2", "v_C3", "v_triangle", "v_plate",
                "v_artery", "v_duct", "q_C1", "q_C2", "q_C3", "occlusion"], truth_rows)
    for split in SPLITS:
        (tmp / f"{split}_vids.txt").write_text(_vid_lines(split_vids[split]))
        (tmp / f"{split}_seg_vids.txt").write_text(_vid_lines(seg_vids[split]))
    (tmp / "seg_label_map.txt").write_text("".join(f"{n}: {i}\n" for i, n in enumerate(SEG_CLASSES)))
    (tmp / ORACLE_FILE).write_text(json.dumps(oracle, indent=2) + "\n")
    params = {"generator": "cvsjepa synth", "generator_version": GENERATOR_VERSION, "synthetic": True,
              "seed": seed, "videos": list(videos), "min_seconds": min_seconds, "max_seconds": max_seconds,
              "seg_fraction": seg_fraction, "seg_every_s": seg_every_s, "outside_crop": outside_crop,
              "occlusions": occlusions,
              "occlusion_events": {"kinds": list(OCCLUSION_KINDS), "first_s": list(FIRST_S),
                                   "length_s": list(LENGTH_S), "gap_s": list(GAP_S),
                                   "note": "they hide the anatomy; the state and the labels go on (data/occlusions.py)"}
              if occlusions else None,
              "framing": "each video's anatomy left, centre or right of the centre crop (data.view=center misses "
                         "part of it)" if outside_crop else "anatomy inside the centre crop",
              "width": WIDTH, "height": HEIGHT, "source_fps": SOURCE_FPS,
              "keyframe_every_s": KEYFRAME_EVERY_S, "det_every_s": DET_EVERY_S, "rater_slope": RATER_SLOPE,
              "jpeg_quality": JPEG_QUALITY, "ignore_band_px": IGNORE_BAND_PX,
              "split_vids": split_vids, "seg_vids": seg_vids,
              "criteria": {"C1": "dark cleared triangle at the gallbladder neck (calot_triangle)",
                           "C2": "yellowish-white cystic plate under the gallbladder (cystic_plate)",
                           "C3": "both tubes out of the neck: cystic_duct and cystic_artery"}}
    (tmp / "synth.json").write_text(json.dumps(params, indent=2) + "\n")
    (tmp / "README.txt").write_text(_README.format(seed=seed, videos=videos))
    return {"splits": splits_summary}


def _frame_only_oracle(q: np.ndarray, y: np.ndarray, occluded: np.ndarray) -> dict:
    """oracle.json's bound for a model without memory: the true posterior where the anatomy shows, one
    score per criterion for every occluded keyframe (data/occlusions.py: frame_only_scores)."""
    scores = frame_only_scores(q, occluded) if len(q) else q
    ap = [average_precision(scores[:, c], y[:, c]) for c in range(3)] if len(q) else [math.nan] * 3
    valid = [a for a in ap if not math.isnan(a)]
    return {"occluded_keyframes": int(occluded.sum()),
            "ap_frame_only": [None if math.isnan(a) else round(a, 6) for a in ap],
            "map_frame_only": round(sum(valid) / len(valid), 6) if valid else None,
            "note_frame_only": "map_frame_only: the best a model that sees only the current frame can expect: the "
                               "true posterior where the anatomy shows, the mean posterior of the occluded "
                               "keyframes where it is hidden (map: a model that remembers the state can approach)"}


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """A small CSV (``\\n`` line ends, byte-identical for the same rows) into a staging folder."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue())


_README = """SYNTHETIC DATA - NOT Endoscapes2023, not surgical data, not for any clinical or research claim.

Written by `cvsjepa synth` (seed {seed}, videos train/val/test = {videos}) in the on-disk layout of
Endoscapes2023 so that the cvsjepa loaders, training and evaluation can be exercised end to end
without the real dataset. Frames are drawn cartoons: three structures in the centre of each frame
(a dark triangle = C1, a yellowish-white plate = C2, two tubes = C3) grow as a latent dissection
progresses; three simulated raters vote from what is drawn (ds = their mean, label = majority).

Unless written with --no-occlusions, a tool pass, smoke or blur hides the structures for a few seconds
now and then while the state (and the labels) goes on (synth_truth.csv, column occlusion).

oracle.json: the AP of the true label posterior, i.e. the best mAP a model can expect per split
(map_frame_only: the bound for a model that sees only the current frame).
synth.json: the generator's parameters. synth_truth.csv: per-frame latent visibilities.
"""


# ----------------------------------------------------------------------------------- mp4


def write_video_mp4(frames: Sequence[Path | str | np.ndarray], path: Path, fps: float = 1.0,
                    options: dict | None = None) -> Path:
    """Encode frames (JPEG paths or uint8 [H, W, 3] arrays of one size) as an H.264 (or MPEG-4) mp4.
    ``options``: libx264 settings (default ``{"crf": "18"}``; e.g. add ``"preset": "ultrafast"``).

    E.g. ``write_video_mp4(sorted(Path("synth/test").glob("162_*.jpg"), key=frame_number), "162.mp4", 1)``.
    """
    import av
    from fractions import Fraction

    path = Path(path)
    if not frames:
        raise DataError(f"no frames to write to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)

    def load(f) -> np.ndarray:
        return f if isinstance(f, np.ndarray) else np.asarray(Image.open(f).convert("RGB"))

    first = load(frames[0])
    h, w = first.shape[:2]
    with av.open(str(path), mode="w") as container:
        try:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.options = dict(options or {"crf": "18"})
        except Exception:  # pragma: no cover - builds without libx264
            stream = container.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = w - w % 2, h - h % 2
        stream.pix_fmt = "yuv420p"
        for f in frames:
            a = load(f)
            if a.shape[:2] != (h, w):
                raise DataError(f"frame {f if not isinstance(f, np.ndarray) else ''} is {a.shape[:2]}, expected {(h, w)}")
            a = np.ascontiguousarray(a[: stream.height, : stream.width, :3])
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_number(path: Path | str) -> int:
    """Frame number of a ``{vid}_{frame}.jpg`` name (for sorting frames of one video)."""
    return int(Path(path).stem.rsplit("_", 1)[1])
