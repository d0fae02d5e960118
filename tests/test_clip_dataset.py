"""Reading frames and the clip Dataset: shapes, targets, the frame cache, corrupt frames."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))

from fixtures_endoscapes import build_dataset, make_placeholder, write_jpeg  # noqa: E402

import cvsjepa.data.dataset as dataset_mod  # noqa: E402
from cvsjepa.data.dataset import ClipDataset, collate_skip_none  # noqa: E402
from cvsjepa.data.endoscapes import load_split  # noqa: E402
from cvsjepa.data.frames import FrameCache, read_frame  # noqa: E402
from cvsjepa.data.transforms import preprocess_frames  # noqa: E402
from cvsjepa.errors import DataError  # noqa: E402

CROP = 16
FRAMES = 4


@pytest.fixture
def root(tmp_path):
    return build_dataset(tmp_path / "endoscapes")


def samples(root, split="train", **kw):
    return load_split(root, split, frames=FRAMES, stride=1, **kw).samples


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ---- read_frame ------------------------------------------------------------------------------

def test_read_frame_gives_uint8_rgb(root):
    x = read_frame(root / "train" / "1_0.jpg")
    assert x.dtype == torch.uint8 and x.shape == (24, 32, 3)


def test_read_frame_converts_grey_to_rgb(tmp_path):
    from PIL import Image
    Image.new("L", (8, 6), 200).save(tmp_path / "g.jpg")
    x = read_frame(tmp_path / "g.jpg")
    assert x.shape == (6, 8, 3) and int(x[0, 0, 0]) == int(x[0, 0, 2])


def test_read_frame_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nope.jpg does not exist"):
        read_frame(tmp_path / "nope.jpg")
    make_placeholder(tmp_path / "link.jpg", "../train/1_0.jpg")
    with pytest.raises(DataError, match=r"link.jpg looks like a symbolic link that arrived as a plain file"):
        read_frame(tmp_path / "link.jpg")
    (tmp_path / "text.jpg").write_text("not a jpeg at all, just some words\n" * 20)
    with pytest.raises(DataError, match=r"text.jpg cannot be decoded"):
        read_frame(tmp_path / "text.jpg")
    write_jpeg(tmp_path / "big.jpg", seed=1, size=(96, 64), noise=True)
    truncate(tmp_path / "big.jpg")
    with pytest.raises(DataError, match=r"big.jpg cannot be decoded.*truncated"):
        read_frame(tmp_path / "big.jpg")


def test_read_frame_follows_real_symlinks(root, tmp_path):
    os.symlink(root / "train" / "1_0.jpg", tmp_path / "linked.jpg")
    assert torch.equal(read_frame(tmp_path / "linked.jpg"), read_frame(root / "train" / "1_0.jpg"))


def test_frame_cache_is_lru():
    loads = []
    cache = FrameCache(2, load=lambda p: loads.append(p.name) or torch.zeros(1))
    for name in ["a", "b", "a", "c", "b", "a"]:
        cache.get(name)
    # a, b loaded; a hit; c evicts b; b evicts a; a reloaded
    assert loads == ["a", "b", "c", "b", "a"] and len(cache) == 2 and cache.hits == 1
    off = FrameCache(0, load=lambda p: loads.append(p.name) or torch.zeros(1))
    off.get("x"), off.get("x")
    assert len(off) == 0 and loads[-2:] == ["x", "x"]


# ---- ClipDataset ---------------------------------------------------------------------------

def test_item_shapes_dtypes_and_targets(root):
    ss = samples(root)
    ds = ClipDataset(ss, crop=CROP)
    item = ds[0]
    assert item["video"].shape == (FRAMES, 3, CROP, CROP) and item["video"].dtype == torch.float32
    for key in ("target", "label", "rater_mean"):
        assert item[key].shape == (3,) and item[key].dtype == torch.float32
    assert item["sample_id"] == "1_50" and item["video_id"] == 1 and item["frame"] == 50
    assert item["target"].tolist() == [1.0, 0.0, 0.0]
    soft = ClipDataset(ss, crop=CROP, target="soft")[0]
    assert torch.allclose(soft["target"], torch.tensor([2 / 3, 1 / 3, 0.0]))
    assert torch.equal(soft["target"], soft["rater_mean"])
    with pytest.raises(ValueError):
        ClipDataset(ss, crop=CROP, target="fuzzy")


def test_video_equals_preprocessing_the_whole_clip(root):
    s = samples(root)[1]
    raw = torch.stack([read_frame(p) for p in s.clip_paths])
    expected = preprocess_frames(raw, CROP)
    assert torch.allclose(ClipDataset([s], crop=CROP)[0]["video"], expected, atol=1e-6)
    # frames differ in colour, so the clip is in order, oldest first
    v = ClipDataset([s], crop=CROP)[0]["video"]
    assert not torch.allclose(v[0], v[-1])


def test_cache_decodes_each_frame_once(root, monkeypatch):
    calls = []
    real = dataset_mod.read_frame
    monkeypatch.setattr(dataset_mod, "read_frame", lambda p: calls.append(Path(p)) or real(p))
    ss = samples(root)
    ds = ClipDataset(ss, crop=CROP, cache_frames=64)
    for _ in range(2):  # two epochs
        for i in range(len(ds)):
            ds[i]
    unique = {p for s in ss for p in s.clip_paths}
    assert len(calls) == len(unique) == len(set(calls))
    # without a cache, overlapping clips decode again (padding repeats still decode once per clip)
    calls.clear()
    nocache = ClipDataset(ss, crop=CROP, cache_frames=0)
    for i in range(len(nocache)):
        nocache[i]
    assert len(calls) == sum(len(set(s.clip_paths)) for s in ss) > len(unique)


def test_corrupt_frame_raises_in_error_mode(root):
    write_jpeg(root / "train" / "1_25.jpg", seed=3, size=(96, 64), noise=True)
    truncate(root / "train" / "1_25.jpg")
    ds = ClipDataset(samples(root), crop=CROP)
    with pytest.raises(DataError, match=r"1_25.jpg cannot be decoded"):
        ds[0]
    assert ds[1]["sample_id"] == "1_175"  # other clips are fine


def test_corrupt_frame_is_dropped_in_skip_mode(root, caplog):
    write_jpeg(root / "train" / "1_25.jpg", seed=3, size=(96, 64), noise=True)
    truncate(root / "train" / "1_25.jpg")
    ss = samples(root, on_bad_sample="skip")
    assert len(ss) == 5  # the index checks existence only; decoding happens here
    ds = ClipDataset(ss, crop=CROP, on_bad_sample="skip")
    with caplog.at_level(logging.INFO, logger="cvsjepa"):
        assert ds[0] is None
        batches = list(DataLoader(ds, batch_size=2, collate_fn=collate_skip_none))
    assert "1_50" in caplog.text and "dropped 1 skipped sample" in caplog.text
    ids = [i for b in batches for i in b["sample_id"]]
    assert ids == ["1_175", "1_275", "2_125", "2_200"]
    assert batches[0]["video"].shape == (1, FRAMES, 3, CROP, CROP)  # the first batch lost its bad clip
    assert collate_skip_none([None, None]) is None
