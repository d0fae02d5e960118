"""Every second of a split's videos as a clip, exactly as ``predict`` scores a video.

``evaluate``'s time-to-CVS needs the model's probability at every 1 fps frame, not only on the
keyframes (one every 5 s). :func:`second_samples` makes one :class:`~cvsjepa.data.endoscapes.Sample`
per frame of each video's 1 fps list, with the causal clip of training and ``predict``
(:func:`~cvsjepa.data.endoscapes.causal_clip`: positions, padded with the first frame). The labels
of a non-keyframe are the last keyframe's (the forward fill of ``annotation_coco_vid.json``; all 0
before the first keyframe): they only ride along, nothing is scored against them.

:func:`frame_seconds` is the clock: a frame's time is its position in the video's 1 fps list, as
``predict`` counts seconds from the first frame.
"""

from __future__ import annotations

import bisect
from pathlib import Path

from ..errors import DataError
from .endoscapes import Sample, SplitIndex, causal_clip


def frame_seconds(video_frames: list[int], frame: int) -> float:
    """Seconds from the video's first 1 fps frame to ``frame`` (its position in the sorted list)."""
    p = bisect.bisect_left(video_frames, frame)
    if p == len(video_frames) or video_frames[p] != frame:
        raise ValueError(f"frame {frame} is not in the video's 1 fps frame list")
    return float(p)


def second_samples(index: SplitIndex, frames: int, stride: int) -> list[Sample]:
    """One sample per 1 fps frame of every video that has a keyframe in ``index``, in (video, time)
    order. A frame's reference (a JPEG, or a frame decoded from the video) is the index's own
    (``frame_refs``, the keyframes' clips), else ``{video}_{frame}.jpg`` next to the keyframes' JPEGs
    (the Endoscapes layout), as test-time augmentation finds shifted clips."""
    by_video: dict = {}
    for s in index.samples:
        by_video.setdefault(s.video_id, []).append(s)
    out: list[Sample] = []
    for vid, keys in sorted(by_video.items(), key=lambda kv: str(kv[0])):
        listed = index.video_frames.get(vid) or []
        known = {f: r for (v, f), r in (index.frame_refs or {}).items() if v == vid}
        for s in keys:
            known.update(zip(s.clip_frames, s.clip_paths))
        last = keys[0].clip_paths[-1]

        def ref(q: int, vid=vid, known=known, last=last):
            if q in known:
                return known[q]
            if not isinstance(last, Path):
                raise DataError(f"no reference for 1 fps frame {q} of video {vid}: cannot score its every second")
            return last.parent / f"{vid}_{q}.jpg"

        keys = sorted(keys, key=lambda s: s.frame)
        k = -1
        for f in listed:
            while k + 1 < len(keys) and keys[k + 1].frame <= f:
                k += 1
            mean, label = (keys[k].rater_mean, keys[k].label) if k >= 0 else ((0.0, 0.0, 0.0), (0, 0, 0))
            clip = causal_clip(listed, f, frames, stride)
            out.append(Sample(f"{vid}_{f}", vid, f, index.split, mean, label, tuple(clip), tuple(ref(q) for q in clip)))
    return out


def seconds_split(split, cfg, crop: int):
    """A :class:`~cvsjepa.data.loaders.SplitData` of :func:`second_samples` (same preprocessing,
    target, caches and bad-sample policy as the keyframe split ``split``)."""
    from .dataset import ClipDataset
    from .loaders import SplitData
    from .transforms import view_count

    samples = second_samples(split.index, cfg.data.frames, cfg.data.stride)
    index = SplitIndex(split.index.split, samples, split.index.video_frames, frame_refs=split.index.frame_refs)
    # one preprocessed float32 frame (all its views); half the frame cache, as a split gets
    frame_bytes = view_count(cfg.data.view) * 3 * crop * crop * 4
    budget = cfg.data.frame_cache_mb * 2**20 // 2
    longest = max((len(f) for f in index.video_frames.values()), default=1)
    return SplitData(index, ClipDataset(samples, crop=crop, target=cfg.data.target,
                                        cache_frames=max(64, budget // frame_bytes),
                                        cache_videos=max(2, budget // (frame_bytes * longest)),
                                        on_bad_sample=cfg.data.on_bad_sample, view=cfg.data.view))
