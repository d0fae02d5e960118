"""`cvsjepa check-data ROOT`: validate a dataset before a long run.

Endoscapes2023: every keyframe's clip frames exist and decode with one size per clip, labels are
valid rater means, split lists name only annotated videos, splits share no video, symlinked folders
are real links, ``seg_label_map.txt`` names known classes, masks have the right size and values,
and, when the root is the full Endoscapes2023, the counts per split match the published ones. A
split without a positive keyframe for a criterion is usable but reported (warnings): that
criterion's AP is undefined there and it leaves the mAP. For the masks it also measures, per class,
the share of its pixels that the configured field of view (``data.view`` at the backbone's crop)
keeps: what a centre crop cuts away is invisible to the model, and to every metric computed on the
cropped masks.
SAGES CVS Challenge 2024: see :mod:`.sages_check` (videos decode, frame counts, CSV columns and
values, no video in two splits). The format is recognised as for training (:mod:`.index`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..criteria import CRITERIA
from ..errors import DataError
from .endoscapes import SplitIndex, label_prevalence, load_split
from .frames import clip_size_problem, frame_size, looks_like_link_placeholder, read_frame
from .index import detect_format
from .sages import FORMAT as SAGES
from .masks import CocoMasks, dataset_label_map, read_semseg
from .transforms import view_coverage

# Endoscapes2023 as published (reference/endoscapes2023.md): videos, 1 fps frames, CVS keyframes.
PUBLISHED = {"train": (120, 36694, 6960), "val": (41, 12372, 2331), "test": (40, 9747, 1799)}
LINK_FOLDERS = ("train_seg", "val_seg", "test_seg", "12_5", "25", "all")


@dataclass
class CheckReport:
    rows: list[dict] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file or item, what is wrong)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (split, what a run will do about it)
    frames_decoded: int = 0
    videos_decoded: int = 0  # SAGES: videos decoded to the end
    masks_checked: int = 0
    coco_masks_checked: int = 0  # frames of *_seg/annotation_coco.json whose instance masks decoded
    view: str = "center"
    crop: int = 256
    # class name -> [pixels the view keeps, pixels in the frames], over every readable mask
    coverage: dict[str, list[int]] = field(default_factory=dict)

    def coverage_rows(self) -> list[dict]:
        """One row per class that has pixels: the share of them the view keeps."""
        return [{"class": name, "mask_pixels": total, f"kept_by_{self.view}": kept / total}
                for name, (kept, total) in self.coverage.items() if total]

    @property
    def usable(self) -> bool:
        return not self.problems


def check_dataset(root: Path, splits=("train", "val", "test"), frames: int = 16, stride: int = 1,
                  decode: bool = True, progress: bool = True, fmt: str = "auto",
                  frame_source: str = "auto", view: str = "center", crop: int = 256) -> CheckReport:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a folder")
    report = CheckReport(view=view, crop=crop)
    if (fmt if fmt != "auto" else detect_format(root)) == SAGES:
        from .sages_check import check_sages

        return check_sages(root, report, frame_source=frame_source, decode=decode, progress=progress)
    indices: dict[str, SplitIndex] = {}
    for split in splits:
        try:
            idx = load_split(root, split, frames=frames, stride=stride, on_bad_sample="skip")
        except DataError as e:
            report.problems.append((f"{root / split}", str(e)))
            continue
        indices[split] = idx
        report.problems += idx.skipped
    _check_video_overlap(indices, report)
    if decode:
        _decode_frames(indices, report, progress)
    _check_links(root, report)
    _check_masks(root, report, progress)
    _check_positives(indices, report)
    for split, idx in indices.items():
        n_frames = sum(len(v) for v in idx.video_frames.values())
        rates = label_prevalence(idx.samples) if idx.samples else [float("nan")] * 3
        report.rows.append({"split": split, "videos": len(idx.video_frames), "frames_1fps": n_frames,
                            "keyframes": len(idx.samples), "pos_C1": rates[0], "pos_C2": rates[1],
                            "pos_C3": rates[2], "skipped": len(idx.skipped)})
    _check_published_counts(report)
    return report


def _check_video_overlap(indices: dict[str, SplitIndex], report: CheckReport) -> None:
    names = list(indices)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(set(indices[a].video_frames) & set(indices[b].video_frames))
            if shared:
                report.problems.append((f"splits {a} and {b}", f"share video(s) {shared[:10]}: splits must be by video"))


def _check_positives(indices: dict[str, SplitIndex], report: CheckReport) -> None:
    for split, idx in indices.items():
        if not idx.samples:
            continue
        for c, name in enumerate(CRITERIA):
            if not any(s.label[c] for s in idx.samples):
                report.warnings.append((split, f"criterion {name} has no positive keyframe: its AP is undefined, "
                                               f"and {name} is left out of the {split} mAP"))


def _decode_frames(indices: dict[str, SplitIndex], report: CheckReport, progress: bool) -> None:
    paths = sorted({p for idx in indices.values() for s in idx.samples for p in s.clip_paths})
    sizes: dict = {}
    for path in tqdm(paths, desc="decoding clip frames", unit="frame", disable=not progress):
        try:
            frame = read_frame(path)
            sizes[path] = (int(frame.shape[0]), int(frame.shape[1]))
        except DataError as e:
            report.problems.append((str(path), str(e)))
    report.frames_decoded = len(paths)
    reported = set()
    for idx in indices.values():
        for s in idx.samples:
            clip = {p: sizes[p] for p in dict.fromkeys(s.clip_paths) if p in sizes}
            problem = clip_size_problem(clip, f"the clip of keyframe {s.sample_id}", s.clip_paths[-1])
            if problem is not None and problem[0] not in reported:  # a frame in several clips is reported once
                reported.add(problem[0])
                report.problems.append((str(problem[0]), str(problem[1])))


def _check_links(root: Path, report: CheckReport) -> None:
    for name in LINK_FOLDERS:
        folder = root / name
        if not folder.exists() and not folder.is_symlink():
            continue
        if folder.is_file():
            why = ("is a symbolic link that arrived as a plain file" if looks_like_link_placeholder(folder)
                   else "should be a folder")
            report.problems.append((str(folder), f"{why}; re-extract the archive on a file system that keeps links"))
            continue
        for entry in sorted(folder.rglob("*.jpg")):
            if entry.is_symlink() and not entry.exists():
                report.problems.append((str(entry), f"broken symbolic link (points to {entry.readlink()})"))
            elif not entry.is_symlink() and looks_like_link_placeholder(entry):
                report.problems.append((str(entry), "a symbolic link that arrived as a plain file; re-extract "
                                                    "the archive on a file system that keeps links"))


def _check_masks(root: Path, report: CheckReport, progress: bool) -> None:
    try:
        label_map = dataset_label_map(root)
    except DataError as e:
        report.problems.append((str(root), str(e)))
        return
    masks = sorted((root / "semseg").glob("*.png")) if (root / "semseg").is_dir() else []
    for path in tqdm(masks, desc="checking masks", unit="mask", disable=not progress):
        try:
            _count_coverage(report, read_semseg(path, values=list(label_map.values())), label_map)
        except DataError as e:
            report.problems.append((str(path), str(e)))
    report.masks_checked = len(masks)
    try:
        coco = CocoMasks.find(root, label_map)
    except DataError as e:
        report.problems.append(("*_seg/annotation_coco.json", str(e)))
        return
    for (vid, frame), (path, img, _) in tqdm(sorted(coco.frames.items()), desc="checking COCO masks",
                                             unit="mask", disable=not progress or not len(coco)):
        try:  # an unreadable frame is the frame check's to report; its mask is then checked without a size
            hw = frame_size(path.parent / Path(str(img.get("file_name", ""))).name)
        except DataError:
            hw = None
        try:
            mask = coco.semantic(vid, frame, expected_hw=hw)
        except DataError as e:
            report.problems.append((str(path), str(e)))
            continue
        if not masks:  # the PNGs, when present, already counted these frames
            _count_coverage(report, mask, label_map)
    report.coco_masks_checked = len(coco)


def _count_coverage(report: CheckReport, mask, label_map: dict[str, int]) -> None:
    kept = view_coverage(mask, report.crop, report.view, list(label_map.values()))
    for name, value in label_map.items():
        acc = report.coverage.setdefault(name, [0, 0])
        acc[0] += kept[value][0]
        acc[1] += kept[value][1]


def _check_published_counts(report: CheckReport) -> None:
    """Only for the full release (201 videos); subsets and synthetic data are not compared."""
    rows = {r["split"]: r for r in report.rows}
    if sum(r["videos"] for r in rows.values()) != 201:
        return
    for split, (videos, frames, keyframes) in PUBLISHED.items():
        r = rows.get(split)
        if r and (r["videos"], r["frames_1fps"], r["keyframes"]) != (videos, frames, keyframes):
            report.problems.append((split, f"has {r['videos']} videos / {r['frames_1fps']} frames / {r['keyframes']} "
                                           f"keyframes; the published Endoscapes2023 has {videos} / {frames} / "
                                           f"{keyframes}"))
