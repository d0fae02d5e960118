"""One entry point from a config to split indices, whatever the dataset's format.

``data.format`` picks the reader: ``endoscapes`` (:mod:`.endoscapes`), ``sages2024`` (:mod:`.sages`),
or ``auto``, which recognises the layout from its files:

* Endoscapes2023: ``all_metadata.csv``, or a ``{split}/annotation_ds_coco.json`` /
  ``annotation_coco_vid.json``;
* SAGES CVS Challenge 2024: a ``labels/`` folder, at the root or in a split folder.

Both, or neither, is a :class:`DataError` naming the files found. Everything downstream
(``build_splits``, the feature store, ``train``, ``sweep``, ``evaluate``, ``diagnose``) gets the
same :class:`~cvsjepa.data.endoscapes.SplitIndex` of ``Sample`` s either way.
"""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..errors import DataError
from .endoscapes import LAYOUT, SplitIndex, load_splits
from .sages import FORMAT as SAGES
from .sages_layout import LAYOUT_HINT, is_sages_root

ENDOSCAPES = "endoscapes"
_ENDOSCAPES_FILES = ("annotation_ds_coco.json", "annotation_coco_vid.json")


def endoscapes_marks(root: Path) -> list[Path]:
    """The files that mark ``root`` as an Endoscapes2023 copy."""
    found = [root / "all_metadata.csv"] if (root / "all_metadata.csv").is_file() else []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        found += [d / f for f in _ENDOSCAPES_FILES if (d / f).is_file()]
    return found


def detect_format(root: str | Path) -> str:
    """``"endoscapes"`` or ``"sages2024"`` from the files under ``root``; DataError when it cannot tell."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a folder (data.root)")
    endo, sages = endoscapes_marks(root), is_sages_root(root)
    if endo and sages:
        raise DataError(f"{root} is ambiguous: {endo[0]} marks an Endoscapes2023 copy and {sages[0]} a SAGES one; "
                        f"set data.format=endoscapes or data.format=sages2024 (or separate the two datasets)")
    if endo:
        return ENDOSCAPES
    if sages:
        return SAGES
    raise DataError(f"{root} is neither dataset layout: {LAYOUT}; or {LAYOUT_HINT}. Set data.format if the "
                    f"layout is right but not recognised")


def resolve_format(cfg: RunConfig) -> str:
    """The config's ``data.format``, with ``auto`` resolved from ``data.root``."""
    if cfg.data.format != "auto":
        return cfg.data.format
    if not cfg.data.root:
        raise DataError("data.root is not set: pass data.root=/path/to/dataset (or a `cvsjepa synth` folder)")
    return detect_format(cfg.data.root)


def split_names(cfg: RunConfig) -> dict[str, str]:
    """role (train/val/test) -> split name; an empty name means the role is absent."""
    roles = {"train": cfg.data.train_split, "val": cfg.data.val_split, "test": cfg.data.test_split}
    return {role: name for role, name in roles.items() if name}


def load_indices(cfg: RunConfig, names: list[str], check_frames: bool = True) -> dict[str, SplitIndex]:
    """``{split name: SplitIndex}`` for ``names`` from ``cfg.data`` (format, root, clip shape, limits).

    SAGES splits come from ``data.splits_file`` when set, else the official splits plus the val
    (and, without one, test) videos drawn with ``data.val_fraction`` and the run's ``seed``.
    """
    d = cfg.data
    fmt = resolve_format(cfg)
    if fmt == SAGES:
        if d.source != "auto":
            raise DataError(f"data.source={d.source} chooses Endoscapes label files; a SAGES copy has one kind "
                            f"(labels/<video>/frame.csv): leave data.source=auto")
        from .sages import load_sages_splits

        return load_sages_splits(d.root, names, split_names(cfg), frames=d.frames, stride=d.stride,
                                 val_fraction=d.val_fraction, seed=cfg.seed, splits_file=d.splits_file,
                                 frame_source=d.frame_source, on_bad_sample=d.on_bad_sample,
                                 check_frames=check_frames, limit=d.limit_per_split)
    if d.splits_file:
        raise DataError(f"data.splits_file={d.splits_file} is for SAGES copies; Endoscapes splits are its folders "
                        f"({d.root}/train, val, test)")
    return load_splits(d.root, names, frames=d.frames, stride=d.stride, source=d.source,
                       on_bad_sample=d.on_bad_sample, check_frames=check_frames, limit=d.limit_per_split)
