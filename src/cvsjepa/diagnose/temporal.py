"""`cvsjepa diagnose RUN temporal`: which past seconds a temporal head used for given keyframes.

For each chosen keyframe at second ``t`` (``--sample-ids``, or ``--samples`` per label category), the
video's seconds are embedded as ``evaluate`` does (evaluate/temporal.py) and the head is run on the
keyframe's history with ``return_attention``:

* ``temporal_gated``: the cross-attention weights of the current second over its history positions
  (last block, averaged over heads); they sum to 1 over the positions the video had;
* ``temporal_gru``: the influence of each position (how far the logits move, summed over criteria,
  when that second is left out of the recurrence), normalised to sum 1.

The plot shows them against "seconds before t", the span the clip at ``t`` covers by itself (its
``data.frames`` x ``data.stride`` seconds: what a clip model sees), the positions before the video
began, and, on synthetic data, the seconds an occlusion hid the anatomy (``synth_truth.csv``). The
table gives the share of the weight beyond the clip's span ("older"): how much the head looks past
what a clip model could see; and each keyframe's gates (0 = the history is shut out; they depend on
the current second, heads/temporal.py).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from ..criteria import CRITERIA
from ..data.endoscapes import SplitIndex
from ..data.loaders import SplitData
from ..heads.temporal import gather_history, keyframe_gates
from ..evaluate.temporal import embed_videos, histories
from .criteria import category
from .report import image, md_table

TRUTH_FILE = "synth_truth.csv"  # data/synth.py: per-frame truth, with the occlusion column


def occlusions_of(root: str) -> dict:
    """``{(video_id, frame): kind}`` of the occluded frames of a synthetic dataset, else ``{}``."""
    path = Path(root) / TRUTH_FILE
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {(int(r["vid"]), int(r["frame"])): r["occlusion"] for r in csv.DictReader(f) if r.get("occlusion")}


@torch.no_grad()
def temporal_report(model, cfg, sd: SplitData, split: str, picked: list[int], device, batch_size: int, out: Path,
                    data: dict, progress: bool) -> list[str]:
    head, offsets = model.head, model.head.offsets
    chosen = [sd.index.samples[i] for i in picked]
    sub = SplitData(SplitIndex(sd.index.split, chosen, sd.index.video_frames, frame_refs=sd.index.frame_refs), None)
    emb = embed_videos(model, cfg, {split: sub}, device, batch_size, progress)
    kept, table, rows_, starts, missing = histories(sub.index, emb, offsets, model.pooler.out_dim)
    history, mask = gather_history(table, rows_, starts, offsets, missing)
    logits, weights = head(history.to(device), mask.to(device), return_attention=True)
    w = weights.float().mean(dim=(1, 2)).cpu().numpy()  # [K, L]
    probs = torch.sigmoid(logits.float()).cpu().numpy()
    gate = keyframe_gates(head, history.to(device)).float().cpu().numpy()  # [K, G]: gated: past, correction; GRU: one
    clip_span = (cfg.data.frames - 1) * cfg.data.stride  # the clip at t reaches back this many seconds
    occluded = occlusions_of(cfg.data.root)
    off = np.asarray(offsets)
    rows = []
    for k, s in enumerate(kept):
        older = float(w[k][off > clip_span].sum())
        frames = sd.index.video_frames[s.video_id]
        t = frames.index(s.frame)
        hidden = [o for o in range(max(offsets) + 1) if o <= t and occluded.get((s.video_id, frames[t - o]))]
        rows.append({"sample_id": s.sample_id, "category": category(s.label), "label": list(s.label),
                     "probs": [round(float(p), 4) for p in probs[k]], "weight_older_than_clip": round(older, 4),
                     "most_weight_s_before": int(off[int(np.argmax(w[k]))]),
                     "seconds_in_video": t + 1, "occluded_s_before": hidden,
                     "gates": [round(float(g), 4) for g in gate[k]],
                     "weights": [round(float(x), 5) for x in w[k]]})
    kind = "attention" if hasattr(head, "blocks") else "influence"
    png = plot_history_weights(out / f"temporal_{split}.png", rows, offsets, clip_span, kind,
                               f"{out.parent.name} ({cfg.head.type}) - {split}: which past seconds the head used")
    data.setdefault("figures", []).append(png.name)
    data["temporal"] = {"head": cfg.head.type, "offsets": list(offsets), "clip_span_s": clip_span, "kind": kind,
                        "samples": rows}
    what = ("the current second's cross-attention weights over its history (last block, mean over heads)"
            if kind == "attention" else "each position's influence: the change of the logits (summed over "
            "criteria) when that second is left out, normalised to sum 1 (a GRU has no attention)")
    return ["## Temporal head: which past seconds it used\n",
            f"History of {len(offsets)} positions over {max(offsets) + 1} s before each keyframe; bars = {what}. "
            f"The dotted line marks the {clip_span + 1} s the clip at t covers by itself (what a clip model sees); "
            f"'older' = the weight beyond it. Gates: how far the history comes in for that keyframe (0 = shut out)."
            + (" Orange spans: seconds an occlusion hid the anatomy (synth_truth.csv)." if occluded else "") + "\n",
            md_table(rows, [("sample_id", "keyframe", "g"), ("category", "category", "g"),
                            ("label", "label", lambda r: str(r["label"])),
                            ("probs", "probabilities", lambda r: str(r["probs"])),
                            ("weight_older_than_clip", "weight older than the clip", "pct"),
                            ("most_weight_s_before", "most weight (s before t)", "g"),
                            ("seconds_in_video", "s of video so far", "g"),
                            ("gates", "gates", lambda r: str(r["gates"]))]),
            image(png.name, "temporal weights")]


def plot_history_weights(path: Path, rows: list[dict], offsets: tuple[int, ...], clip_span: int, kind: str,
                         title: str) -> Path:
    """One panel per keyframe: weight per history position against seconds before t."""
    from ..plots import pyplot, save_figure

    plt = pyplot()
    n = max(1, len(rows))
    fig, axes = plt.subplots(n, 1, figsize=(9, 1.6 + 1.5 * n), squeeze=False, sharex=True)
    x = -np.asarray(offsets)
    width = max(offsets) + 1
    for ax, r in zip(axes[:, 0], rows):
        before_start = [o for o in offsets if o >= r["seconds_in_video"]]
        for j, o in enumerate(r["occluded_s_before"]):
            ax.axvspan(-o - 0.5, -o + 0.5, color="tab:orange", alpha=0.25, lw=0, label="occluded" if j == 0 else None)
        if before_start:
            ax.axvspan(-width, -min(before_start) + 0.5, color="0.9", lw=0, label="before the video began")
        ax.bar(x, r["weights"], width=0.8, color="tab:blue")
        ax.axvline(-clip_span - 0.5, color="k", ls=":", lw=1)
        probs = ", ".join(f"{c} {p:.2f}" for c, p in zip(CRITERIA, r["probs"]))
        ax.set_title(f"{r['sample_id']} ({r['category']}), label {r['label']}, p: {probs}; "
                     f"{100 * r['weight_older_than_clip']:.0f}% older than the clip", fontsize=8)
        ax.set_ylabel(kind, fontsize=8)
        top = max(r["weights"]) if r["weights"] and not math.isnan(max(r["weights"])) else 1.0
        ax.set_ylim(0, max(top * 1.15, 1e-6))
        if r["occluded_s_before"] or before_start:
            ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("seconds before the keyframe (0 = t); dotted: the oldest second the clip at t sees")
    axes[-1, 0].set_xlim(-width, 1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
