"""`cvsjepa diagnose RUN seg`: frames with ground-truth and predicted masks side by side, and the CVS
predictions next to the labels (the log's "exp8_segmentation_check.png")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.transforms import denormalise
from ..errors import ConfigError

# one colour per class index (background transparent-ish grey), up to 7 classes
PALETTE = np.array([[40, 40, 40], [255, 220, 80], [80, 200, 255], [255, 60, 60], [80, 255, 120],
                    [200, 120, 255], [180, 180, 180]], dtype=np.uint8)


def colour(mask: np.ndarray) -> np.ndarray:
    out = PALETTE[np.clip(mask, 0, len(PALETTE) - 1)]
    out[mask == 255] = (0, 0, 0)
    return out


@torch.no_grad()
def seg_check(model, cfg, sd, class_names: list[str], samples: int, seed: int, out: Path) -> tuple[Path, list[dict]]:
    """A PNG grid of ``samples`` masked clips of the split: frame | ground truth | prediction, and
    returns one row per sample (id, labels, probabilities, pixel accuracy)."""
    from ..plots import pyplot, save_figure

    plt = pyplot()
    if model.seg_head is None:
        raise ConfigError("this run has no segmentation decoder (seg.enabled was false); 'seg' needs a "
                          "multi-task run such as configs/exp8_multitask.yaml")
    ds = sd.dataset
    masked = [i for i, s in enumerate(sd.index.samples) if ds.mask_source(s) is not None]
    if not masked:
        raise ConfigError(f"no keyframe of split {sd.index.split} has a mask in {ds.mask_dir} "
                          f"(seg.masks={ds.masks}) or in the *_seg/annotation_coco.json files")
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(masked, size=min(samples, len(masked)), replace=False).tolist())
    model.eval()
    fig, axes = plt.subplots(len(pick), 3, figsize=(9, 3 * len(pick)), squeeze=False)
    rows = []
    for r, i in enumerate(pick):
        item = ds[i]
        batch = {k: (v[None] if isinstance(v, torch.Tensor) else [v]) for k, v in item.items()}
        logits, seg = model.forward_multitask(batch)
        prob = torch.sigmoid(logits[0]).tolist()
        pred = seg[0].argmax(0).numpy()
        gt = item["mask"].numpy()
        frame = denormalise(item["video"][-1]).permute(1, 2, 0).numpy()
        labelled = gt != 255
        acc = float((pred[labelled] == gt[labelled]).mean()) if labelled.any() else float("nan")
        rows.append({"sample_id": item["sample_id"], "label": [int(x) for x in item["label"]],
                     "prob": [round(p, 3) for p in prob], "pixel_accuracy": acc})
        axes[r, 0].imshow(frame)
        axes[r, 0].set_title(f"{item['sample_id']}  label {rows[-1]['label']}", fontsize=8)
        axes[r, 1].imshow(frame)
        axes[r, 1].imshow(colour(gt), alpha=0.55)
        axes[r, 1].set_title("ground truth", fontsize=8)
        axes[r, 2].imshow(frame)
        axes[r, 2].imshow(colour(pred), alpha=0.55)
        axes[r, 2].set_title(f"prediction (pixel acc {acc:.2f})\nP(C1,C2,C3) = "
                             + ", ".join(f"{p:.2f}" for p in prob), fontsize=8)
        for ax in axes[r]:
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=PALETTE[k] / 255) for k in range(len(class_names))]
    fig.legend(handles, class_names, loc="lower center", ncol=min(7, len(class_names)), fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path = out / f"segmentation_check_{sd.index.split}.png"
    return save_figure(fig, path, dpi=100), rows
