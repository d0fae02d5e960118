"""A CVS timeline: per-second probabilities for a whole video, from causal clips, in bounded memory.

Clips are the ones training used (:func:`cvsjepa.data.endoscapes.causal_clip`): sample ``k`` and
the ``frames - 1`` earlier samples, ``stride`` apart, the first sample standing in for positions
before the start. Frames go through :func:`cvsjepa.data.transforms.preprocess_frame` (the run's
``data.view``) one at a time as they are decoded; only the last ``(frames - 1) * stride + 1``
preprocessed frames are kept, and the heap is trimmed every few minutes of video (:func:`trim_heap`), so memory stays flat.

Probabilities are calibrated when the run has a calibration (:mod:`cvsjepa.evaluate.temperature`).
``p_all`` is the **product** ``p_C1 * p_C2 * p_C3`` (P(all three) if the criteria were
independent given the clip; the same definition ``cvsjepa evaluate`` uses). Each sample is in one
of three states, ``cvs``, ``uncertain`` or ``no_cvs``, by the decision rule
(:class:`cvsjepa.evaluate.decision.DecisionRule`: the ``specificity`` policy's thresholds for
``cvs``, the ``sensitivity`` policy's as the lower edge of ``uncertain``). CVS counts as reached at
``t`` when the sample at ``t`` and each sample of the next ``consecutive`` seconds is ``cvs``, i.e.
``round(consecutive * fps)`` consecutive samples starting at ``t``. A rule whose policy val could not
support never reaches CVS, and the summary says why.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..criteria import CRITERIA
from ..data.endoscapes import causal_clip
from ..data.transforms import preprocess_frame, stack_clip
from ..data.video import SampledFrame
from ..evaluate.decision import STATES, DecisionRule, consecutive_samples, first_run_start
from ..io import atomic_write_json, atomic_write_text

log = logging.getLogger("cvsjepa")

FORMAT = "cvsjepa-timeline"
FORMAT_VERSION = 2  # 2: decision rule (policy, band, states), calibration
TRIM_EVERY = 256  # samples between heap trims (about 4 minutes of video at 1 fps)
_MALLOC_TRIM = None  # glibc's malloc_trim, looked up once; False where there is none


@dataclass
class ClipMeta:
    """Where a clip ends: sample index, its time, and the source frame shown there."""

    index: int
    time_s: float
    frame_index: int


def iter_clips(samples: Iterable[SampledFrame], crop: int, frames: int, stride: int, view: str = "center"
               ) -> Iterator[tuple[ClipMeta, torch.Tensor]]:
    """One causal clip float32 ``[frames, 3, crop, crop]`` (``three_crops``: ``[3, frames, 3, crop, crop]``)
    per sample, in order, as the samples arrive.

    Keeps only a window of ``(frames - 1) * stride + 1`` preprocessed frames; the clip's positions
    come from :func:`causal_clip` over the positions seen so far (padding with sample 0 at the start).
    """
    window: deque[torch.Tensor] = deque(maxlen=(frames - 1) * stride + 1)
    for s in samples:
        window.append(preprocess_frame(torch.from_numpy(s.image), crop, view))
        first_in_window = s.index - len(window) + 1
        positions = causal_clip(range(s.index + 1), s.index, frames, stride)
        yield ClipMeta(s.index, s.time_s, s.frame_index), stack_clip([window[q - first_in_window] for q in positions])


@dataclass
class Timeline:
    """Per-sample CVS probabilities for one video.

    ``times`` [T] seconds from the first frame, ``frame_indices`` [T] the source frame shown,
    ``probs`` float [T, 3] (C1, C2, C3; calibrated when ``calibration`` is set). ``rule`` decides the
    states (given only ``thresholds``: a two-state rule with those). ``complete`` is False when
    reading stopped early; ``errors`` says why, ``warnings`` lists what was skipped.
    """

    times: np.ndarray
    frame_indices: np.ndarray
    probs: np.ndarray
    thresholds: tuple[float | None, ...] | None
    fps: float
    consecutive_s: float = 3.0
    criteria: tuple[str, ...] = CRITERIA
    video: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    decode: dict = field(default_factory=dict)
    complete: bool = True
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rule: DecisionRule | None = None
    calibration: dict | None = None  # evaluate/temperature.py's to_dict() of the map applied, or None
    raw_probs: np.ndarray | None = None  # [T, 3] the model's sigmoid outputs before calibration (None: = probs)

    def __post_init__(self):
        if self.rule is None:
            self.rule = DecisionRule(tuple(self.thresholds))
        self.thresholds = tuple(self.rule.thresholds)

    def __len__(self) -> int:
        return len(self.times)

    @property
    def p_all(self) -> np.ndarray:
        """[T]: the product of the three probabilities."""
        return self.probs.prod(axis=1) if len(self.probs) else np.zeros(0)

    @property
    def passing(self) -> np.ndarray:
        """[T] bool: every criterion >= its threshold (state ``cvs``)."""
        return self.rule.passing(self.probs) if len(self.probs) else np.zeros(0, bool)

    @property
    def states(self) -> np.ndarray:
        """[T] int8 codes into :data:`cvsjepa.evaluate.decision.STATES`."""
        return self.rule.states(self.probs) if len(self.probs) else np.zeros(0, np.int8)

    @property
    def consecutive_samples(self) -> int:
        return consecutive_samples(self.consecutive_s, self.fps)

    @property
    def cvs_reached_at(self) -> float | None:
        """Start time (s) of the first run of ``consecutive_samples`` passing samples; None if none."""
        i = first_run_start(self.passing, self.consecutive_samples)
        return None if i is None else float(self.times[i])

    def summary(self) -> str:
        rule = f"{self.rule.describe(self.criteria)}; for {self.consecutive_s:g} consecutive s"
        when = self.cvs_reached_at
        if not self.rule.can_declare:
            head = f"CVS not declared: {self.rule.reason} ({rule})"
        elif when is not None:
            head = f"CVS reached at {format_clock(when)} ({when:.0f} s; {rule})"
        else:
            head = f"CVS never reached ({rule}; longest run {longest_run(self.passing) / self.fps:g} s)"
        span = f"{len(self)} samples at {self.fps:g} fps over {format_clock(self.duration_s)}"
        tail = "" if self.complete else " -- INCOMPLETE: " + "; ".join(self.errors)
        return f"{head}; {span}{tail}"

    @property
    def duration_s(self) -> float:
        return float(self.times[-1]) + 1.0 / self.fps if len(self) else 0.0

    # ------------------------------------------------------------------ outputs
    def rows(self) -> list[dict]:
        p_all, passing, states = self.p_all, self.passing, self.states
        raw = self.raw_probs
        return [{"time_s": round(float(self.times[i]), 6), "frame_index": int(self.frame_indices[i]),
                 **{f"p_{c}": round(float(self.probs[i, j]), 6) for j, c in enumerate(self.criteria)},
                 "p_all": round(float(p_all[i]), 6), "pass": bool(passing[i]), "state": STATES[states[i]],
                 **({} if raw is None else {f"raw_{c}": round(float(raw[i, j]), 6) for j, c in enumerate(self.criteria)})}
                for i in range(len(self))]

    def rule_columns(self) -> dict:
        """The constant columns that say, on every CSV row, which policy and thresholds decided."""
        fmt = (lambda t: "" if t is None else round(float(t), 6))  # noqa: E731
        band = self.rule.band or (None,) * len(self.criteria)
        return {"policy": self.rule.policy, **{f"threshold_{c}": fmt(t) for c, t in zip(self.criteria, self.thresholds)},
                **{f"uncertain_from_{c}": fmt(b) for c, b in zip(self.criteria, band)}}

    def to_csv(self, path: str | Path) -> Path:
        """``time_s, frame_index, p_C1, p_C2, p_C3, p_all, state`` then the rule's constant columns
        (``policy, threshold_C*, uncertain_from_C*``), one row per sample."""
        buf = io.StringIO()
        fixed = self.rule_columns()
        columns = ["time_s", "frame_index", *(f"p_{c}" for c in self.criteria), "p_all", "state", *fixed]
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows({**r, **fixed} for r in self.rows())
        atomic_write_text(Path(path), buf.getvalue())
        return Path(path)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "summary": self.summary(),
                "complete": self.complete, "errors": self.errors, "warnings": self.warnings,
                "cvs_reached_at_s": self.cvs_reached_at, "consecutive_s": self.consecutive_s,
                "fps": self.fps, "thresholds": list(self.thresholds), "criteria": list(self.criteria),
                "decision": self.rule.to_dict(), "calibration": self.calibration,
                "seconds_per_state": self.seconds_per_state(),
                "p_all": "product of p_C1, p_C2, p_C3", "video": self.video, "model": self.model,
                "decode": self.decode, "timeline": self.rows()}

    def seconds_per_state(self) -> dict[str, float]:
        counts = np.bincount(self.states.astype(np.int64), minlength=len(STATES))
        return {name: float(counts[k]) / self.fps for k, name in enumerate(STATES)}

    def to_json(self, path: str | Path) -> Path:
        atomic_write_json(Path(path), self.to_dict())
        return Path(path)

    @classmethod
    def from_json(cls, path: str | Path) -> "Timeline":
        d = json.loads(Path(path).read_text())
        rows, crit = d["timeline"], tuple(d["criteria"])
        raw = None
        if rows and f"raw_{crit[0]}" in rows[0]:
            raw = np.array([[r[f"raw_{c}"] for c in crit] for r in rows], float).reshape(-1, len(crit))
        return cls(times=np.array([r["time_s"] for r in rows], float),
                   frame_indices=np.array([r["frame_index"] for r in rows], int),
                   probs=np.array([[r[f"p_{c}"] for c in crit] for r in rows], float).reshape(-1, len(crit)),
                   raw_probs=raw,
                   thresholds=tuple(d["thresholds"]), fps=d["fps"], consecutive_s=d["consecutive_s"],
                   criteria=crit, video=d["video"], model=d["model"], decode=d["decode"],
                   complete=d["complete"], errors=d["errors"], warnings=d["warnings"],
                   rule=DecisionRule.from_dict(d["decision"]) if d.get("decision") else None,
                   calibration=d.get("calibration"))

    def plot(self, path: str | Path) -> Path:
        """The three probabilities over time, the rule's thresholds dashed (the uncertain band's lower
        edges dotted), shaded green where the state is ``cvs`` and yellow where ``uncertain``."""
        from ..plots import pyplot, save_figure

        plt = pyplot()
        minutes = self.duration_s > 600
        scale = 60.0 if minutes else 1.0
        t = self.times / scale
        fig, ax = plt.subplots(figsize=(min(24, 8 + len(self) / 400), 4))
        colours = ("tab:blue", "tab:orange", "tab:green")
        band = self.rule.band or (None,) * len(self.criteria)
        for j, c in enumerate(self.criteria):
            thr = self.thresholds[j]
            edge = "" if band[j] is None else f", uncertain from {band[j]:.2f} dotted"
            ax.plot(t, self.probs[:, j], color=colours[j % 3], lw=1.2,
                    label=f"P({c}): cvs from {'n/a' if thr is None else f'{thr:.2f}'} dashed{edge}")
            if thr is not None:
                ax.axhline(thr, color=colours[j % 3], ls="--", lw=0.9, alpha=0.8)
            if band[j] is not None:
                ax.axhline(band[j], color=colours[j % 3], ls=":", lw=0.9, alpha=0.8)
        width = 1.0 / self.fps / scale
        states = self.states
        for code, colour, name in ((2, "tab:green", "cvs (all three pass)"), (1, "gold", "uncertain")):
            for i, (start, stop) in enumerate(_runs(states == code)):
                ax.axvspan(t[start], t[stop - 1] + width, color=colour, alpha=0.15, lw=0,
                           label=name if i == 0 else None)
        when = self.cvs_reached_at
        if when is not None:
            ax.axvline(when / scale, color="black", lw=1, label=f"CVS at {format_clock(when)}")
        ax.set_ylim(0, 1)
        ax.set_xlabel("time (min)" if minutes else "time (s)")
        ax.set_ylabel("probability" + (" (calibrated)" if self.calibration else ""))
        ax.legend(fontsize=8, loc="upper left")
        name = Path(self.video.get("path", "")).name
        ax.set_title(f"{name}: {self.summary()}", fontsize=8, wrap=True)
        fig.tight_layout()
        return save_figure(fig, path)

    def save(self, out_dir: str | Path, plot: bool = True) -> dict[str, Path]:
        """Write ``timeline.csv``, ``timeline.json`` and (``plot``) ``timeline.png`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = {"csv": self.to_csv(out / "timeline.csv"), "json": self.to_json(out / "timeline.json")}
        if plot:
            written["png"] = self.plot(out / "timeline.png")
        return written


def run_clips(clips: Iterable[tuple[ClipMeta, torch.Tensor]], predict: Callable[[torch.Tensor], torch.Tensor],
              batch_size: int, on_clip: Callable[[ClipMeta], None] | None = None) -> tuple[list[ClipMeta], np.ndarray]:
    """``predict`` (clips ``[B, T, 3, crop, crop]`` -> probabilities ``[B, 3]``) over the clips, in batches."""
    metas: list[ClipMeta] = []
    out: list[np.ndarray] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        if batch:
            out.append(predict(torch.stack(batch)).double().cpu().numpy())  # float64: compared with float64 thresholds
            batch.clear()

    for meta, clip in clips:
        metas.append(meta)
        batch.append(clip)
        if len(batch) == batch_size:
            flush()
        if on_clip is not None:
            on_clip(meta)
    flush()
    probs = np.concatenate(out) if out else np.zeros((0, 3), np.float64)
    return metas, probs


def build_timeline(reader, predict: Callable[[torch.Tensor], torch.Tensor], *, crop: int, frames: int,
                   stride: int, thresholds: tuple[float, ...] | None = None, consecutive_s: float = 3.0,
                   batch_size: int = 8, progress: bool = False, model_info: dict | None = None,
                   criteria: tuple[str, ...] = CRITERIA, rule: DecisionRule | None = None,
                   calibration=None, view: str = "center") -> Timeline:
    """Read ``reader`` (:func:`cvsjepa.data.video.open_frames`) to the end, or to where it fails.
    ``predict`` gives the model's probabilities; ``calibration`` (a
    :class:`~cvsjepa.evaluate.temperature.Temperature`, or None) maps them to the ones shown;
    ``rule`` (or plain ``thresholds``) decides the states; ``view``: the run's ``data.view``."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    info, report, fps = reader.info, reader.report, reader.fps
    bar = tqdm(total=round(info.declared_duration_s, 1) if info.declared_duration_s else None, unit="s",
               desc=Path(info.path).name[:30], disable=not progress, leave=False,
               bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s of video [{elapsed}<{remaining}]")

    def advance(meta: ClipMeta) -> None:
        bar.update(max(0.0, meta.time_s + 1.0 / fps - bar.n))
        if meta.index % TRIM_EVERY == TRIM_EVERY - 1:
            trim_heap()

    try:
        metas, probs = run_clips(iter_clips(reader, crop, frames, stride, view), predict, batch_size, advance)
    finally:
        bar.close()
    for w in report.warnings:
        log.warning("%s: %s", info.path, w)
    raw = probs.astype(float).reshape(-1, 3)
    return Timeline(times=np.array([m.time_s for m in metas], float),
                    frame_indices=np.array([m.frame_index for m in metas], int),
                    probs=raw if calibration is None else calibration.apply(raw),
                    raw_probs=None if calibration is None else raw,
                    thresholds=None if thresholds is None else tuple(float(t) for t in thresholds),
                    fps=fps, consecutive_s=float(consecutive_s), criteria=tuple(criteria), video=info.to_dict(),
                    model=model_info or {}, decode=report.to_dict(), complete=report.complete,
                    errors=list(report.errors), warnings=list(report.warnings), rule=rule,
                    calibration=None if calibration is None else calibration.to_dict())


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    Each sample allocates and frees a few MB (the RGB frame, its float copy, a batch of clips);
    glibc keeps freed chunks, and over an hour the fragmented heap creeps up by tens of MB.
    Trimming every few minutes of video keeps RSS flat (docs/benchmarks_predict.md).
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


def longest_run(passing: np.ndarray) -> int:
    return max((stop - start for start, stop in _runs(passing)), default=0)


def _runs(passing: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index ranges of consecutive True values."""
    runs, start = [], None
    for i, ok in enumerate(passing):
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(passing)))
    return runs


def format_clock(seconds: float) -> str:
    """``754.0`` -> ``"00:12:34"``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
