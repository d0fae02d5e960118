"""The synthetic Endoscapes2023-layout generator: layout, labels, masks, determinism, safety."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvsjepa.data import synth as S
from cvsjepa.data.transforms import crop_box
from cvsjepa.errors import DataError

PARAMS = dict(seed=0, videos=(3, 2, 2), min_seconds=25, max_seconds=35, seg_fraction=0.5, progress=False)
IMAGE_KEYS = {"file_name", "height", "width", "id", "video_id", "is_det_keyframe", "is_ds_keyframe", "ds"}
THIRDS = (0.0, 1 / 3, 2 / 3, 1.0)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = S.write_synthetic_dataset(out, workers=2, **PARAMS)
    return out, summary


def _coco(root: Path, split: str, name: str) -> dict:
    return json.loads((root / split / name).read_text())


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _text_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.suffix in (".json", ".csv", ".txt") and not p.is_symlink()}


def test_layout(ds):
    root, summary = ds
    for name in ("train", "val", "test", "train_seg", "val_seg", "test_seg", "semseg"):
        assert (root / name).is_dir(), name
    for split in S.SPLITS:
        for js in ("annotation_ds_coco.json", "annotation_coco_vid.json", "annotation_coco.json"):
            assert (root / split / js).is_file()
        assert (root / f"{split}_seg" / "annotation_coco.json").is_file()
        for suffix in ("_vids.txt", "_seg_vids.txt"):
            assert (root / f"{split}{suffix}").is_file()
    for name in ("all_metadata.csv", "seg_label_map.txt", "oracle.json", "synth.json", "README.txt"):
        assert (root / name).is_file(), name
    assert "SYNTHETIC" in (root / "README.txt").read_text()
    meta = json.loads((root / "synth.json").read_text())
    assert meta["synthetic"] is True and meta["seed"] == 0 and meta["videos"] == [3, 2, 2]
    assert (root / "seg_label_map.txt").read_text().splitlines() == [
        "background: 0", "cystic_plate: 1", "calot_triangle: 2", "cystic_artery: 3", "cystic_duct: 4",
        "gallbladder: 5", "tool: 6"]
    assert not [p for p in root.parent.iterdir() if "synth-tmp" in p.name]  # temp folder renamed away
    assert summary["splits"]["train"]["videos"] == 3 and summary["splits"]["test"]["videos"] == 2
    n_jpg = sum(len(list((root / s).glob("*.jpg"))) for s in S.SPLITS)
    assert n_jpg == sum(summary["splits"][s]["frames"] for s in S.SPLITS)
    with Image.open(next((root / "val").glob("*.jpg"))) as im:
        assert im.format == "JPEG" and im.size == (854, 480) and im.mode == "RGB"


def test_vid_files_are_floats_and_contiguous(ds):
    root, _ = ds
    ids = []
    for split, n in zip(S.SPLITS, PARAMS["videos"]):
        lines = (root / f"{split}_vids.txt").read_text().splitlines()
        assert len(lines) == n and all(line.endswith(".0") for line in lines)
        ids += [int(float(x)) for x in lines]
        seg = [int(float(x)) for x in (root / f"{split}_seg_vids.txt").read_text().splitlines()]
        assert seg and set(seg) <= {int(float(x)) for x in lines}
        assert all(x.endswith(".0") for x in (root / f"{split}_seg_vids.txt").read_text().splitlines())
    assert ids == list(range(1, sum(PARAMS["videos"]) + 1))


def test_coco_images(ds):
    root, _ = ds
    cats = [(c["id"], c["name"]) for c in _coco(root, "train", "annotation_coco.json")["categories"]]
    assert cats == list(enumerate(S.SEG_CLASSES))[1:]
    for split in S.SPLITS:
        vids = {int(float(x)) for x in (root / f"{split}_vids.txt").read_text().split()}
        full = _coco(root, split, "annotation_coco_vid.json")
        assert set(full) == {"images", "annotations", "categories"}
        frames_by_vid: dict[int, list[int]] = {}
        for im in full["images"]:
            assert set(im) == IMAGE_KEYS
            vid, frame = im["video_id"], int(im["file_name"][:-4].split("_")[1])
            assert im["file_name"] == f"{vid}_{frame}.jpg" and (root / split / im["file_name"]).is_file()
            assert im["id"] == vid * 1_000_000 + frame and (im["height"], im["width"]) == (480, 854)
            assert im["is_ds_keyframe"] == (frame % 125 == 0) and im["is_det_keyframe"] == (frame % 750 == 0)
            assert len(im["ds"]) == 3 and all(min(abs(x - t) for t in THIRDS) < 1e-9 for x in im["ds"])
            frames_by_vid.setdefault(vid, []).append(frame)
        assert set(frames_by_vid) == vids
        for frames in frames_by_vid.values():  # one frame per second, no gap
            assert frames == list(range(0, 25 * len(frames), 25))
        assert sorted(p.name for p in (root / split).glob("*.jpg")) == sorted(i["file_name"] for i in full["images"])
        key = _coco(root, split, "annotation_ds_coco.json")["images"]
        assert key == [i for i in full["images"] if i["is_ds_keyframe"]]
        det = _coco(root, split, "annotation_coco.json")
        assert det["images"] == [i for i in full["images"] if i["is_det_keyframe"]]
        det_ids = {i["id"] for i in det["images"]}
        for a in det["annotations"]:
            x, y, w, h = a["bbox"]
            assert a["image_id"] in det_ids and 1 <= a["category_id"] <= 6 and a["iscrowd"] == 0
            assert 0 <= x and 0 <= y and x + w <= 854 and y + h <= 480 and w > 0 and h > 0
        assert {a["category_id"] for a in det["annotations"]} >= {5, 6}  # gallbladder and tool always drawn


def test_forward_fill_and_labels(ds):
    root, _ = ds
    for split in S.SPLITS:
        last: dict[int, list] = {}
        for im in _coco(root, split, "annotation_coco_vid.json")["images"]:
            if im["is_ds_keyframe"]:
                last[im["video_id"]] = im["ds"]
            else:
                assert im["ds"] == last[im["video_id"]]  # causal forward fill; frame 0 is a keyframe


def test_csv_agrees_with_json(ds):
    root, _ = ds
    rows = _csv(root / "all_metadata.csv")
    assert list(rows[0]) == ["vid", "frame", "avg_cvs", "C1", "C2", "C3", "is_ds_keyframe", "cvs_annotator_1",
                             "cvs_annotator_2", "cvs_annotator_3", "mask_path", "label_path"]
    by_key = {(int(r["vid"]), int(r["frame"])): r for r in rows}
    assert len(by_key) == len(rows)
    n = 0
    for split in S.SPLITS:
        for im in _coco(root, split, "annotation_coco_vid.json")["images"]:
            r = by_key[(im["video_id"], im["id"] % 1_000_000)]
            n += 1
            c = [float(r[k]) for k in ("C1", "C2", "C3")]
            assert c == im["ds"] and float(r["avg_cvs"]) == pytest.approx(sum(c) / 3)
            assert r["is_ds_keyframe"] == str(im["is_ds_keyframe"])
            ann = [r[f"cvs_annotator_{k}"] for k in (1, 2, 3)]
            if im["is_ds_keyframe"]:
                votes = np.array([json.loads(a) for a in ann])  # "[0, 1, 0]" per rater
                assert votes.shape == (3, 3) and set(votes.ravel()) <= {0, 1}
                assert np.allclose(votes.mean(0), im["ds"])
            else:
                assert ann == ["", "", ""]
            if r["mask_path"]:
                assert (root / r["mask_path"]).is_file() and im["is_det_keyframe"]
            assert r["label_path"] == ""
    assert n == len(rows)
    masks = {f"semseg/{p.name}" for p in (root / "semseg").glob("*.png")}
    assert masks == {r["mask_path"] for r in rows if r["mask_path"]}


def test_seg_links_and_masks(ds):
    root, summary = ds
    for split in S.SPLITS:
        seg_vids = {int(float(x)) for x in (root / f"{split}_seg_vids.txt").read_text().split()}
        links = sorted(p for p in (root / f"{split}_seg").iterdir() if p.suffix == ".jpg")
        assert len(links) == summary["splits"][split]["seg_frames"] > 0
        seg_json = _coco(root, f"{split}_seg", "annotation_coco.json")
        assert sorted(i["file_name"] for i in seg_json["images"]) == [p.name for p in links]
        for p in links:
            assert p.is_symlink() and not os.path.isabs(os.readlink(p))
            assert p.resolve() == (root / split / p.name).resolve() and p.resolve().is_file()
            assert int(p.name.split("_")[0]) in seg_vids
            m = np.asarray(Image.open(root / "semseg" / (p.stem + ".png")))
            assert m.shape == (480, 854, 3) and m.dtype == np.uint8
            assert (m[..., 0] == m[..., 1]).all() and (m[..., 0] == m[..., 2]).all()
            assert set(np.unique(m)) <= {0, 1, 2, 3, 4, 5, 6, 255}
            assert 0 < (m[..., 0] == 255).mean() < 0.1  # a thin ignore band on class borders


def test_masks_match_images(ds):
    """Classify every labelled pixel by the nearest class-mean colour of its own frame: the mask and the
    JPEG come from one geometry, so this must mostly agree; and each structure contrasts with tissue."""
    root, _ = ds
    accs, seen = [], set()
    for png in sorted((root / "semseg").glob("*.png")):
        vid = int(png.stem.split("_")[0])
        split = next(s for s in S.SPLITS if (root / s / f"{png.stem}.jpg").exists())
        img = np.asarray(Image.open(root / split / f"{png.stem}.jpg"), dtype=np.float32)
        m = np.asarray(Image.open(png))[..., 0]
        # the central (model-visible) region, where the vignette is mild
        img, m = img[40:440, 220:634], m[40:440, 220:634]
        classes = [c for c in range(7) if (m == c).sum() >= 150]
        means = np.stack([img[m == c].mean(0) for c in classes])
        bg = means[classes.index(0)]
        for c, mu in zip(classes, means):
            if c:
                assert np.abs(mu - bg).sum() > 60, (png.name, S.SEG_CLASSES[c], mu, bg)
                seen.add(c)
        valid = m != 255
        pix = img[valid]
        pred = np.array(classes)[np.argmin(((pix[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
        accs.append((pred == m[valid]).mean())
        assert vid
    assert {5, 6} <= seen and len(seen) >= 4
    assert np.mean(accs) > 0.8, accs


def _centre_box(crop: int) -> tuple[float, float, float, float]:
    """The ``center`` view's window in frame pixels: (x0, x1, y0, y1)."""
    new_h, new_w, top, left, _, _ = crop_box(480, 854, crop)
    return left * 854 / new_w, (left + crop) * 854 / new_w, top * 480 / new_h, (top + crop) * 480 / new_h


def test_centred_framing_keeps_the_criteria_inside_the_centre_crop(tmp_path):
    root = tmp_path / "centred"
    S.write_synthetic_dataset(root, seed=3, videos=(2, 1, 1), min_seconds=25, max_seconds=30, seg_fraction=1.0,
                              progress=False, outside_crop=False)
    assert json.loads((root / "synth.json").read_text())["outside_crop"] is False
    for crop in (64, 256, 384):
        x0, x1, y0, y1 = _centre_box(crop)
        for png in (root / "semseg").glob("*.png"):
            m = np.asarray(Image.open(png))[..., 0]
            ys, xs = np.nonzero((m >= 1) & (m <= 4))
            if len(xs):
                assert xs.min() >= x0 - 1 and xs.max() <= x1 + 1 and ys.min() >= y0 - 1 and ys.max() <= y1 + 1


def test_framing_puts_anatomy_outside_the_centre_crop_but_inside_the_frame(ds):
    """The default framing: the centre crop misses part of the criteria's pixels (check-data measures
    it per class), letterbox keeps all; no criterion structure is cut by the frame's own edge, so the
    oracle (computed from what is drawn) stays the best a whole-frame model can do."""
    from cvsjepa.data.check import check_dataset

    root, _ = ds
    x0, x1, _, _ = _centre_box(256)
    outside = []
    for png in (root / "semseg").glob("*.png"):
        m = np.asarray(Image.open(png))[..., 0]
        crit = (m >= 1) & (m <= 4)
        assert not crit[:, :3].any() and not crit[:, -3:].any(), png.name  # whole inside the frame
        xs = np.nonzero(crit)[1]
        outside.append(((xs < x0) | (xs > x1)).mean() if len(xs) else 0.0)
    assert max(outside) > 0.3, outside  # some frames show most of a structure outside the crop
    centre = {r["class"]: r["kept_by_center"] for r in
              check_dataset(root, decode=False, progress=False, view="center", crop=256).coverage_rows()}
    whole = {r["class"]: r["kept_by_letterbox"] for r in
             check_dataset(root, decode=False, progress=False, view="letterbox", crop=256).coverage_rows()}
    assert min(centre[c] for c in ("cystic_plate", "calot_triangle", "cystic_artery", "cystic_duct")) < 0.9, centre
    assert all(v == 1.0 for v in whole.values()) and set(whole) == set(centre)


def test_labels_follow_drawn_visibility(ds):
    root, _ = ds
    truth = {(int(r["vid"]), int(r["frame"])): r for r in _csv(root / "synth_truth.csv")}
    v, y, q = [], [], []
    for split in S.SPLITS:
        for im in _coco(root, split, "annotation_ds_coco.json")["images"]:
            r = truth[(im["video_id"], im["id"] % 1_000_000)]
            v.append([float(r[f"v_C{c}"]) for c in (1, 2, 3)])
            q.append([float(r[f"q_C{c}"]) for c in (1, 2, 3)])
            y.append([round(x) for x in im["ds"]])
            assert float(r["v_C3"]) == pytest.approx(min(float(r["v_artery"]), float(r["v_duct"])), abs=1e-6)
    v, y, q = np.array(v), np.array(y), np.array(q)
    assert np.allclose(q, S.majority_posterior(S.rater_probability(v)), atol=1e-5)
    for c in range(3):
        assert 0 < y[:, c].sum() < len(y), "need both classes"
        assert v[y[:, c] == 1, c].mean() > v[y[:, c] == 0, c].mean() + 0.2


def _colour_histograms(root: Path, rows: list[dict]) -> np.ndarray:
    feats = []
    for r in rows:
        with Image.open(root / r["split"] / f'{r["vid"]}_{r["frame"]}.jpg') as im:
            a = np.asarray(im.reduce(4))  # the whole frame: the framing moves the anatomy around it
        parts = []
        for third in np.array_split(a, 3, axis=1):  # left, centre, right: where the anatomy was framed
            q = (third // 64).reshape(-1, 3).astype(np.int64)
            parts.append(np.sqrt(np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64) / len(q)))
        feats.append(np.concatenate(parts))
    return np.array(feats)


def test_labels_depend_on_pixels(ds):
    """Held-out videos: a ridge regression on colour histograms of the frame predicts the drawn
    visibility, and its scores rank the keyframes' majority labels far better than prevalence
    (on the frames where no occlusion hides the anatomy)."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import average_precision_score

    root, _ = ds
    rows = [r for r in _csv(root / "synth_truth.csv") if not r["occlusion"]]
    x = _colour_histograms(root, rows)
    v = np.array([[float(r[f"v_C{c}"]) for c in (1, 2, 3)] for r in rows])
    groups = np.array([int(r["vid"]) for r in rows])
    pred = np.zeros_like(v)
    for g in np.unique(groups):
        held = groups == g
        pred[held] = Ridge(alpha=0.1).fit(x[~held], v[~held]).predict(x[held])
    for c in range(3):
        assert np.corrcoef(pred[:, c], v[:, c])[0, 1] > 0.5
    labels = {}
    for split in S.SPLITS:
        for im in _coco(root, split, "annotation_ds_coco.json")["images"]:
            labels[(im["video_id"], im["id"] % 1_000_000)] = [round(d) for d in im["ds"]]
    keep = [i for i, r in enumerate(rows) if (int(r["vid"]), int(r["frame"])) in labels]
    y = np.array([labels[(int(rows[i]["vid"]), int(rows[i]["frame"]))] for i in keep])
    ap = [average_precision_score(y[:, c], pred[keep, c]) for c in range(3)]
    assert np.mean(ap) > y.mean() + 0.25, (ap, y.mean(0))


def test_oracle(ds):
    from sklearn.metrics import average_precision_score

    root, summary = ds
    oracle = json.loads((root / "oracle.json").read_text())
    truth = {(int(r["vid"]), int(r["frame"])): r for r in _csv(root / "synth_truth.csv")}
    for split in S.SPLITS:
        o = oracle[split]
        assert len(o["ap"]) == 3 and isinstance(o["note"], str)
        key = _coco(root, split, "annotation_ds_coco.json")["images"]
        y = np.array([[round(d) for d in im["ds"]] for im in key])
        q = np.array([[float(truth[(im["video_id"], im["id"] % 1_000_000)][f"q_C{c}"]) for c in (1, 2, 3)]
                      for im in key])
        for c in range(3):
            if y[:, c].any():
                assert o["ap"][c] == pytest.approx(average_precision_score(y[:, c], q[:, c]), abs=1e-4)
                assert 0 < o["ap"][c] <= 1 and o["ap"][c] > y[:, c].mean()
            else:
                assert o["ap"][c] is None
        valid = [a for a in o["ap"] if a is not None]
        assert o["map"] == pytest.approx(np.mean(valid), abs=1e-5)
        assert summary["splits"][split]["oracle_map"] == o["map"]
        assert o["prevalence"] == pytest.approx(list(y.mean(0)), abs=1e-5)


def test_average_precision_matches_sklearn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(1)
    for _ in range(20):
        y = rng.random(60) < 0.3
        s = np.round(rng.random(60), 1)  # ties
        if y.any():
            assert S.average_precision(s, y) == pytest.approx(average_precision_score(y, s))
    assert np.isnan(S.average_precision([0.1, 0.2], [0, 0]))


@pytest.mark.slow  # ~55 s: two more datasets of PARAMS' size; test_small_datasets_... runs by default
def test_deterministic_and_seed_dependent(ds, tmp_path):
    root, _ = ds
    again = tmp_path / "again"
    S.write_synthetic_dataset(again, workers=1, **PARAMS)  # another worker count, same bytes
    assert _text_files(again) == _text_files(root)
    for name in ("train/1_250.jpg", "test/7_500.jpg"):
        assert (again / name).read_bytes() == (root / name).read_bytes()
    for png in (root / "semseg").glob("*.png"):
        assert (again / "semseg" / png.name).read_bytes() == png.read_bytes()
    other = tmp_path / "other"
    S.write_synthetic_dataset(other, workers=1, **{**PARAMS, "seed": 1})
    assert (other / "all_metadata.csv").read_bytes() != (root / "all_metadata.csv").read_bytes()
    assert (other / "synth_truth.csv").read_bytes() != (root / "synth_truth.csv").read_bytes()
    assert (other / "train/1_0.jpg").read_bytes() != (root / "train/1_0.jpg").read_bytes()


TINY = dict(videos=(1, 1, 1), min_seconds=6, max_seconds=8, progress=False, workers=1)


def test_small_datasets_are_deterministic_across_workers_and_seed_dependent(tmp_path):
    one = S.write_synthetic_dataset(tmp_path / "one", seed=3, **TINY)
    two = S.write_synthetic_dataset(tmp_path / "two", seed=3, **{**TINY, "workers": 2})  # another worker count
    assert one["splits"] == two["splits"]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files and all((tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes() for f in files)
    other = tmp_path / "other"
    S.write_synthetic_dataset(other, seed=4, **TINY)
    for name in ("all_metadata.csv", "synth_truth.csv", "train/1_0.jpg"):
        assert (other / name).read_bytes() != (tmp_path / "one" / name).read_bytes(), name


def test_refuses_non_empty_folder(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="busy"):
        S.write_synthetic_dataset(out, **TINY)
    with pytest.raises(DataError, match="synth.json"):  # overwrite only replaces a synth dataset
        S.write_synthetic_dataset(out, overwrite=True, **TINY)
    assert (out / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    S.write_synthetic_dataset(empty, **TINY)  # an empty folder is fine
    with pytest.raises(DataError, match="not empty"):
        S.write_synthetic_dataset(empty, **TINY)
    S.write_synthetic_dataset(empty, overwrite=True, **{**TINY, "seed": 3})
    assert json.loads((empty / "synth.json").read_text())["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "empty"]  # no temp folder left


def test_crash_leaves_no_dataset(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(S, "_write_annotations", boom)
    with pytest.raises(RuntimeError):
        S.write_synthetic_dataset(tmp_path / "data", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_write_video_mp4(tmp_path):
    import av

    frames = [np.full((48, 64, 3), 40 * i, dtype=np.uint8) for i in range(4)]
    path = S.write_video_mp4(frames, tmp_path / "v.mp4", fps=1)
    with av.open(str(path)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 4 and decoded[0].shape == (48, 64, 3)
    assert abs(float(decoded[3].mean()) - 120) < 8
