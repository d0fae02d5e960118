"""`cvsjepa diagnose`: the research log's analyses of a run, as ``RUN/diagnose/report.md`` + PNGs.

    attention   pooler attention heatmaps over the frames of chosen or sampled clips
    categories  per-category attention std/max and accuracy, criterion comparison, wrong class
    entropy     backbone internal attention entropy per layer x head (eager attention); --compare RUN2
    curves      train/val mAP and gap of RUN (and --runs ...) on one plot
    temporal    (temporal runs, instead of the three above) which past seconds the head used per keyframe

Numbers also go to ``diagnose/diagnose.json``; per-clip attention statistics to
``diagnose/attention_<split>.csv``. Thresholds (for accuracies) are chosen on val predictions by
balanced accuracy, as ``cvsjepa evaluate`` does.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset, default_collate

from ..criteria import CRITERIA

from ..version import __version__
from ..data.dataset import collate_skip_none
from ..data.loaders import build_splits
from ..data.masks import seg_class_names
from ..data.transforms import view_count
from ..errors import ConfigError
from ..evaluate.inference import move_batch, predict_loader
from ..evaluate.runner import json_safe, role_split
from ..evaluate.thresholds import choose_thresholds
from ..io import atomic_write_json, atomic_write_text
from ..config import is_temporal
from ..reopen import Reopen, load_run, run_config
from ..rundir import DIAGNOSE_DIR, RunDir
from .attention import (collect_attention, mean_map, normalised_entropy, plot_attention_clip, to_grid,
                        token_layout)
from .criteria import (CATEGORIES, categories, category, category_table, criterion_comparison, pick_per_category,
                       plot_categories, wrong_class)
from .curves import curve_summary, load_curves, plot_training_curves
from .entropy import internal_entropy, plot_entropy
from .report import fmt, image, md_table
from .temporal import temporal_report

log = logging.getLogger("cvsjepa")

ANALYSES = ("attention", "categories", "entropy", "curves")
OPT_IN = ("seg",)  # needs a multi-task run; not part of "all"
TEMPORAL = ("temporal", "curves")  # what a temporal run (head.type=temporal_*) has: "all" means these
CLIP_ONLY = ("attention", "categories", "entropy", "seg")  # of a clip head's attention over tokens


@dataclass(frozen=True)
class DiagnoseOptions:
    """What ``cvsjepa diagnose`` analyses (how it re-opens the run is a :class:`~cvsjepa.reopen.Reopen`)."""
    analyses: tuple[str, ...] = ("all",)
    split: str = "val"
    samples: int = 2  # attention heatmaps per label category
    sample_ids: tuple[str, ...] = ()  # heatmaps for these clips instead
    compare: str | Path | None = None  # second run for the entropy comparison
    runs: tuple[str | Path, ...] = ()  # more runs on the training-curve plot
    entropy_samples: int = 8
    seed: int = 0


@dataclass
class DiagnoseResult:
    out_dir: Path
    report: Path
    data: dict


def expand(analyses: list[str], temporal: bool = False) -> list[str]:
    chosen = list(dict.fromkeys(analyses or ["all"]))
    bad = [a for a in chosen if a not in (*ANALYSES, *OPT_IN, *TEMPORAL, "all")]
    if bad:
        raise ConfigError(f"unknown analysis {', '.join(bad)}; choose from {', '.join(ANALYSES + OPT_IN)}, "
                          f"temporal or all")
    if temporal:
        clip = [a for a in chosen if a in CLIP_ONLY]
        if clip:
            raise ConfigError(f"{', '.join(clip)} analyse a clip head's attention over tokens; this is a temporal "
                              f"run: use temporal (and curves)")
        return list(TEMPORAL) if "all" in chosen else [a for a in TEMPORAL if a in chosen]
    if "temporal" in chosen:
        raise ConfigError("temporal analyses a temporal run (head.type=temporal_gated or temporal_gru); this run's "
                          "head reads clip tokens")
    base = list(ANALYSES) if "all" in chosen else [a for a in ANALYSES if a in chosen]
    return base + [a for a in OPT_IN if a in chosen]


def diagnose_run(run_dir: str | Path, options: DiagnoseOptions = DiagnoseOptions(),
                 reopen: Reopen = Reopen()) -> DiagnoseResult:
    t0 = time.time()
    o = options
    split, samples, sample_ids, compare, runs = o.split, o.samples, list(o.sample_ids), o.compare, o.runs
    entropy_samples, seed, progress = o.entropy_samples, o.seed, reopen.progress
    run = Path(run_dir)
    temporal = RunDir.open(run).has_best() and is_temporal(run_config(run, reopen)[0].head.type)
    todo = expand(list(o.analyses), temporal)
    if split not in ("val", "test"):
        raise ConfigError(f"--split must be val or test, got {split!r}")
    if samples < 1 or entropy_samples < 1:
        raise ConfigError("--samples and --entropy-samples must be >= 1")
    if compare is not None and "entropy" not in todo:
        log.warning("--compare is used by the entropy analysis only, which is not selected: ignored")
    if runs and "curves" not in todo:
        log.warning("--runs is used by the curves analysis only, which is not selected: ignored")
    needs_model = any(a in todo for a in ("attention", "categories", "entropy", "seg", "temporal"))
    if needs_model:
        RunDir.open(run).require_best()
        if compare is not None and "entropy" in todo:
            RunDir.open(compare).require_best()
    else:
        RunDir.open(run)
    curve_runs = [run, *[Path(r) for r in runs]]
    if "curves" in todo:
        curves = load_curves(curve_runs)  # fail early on a run without metrics.csv

    out = run / DIAGNOSE_DIR
    out.mkdir(exist_ok=True)
    data: dict = {"run": str(run), "split": split, "analyses": todo, "cvsjepa_version": __version__}
    md = [f"# Diagnostics: `{run.name}`\n"]
    dev = reopen.torch_device()
    if "temporal" in todo:
        model, cfg, meta = load_run(run, reopen, dev)
        role_split(cfg, split)
        sd = build_splits(cfg, model.backbone.crop_size, roles=(split,))[split]
        md += temporal_report(model, cfg, sd, split, _pick(sd, samples, sample_ids, seed), dev, reopen.batch(cfg),
                              out, data, progress)
        del model
    elif needs_model:
        model, cfg, meta = load_run(run, reopen, dev)
        role_split(cfg, split)
        splits = build_splits(cfg, model.backbone.crop_size, roles=tuple(dict.fromkeys(("val", split))))
        sd = splits[split]
        grid = token_layout(model.backbone, cfg.data.frames)  # (levels, T', H', W')
        if view_count(cfg.data.view) > 1:  # three_crops: (views, levels, T', H', W'), shown side by side
            grid = (view_count(cfg.data.view), *grid)
        bs = reopen.batch(cfg)
        data.update(backbone=model.backbone.name, checkpoint_epoch=meta.get("epoch"), token_layout=list(grid),
                    split_name=role_split(cfg, split), n_samples=len(sd.index.samples))
        md.append(f"Backbone `{model.backbone.name}`; best checkpoint of epoch {meta.get('epoch')}; split "
                  f"**{split}** (`{data['split_name']}`, {len(sd.index.samples)} keyframe clips of "
                  f"{len(sd.index.video_frames)} videos); token layout ({'views, ' if len(grid) == 5 else ''}"
                  f"levels, T', H', W') = {tuple(grid)} "
                  f"= N = {math.prod(grid)} tokens, so a uniform attention weight is 1/N = {1 / math.prod(grid):.4g}"
                  + (" (maps sum the levels' weights at each position)" if grid[-4] > 1 else "")
                  + (" (the three crops side by side)" if len(grid) == 5 else "") + ".\n")
        if "attention" in todo:
            md += _attention(model, cfg, sd, split, grid, samples, sample_ids, seed, out, data)
        if "categories" in todo:
            md += _categories(model, cfg, splits, split, grid, bs, dev, out, data, progress)
        if "entropy" in todo:
            md += _entropy(model, run, sd, split, compare, entropy_samples, seed, dev, reopen, out, data, progress)
        if "seg" in todo:
            md += _seg(model, cfg, sd, samples, seed, out, data)
        del model
    if "curves" in todo:
        md += _curves(curves, out, data)
    data["seconds"] = round(time.time() - t0, 1)
    md.append(f"\n_Written by cvsjepa {__version__} `diagnose` in {data['seconds']} s._\n")
    report = out / "report.md"
    atomic_write_text(report, "\n".join(md))
    atomic_write_json(out / "diagnose.json", json_safe(data))
    return DiagnoseResult(out, report, data)


def _seg(model, cfg, sd, samples, seed, out, data) -> list[str]:
    from .segmentation import seg_check

    path, rows = seg_check(model.cpu(), cfg, sd, seg_class_names(cfg), max(samples, 4), seed, out)
    data["seg"] = rows
    data.setdefault("figures", []).append(path.name)
    md = ["\n## Segmentation check\n", "Frame | ground truth | prediction, with the CVS probabilities "
          "next to the labels.\n", image(path.name, "segmentation check"),
          md_table(rows, [("sample_id", "sample", "g"), ("label", "label", lambda r: str(r["label"])),
                          ("prob", "P(C1, C2, C3)", lambda r: str(r["prob"])),
                          ("pixel_accuracy", "pixel accuracy", "f3")])]
    return md


# ------------------------------------------------------------------ categories
def _val_thresholds(model, cfg, splits, split, table, bs, dev, progress) -> list[float]:
    if split == "val":
        return choose_thresholds(torch.tensor(table.probs), torch.tensor(table.labels, dtype=torch.float32))
    val = predict_loader(model, splits["val"].loader(bs, False, cfg.data.num_workers), dev, desc="val",
                         progress=progress)
    return choose_thresholds(val.probs, val.labels)


def _categories(model, cfg, splits, split, grid, bs, dev, out, data, progress) -> list[str]:
    sd = splits[split]
    table = collect_attention(model, sd.loader(bs, False, cfg.data.num_workers), grid, dev, progress=progress)
    arr = table.as_arrays()
    thresholds = _val_thresholds(model, cfg, splits, split, table, bs, dev, progress)
    stats = {"attention_std": arr["std"], "attention_max": arr["max"], "attention_entropy": arr["entropy"]}
    rows = category_table(arr["labels"], arr["probs"], thresholds, stats)
    comparison = criterion_comparison(arr["labels"], arr["probs"], thresholds)
    wrong = wrong_class(arr["labels"], arr["probs"])
    cats = np.asarray(categories(arr["labels"]))
    temporal = {c: arr["temporal"][cats == c].mean(axis=0).tolist() for c in CATEGORIES if (cats == c).any()}
    n_tok = math.prod(grid)
    png = plot_categories(out / f"categories_{split}.png", rows, temporal, n_tok,
                          f"{out.parent.name} - {split}: pooler attention and accuracy per label category")
    _write_attention_csv(out / f"attention_{split}.csv", table, cats)
    data.setdefault("figures", []).append(png.name)
    data["categories"] = {"thresholds": thresholds, "thresholds_from": "val (balanced accuracy)", "rows": rows,
                          "criterion_comparison": comparison, "wrong_class": wrong, "temporal_profile": temporal}
    pct = "pct"
    md = ["## Label categories\n",
          f"Every clip of the split, grouped by its labels. Accuracy uses the per-criterion thresholds chosen on "
          f"val by balanced accuracy ({', '.join(f'{c} {t:.3f}' for c, t in zip(CRITERIA, thresholds))})"
          + (" — chosen on this same split, so optimistic" if split == "val" else "") + ". Attention statistics "
          f"are of the head-averaged pooler map; x1/N = in units of the uniform weight (1 = uniform). "
          f"Per-clip values: `attention_{split}.csv`.\n",
          md_table(rows, [("category", "category", "g"), ("n", "n", "g"),
                          ("mean_attention_std", "attn std", "sci"),
                          ("mean_attention_std", "std x1/N", lambda r: fmt(r["mean_attention_std"] * n_tok, "f3")),
                          ("mean_attention_max", "attn max", "sci"),
                          ("mean_attention_max", "max x1/N", lambda r: fmt(r["mean_attention_max"] * n_tok, "f3")),
                          ("mean_attention_entropy", "attn entropy", "pct2"),
                          ("mean_prob_C1", "mean p(C1)", "f3"), ("mean_prob_C2", "mean p(C2)", "f3"),
                          ("mean_prob_C3", "mean p(C3)", "f3"),
                          ("accuracy", "criteria right", pct), ("exact_match", "all 3 right", pct)]),
          image(png.name, "attention and accuracy per category"),
          "### Criterion comparison\n",
          "For each criterion: the clips where it is the *only* positive one vs the full-CVS clips. Detection = "
          "probability of that criterion >= its val threshold.\n",
          md_table(comparison, [("criterion", "criterion", "g"), ("n_alone", "n alone", "g"),
                                ("mean_prob_alone", "mean p alone", "f3"),
                                ("detection_rate_alone", "detected alone", pct),
                                ("n_in_full_cvs", "n full CVS", "g"), ("mean_prob_in_full_cvs", "mean p in full CVS", "f3"),
                                ("detection_rate_in_full_cvs", "detected in full CVS", pct)]),
          "### Wrong class\n",
          "Single-criterion clips: how often each criterion gets the highest probability (the log: C2-only clips "
          "were ranked C1 > C2).\n",
          md_table(wrong, [("category", "category", "g"), ("n", "n", "g"), ("top_C1", "top = C1", "g"),
                           ("top_C2", "top = C2", "g"), ("top_C3", "top = C3", "g"),
                           ("top_is_true_criterion", "top is right", pct),
                           ("most_confused_with", "most confused with", "g")])]
    return md


def _write_attention_csv(path: Path, table, cats) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    t_slots = len(table.temporal[0]) if table.temporal else 0
    w.writerow(["sample_id", "video_id", "category", *[f"label_{c}" for c in CRITERIA], *[f"prob_{c}" for c in CRITERIA],
                "attention_std", "attention_max", "attention_entropy", "head_entropy",
                *[f"mass_t{t}" for t in range(t_slots)]])
    for i, sid in enumerate(table.sample_ids):
        w.writerow([sid, table.video_ids[i], cats[i], *table.labels[i], *[f"{p:.6f}" for p in table.probs[i]],
                    f"{table.std[i]:.6g}", f"{table.max[i]:.6g}", f"{table.entropy[i]:.6f}",
                    f"{table.head_entropy[i]:.6f}", *[f"{m:.6f}" for m in table.temporal[i]]])
    atomic_write_text(path, buf.getvalue())


# ------------------------------------------------------------------ attention heatmaps
def _pick(sd, samples: int, sample_ids: list[str] | None, seed: int) -> list[int]:
    position = {s.sample_id: i for i, s in enumerate(sd.index.samples)}
    if sample_ids:
        unknown = [s for s in sample_ids if s not in position]
        if unknown:
            raise ConfigError(f"sample id(s) {', '.join(unknown[:5])} are not in this split "
                              f"(ids look like {sd.index.samples[0].sample_id if sd.index.samples else '7_125'}: "
                              f"video_frame; see predictions_<split>.csv)")
        return [position[s] for s in sample_ids]
    labels = np.asarray([s.label for s in sd.index.samples])
    return pick_per_category(labels, samples, seed)


@torch.no_grad()
def _attention(model, cfg, sd, split, grid, samples, sample_ids, seed, out, data) -> list[str]:
    idx = _pick(sd, samples, sample_ids, seed)
    tubelet = model.backbone.tubelet_size
    n_tok = math.prod(grid)
    rows, md = [], []
    for i in idx:
        item = sd.dataset[i]
        if item is None:
            log.warning("skipping clip %s: a frame could not be read", sd.index.samples[i].sample_id)
            continue
        batch = move_batch(default_collate([item]), next(model.parameters()).device)
        logits, attn = model(batch, return_attention=True)
        probs = torch.sigmoid(logits.float())[0].cpu().tolist()
        a = mean_map(attn.cpu())
        s = sd.index.samples[i]
        row = {"sample_id": s.sample_id, "category": category(s.label), "label": list(s.label),
               "probs": probs, "attention_std": float(a.std(unbiased=False)), "attention_max": float(a.max()),
               "attention_entropy": float(normalised_entropy(a)[0]),
               "temporal": to_grid(a, grid)[0].sum(dim=(1, 2)).tolist()}
        png = out / f"attention_{split}_{s.sample_id}.png"
        title = (f"{s.sample_id} ({row['category']}) label {list(s.label)} | p = "
                 f"[{', '.join(f'{p:.2f}' for p in probs)}] | attention std {row['attention_std']:.3g}, "
                 f"max {row['attention_max']:.3g} ({row['attention_max'] * n_tok:.2f} x uniform), "
                 f"entropy {100 * row['attention_entropy']:.2f}%")
        plot_attention_clip(png, item["video"], to_grid(a, grid)[0], tubelet, title, list(s.clip_frames))
        row["png"] = png.name
        data.setdefault("figures", []).append(png.name)
        rows.append(row)
    data["attention"] = {"samples": rows, "selection": "given ids" if sample_ids else
                         f"up to {samples} per category, seed {seed}"}
    md += ["## Pooler attention\n",
           "The head's cross-attention weights, averaged over heads and queries, mapped back to the token grid "
           "(T', H', W') and upsampled onto the frames (last frame of each tubelet shown). Colour = weight in units "
           "of the uniform weight 1/N (shared scale per clip); the bar panel is the attention mass per time step "
           "(the last step holds the keyframe). Entropy is normalised by log N (100% = uniform).\n",
           md_table(rows, [("sample_id", "clip", "g"), ("category", "category", "g"),
                           ("label", "label", lambda r: str(r["label"])),
                           ("probs", "probabilities", lambda r: "[" + ", ".join(f"{p:.2f}" for p in r["probs"]) + "]"),
                           ("attention_std", "attn std", "sci"), ("attention_max", "attn max", "sci"),
                           ("attention_entropy", "entropy", "pct2")])]
    md += [image(r["png"], f"attention {r['sample_id']}") for r in rows]
    return md


# ------------------------------------------------------------------ internal entropy
def _entropy_indices(sd, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    total = len(sd.index.samples)
    return sorted(rng.choice(total, size=min(n, total), replace=False).tolist())


def _entropy(model, run, sd, split, compare, n, seed, dev, reopen, out, data, progress) -> list[str]:
    idx = _entropy_indices(sd, n, seed)
    ids = [sd.index.samples[i].sample_id for i in idx]
    loader = DataLoader(Subset(sd.dataset, idx), batch_size=1, shuffle=False, collate_fn=collate_skip_none)
    results = {run.name: internal_entropy(model, loader, dev, progress=progress)}
    if compare is not None:
        other = Path(compare)
        model2, cfg2, _ = load_run(other, reopen, dev)
        sd2 = build_splits(cfg2, model2.backbone.crop_size, roles=(split,))[split]
        pos = {s.sample_id: i for i, s in enumerate(sd2.index.samples)}
        missing = [s for s in ids if s not in pos]
        if missing:
            raise ConfigError(f"--compare {other}: its {split} split lacks clip(s) {', '.join(missing[:3])}; both runs "
                              f"must be indexed on the same data")
        loader2 = DataLoader(Subset(sd2.dataset, [pos[s] for s in ids]), batch_size=1, collate_fn=collate_skip_none)
        label = other.name if other.name != run.name else f"{other.name} (compare)"
        results[label] = internal_entropy(model2, loader2, dev, progress=progress)
        del model2
    tables = {k: v["layers_heads"] for k, v in results.items()}
    png = plot_entropy(out / "internal_entropy.png", tables,
                       f"backbone self-attention entropy / log N, mean over query rows and {len(ids)} {split} clips")
    data.setdefault("figures", []).append(png.name)
    data["entropy"] = {"clips": ids, "runs": {k: {"layers_heads": v["layers_heads"].tolist(),
                                                  "mean": float(v["layers_heads"].mean()),
                                                  "per_layer": v["layers_heads"].mean(axis=1).tolist(),
                                                  "pooler_per_head": v["pooler"], "n_tokens": v["n_tokens"]}
                                              for k, v in results.items()}}
    summary = [{"run": k, "mean": float(v["layers_heads"].mean()), "min": float(v["layers_heads"].min()),
                "last_layer": float(v["layers_heads"][-1].mean()), "pooler": v["pooler"], "n_tokens": v["n_tokens"]}
               for k, v in results.items()]
    md = ["## Backbone internal attention entropy\n",
          f"Self-attention of every encoder layer and head (eager attention), on {len(ids)} {split} clips "
          f"({', '.join(ids[:8])}{' ...' if len(ids) > 8 else ''}): the entropy of each query token's attention "
          f"row divided by log N (100% = uniform over the N tokens), averaged over rows and clips. The research "
          f"log measured 98.4% (frozen V-JEPA 2 ViT-L) vs 97.9% (after LoRA). Pooler = the head's cross-attention, "
          f"same measure per head.\n",
          md_table(summary, [("run", "run", "g"), ("mean", "mean (all layers, heads)", "pct2"),
                             ("min", "lowest layer x head", "pct2"), ("last_layer", "last layer", "pct2"),
                             ("pooler", "pooler (head)", "pct2"), ("n_tokens", "N tokens", "g")])]
    for k, v in results.items():
        t = v["layers_heads"]
        rows = [{"layer": f"{layer}", **{f"h{h}": t[li, h] for h in range(t.shape[1])}, "mean": t[li].mean()}
                for li, layer in enumerate(v["layers"])]
        md += [f"\n**{k}**: entropy per layer (rows) and head (columns)\n",
               md_table(rows, [("layer", "layer", "g"), *[(f"h{h}", f"h{h}", "pct2") for h in range(t.shape[1])],
                               ("mean", "mean", "pct2")])]
    md.append(image(png.name, "internal attention entropy"))
    return md


# ------------------------------------------------------------------ training curves
def _curves(curves, out, data) -> list[str]:
    png = plot_training_curves(out / "training_curves.png", curves, "train vs val mAP")
    rows = curve_summary(curves)
    data.setdefault("figures", []).append(png.name)
    data["curves"] = {"runs": rows}
    return ["## Training curves\n",
            "Train (dashed) and val (solid) mAP per epoch from each run's `metrics.csv`, and the gap train - val "
            "(growing = overfitting).\n",
            md_table(rows, [("run", "run", "g"), ("epochs", "epochs", "g"), ("best_epoch", "best epoch", "g"),
                            ("best_val_map", "best val mAP", "pct"), ("train_map_at_best", "train mAP there", "pct"),
                            ("gap_at_best", "gap there", "pct"), ("final_gap", "final gap", "pct")]),
            image(png.name, "training curves")]

