"""Feature store: views, pooling, stored tokens == in-loop tokens, resume after a kill, key
refusals, truncated / corrupted shards, and training from the store end to end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cvsjepa.backbones import build_backbone
from cvsjepa.cli import main
from cvsjepa.config import load_config
from cvsjepa.data.loaders import build_splits
from cvsjepa.data.transforms import preprocess_frames
from cvsjepa.features import (FeatureStore, FeatureStoreError, ShardCorruptError, StoreKeyError, StoreWriter,
                              open_store_splits)
from cvsjepa.features.extract import extract, pool_tokens
from cvsjepa.features.views import preprocess_views, view_box
from cvsjepa.heads import build_head
from cvsjepa.model import CVSClassifier

REPO = Path(__file__).resolve().parent.parent
LIMIT = 16  # keyframes per split (the synthetic val split has 17): 3 splits x 2 shards of 8 clips


def store_args(root, store, *extra) -> list[str]:
    return ["backbone=tiny", f"data.root={root}", "data.frames=8", f"data.limit_per_split={LIMIT}",
            "features.shard_clips=8", "features.batch_size=4", "head.num_heads=4", "head.mlp_hidden=32",
            f"features.store={store}", *extra]


def make_store(root, store, *extra):
    return extract(load_config(None, store_args(root, store, *extra)), progress=False)


@pytest.fixture(scope="module")
def stores(synth_root, tmp_path_factory):
    """fp16 (default) and fp32 stores of the same clips."""
    base = tmp_path_factory.mktemp("stores")
    r16 = make_store(synth_root, base / "fp16")
    make_store(synth_root, base / "fp32", "features.dtype=float32")
    return {"fp16": base / "fp16", "fp32": base / "fp32", "result16": r16}


def shard_bytes(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted((store / "shards").rglob("*.npy"))}


def manifest_splits(store: Path) -> dict:
    return json.loads((store / "manifest.json").read_text())["splits"]


# ---- views and pooling ----------------------------------------------------------------------------

def test_view0_is_the_standard_preprocessing_and_views_differ():
    frames = torch.randint(0, 256, (2, 48, 85, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = preprocess_views(frames, 32, 5)
    assert views.shape == (5, 2, 3, 32, 32)
    assert torch.equal(views[0], preprocess_frames(frames, 32))  # bit for bit
    assert not torch.equal(views[1], views[2])  # left and right crops
    new_h, new_w, top, left, _, _ = view_box(48, 85, 32, 2)  # right: the window touches the right edge
    assert left + 32 == new_w and top == (new_h - 32) // 2


def test_avg2x2_pools_each_frame_and_level():
    grid = (2, 4, 4)
    x = torch.randn(3, 2 * 32, 8)  # 2 levels concatenated along tokens
    y, g, levels = pool_tokens(x, grid, "avg2x2")
    assert y.shape == (3, 2 * 8, 8) and g == (2, 2, 2) and levels == 2
    ref = x.view(3, 2, 2, 4, 4, 8)[:, 1, 0, 2:4, 0:2].mean(dim=(1, 2))  # level 1, frame 0, token (1, 0)
    torch.testing.assert_close(y.view(3, 2, 2, 2, 2, 8)[:, 1, 0, 1, 0], ref)


# ---- stored tokens == in-loop tokens ----------------------------------------------------------------

def test_stored_tokens_give_the_in_loop_logits(stores, synth_root, tmp_path):
    cfg = load_config(None, store_args(synth_root, stores["fp32"]))
    backbone = build_backbone(cfg.backbone).freeze()
    torch.manual_seed(0)
    head = build_head(cfg.head, backbone.embed_dim).eval()
    live = build_splits(cfg, backbone.crop_size, roles=("val",))["val"]
    live_batches = list(live.loader(8, False, 0))
    with torch.no_grad():
        want = torch.cat([CVSClassifier(backbone, head)(b) for b in live_batches])
    for name, atol in (("fp32", 1e-5), ("fp16", 1e-2)):
        cfg.features.store = str(stores[name])
        cfg.features.dtype = "float32" if name == "fp32" else "float16"
        split = open_store_splits(cfg, roles=("val",), backbone=backbone)["val"]
        batches = list(split.loader(8, False, 0))
        assert set(batches[0]) == (set(live_batches[0]) - {"video"}) | {"tokens"}
        assert batches[0]["tokens"].dtype == (torch.float32 if name == "fp32" else torch.float16)
        assert [s for b in batches for s in b["sample_id"]] == [s for b in live_batches for s in b["sample_id"]]
        torch.testing.assert_close(torch.cat([b["label"] for b in batches]),
                                   torch.cat([b["label"] for b in live_batches]))
        with torch.no_grad():
            got = torch.cat([CVSClassifier(None, head)(b) for b in batches])
        torch.testing.assert_close(got, want, atol=atol, rtol=0)


def test_extraction_decodes_each_jpeg_once(stores):
    stats = stores["result16"].stats
    assert stats.clips == 3 * LIMIT and stats.shards == 6
    assert stats.decodes_per_jpeg == 1.0  # overlapping clips reuse their preprocessed frames ...
    assert stats.frames_decoded < 3 * LIMIT * 8 * 0.8  # ... of 8 frames, keyframes 5 frames apart
    assert min(stats.decode_s, stats.preprocess_s, stats.forward_s, stats.write_s) > 0


def test_views_and_pooling_are_stored_and_match_the_full_tokens(stores, synth_root, tmp_path):
    make_store(synth_root, tmp_path / "pv", "features.dtype=float32", "features.views=3", "features.pool=avg2x2",
               "data.limit_per_split=4", "features.splits=[val]")
    pooled = FeatureStore.open(tmp_path / "pv")
    assert pooled.layout["token_grid"] == [4, 2, 2] and pooled.layout["backbone_token_grid"] == [4, 4, 4]
    assert pooled.layout["views"] == 3 and pooled.layout["tokens_per_clip"] == 16
    full = FeatureStore.open(stores["fp32"]).reader("val")
    reader = pooled.reader("val")
    for row in range(4):
        all_views = reader.read(row, view=None)
        assert all_views.shape == (3, 16, 96)
        ref, _, _ = pool_tokens(full.read(row)[None], (4, 4, 4), "avg2x2")
        torch.testing.assert_close(all_views[0], ref[0], atol=1e-5, rtol=0)  # view 0 = the center crop
        assert not torch.allclose(all_views[1], all_views[0])


# ---- resume ---------------------------------------------------------------------------------------------

KILLER = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)  # as the in-process reference store, so the tokens match bit for bit
    from cvsjepa.features import writer
    write = writer.StoreWriter.write_shard
    def slow(self, *a, **k):
        out = write(self, *a, **k)
        time.sleep(0.4)  # room for the parent's SIGKILL between shards
        return out
    writer.StoreWriter.write_shard = slow
    from cvsjepa.cli import main
    sys.exit(main(["extract", "--no-progress", *sys.argv[1:]]))
""")


def test_killed_extraction_resumes_to_the_uninterrupted_store(stores, synth_root, tmp_path):
    store = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILLER, *store_args(synth_root, store)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if (store / "manifest.json").is_file() and any(s["shards"] for s in manifest_splits(store).values()):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the extraction ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = sum(len(s["shards"]) for s in manifest_splits(store).values())
    assert 1 <= done < 6
    result = make_store(synth_root, store)
    assert result.stats.clips_before == 8 * done and result.stats.shards == 6 - done
    assert shard_bytes(store) == shard_bytes(stores["fp16"])  # byte for byte
    assert manifest_splits(store) == manifest_splits(stores["fp16"])


def test_interrupted_extraction_discards_partial_shards(stores, synth_root, tmp_path, monkeypatch):
    store = tmp_path / "ctrl_c"
    write = StoreWriter.write_shard
    calls = []

    def interrupt_after_two(self, *a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the third shard is being written
        calls.append(1)
        return write(self, *a, **k)

    monkeypatch.setattr(StoreWriter, "write_shard", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        make_store(synth_root, store)
    monkeypatch.setattr(StoreWriter, "write_shard", write)
    # what a kill -9 mid-write leaves: a temporary file, and a shard renamed but not yet listed
    (store / "shards" / "val").mkdir(parents=True, exist_ok=True)
    (store / "shards" / "val" / ".tmp-00000.npy.999").write_bytes(b"\x93NUMPY partial")
    (store / "shards" / "val" / "00001.npy").write_bytes(b"not listed in the manifest")
    assert len(manifest_splits(store)["train"]["shards"]) == 2 and not manifest_splits(store)["val"]["shards"]
    make_store(synth_root, store)
    assert not list(store.rglob(".tmp-*"))
    assert shard_bytes(store) == shard_bytes(stores["fp16"])


def test_a_full_disk_mid_shard_keeps_the_finished_shards(stores, synth_root, tmp_path, monkeypatch, capsys):
    import errno

    import numpy as np

    store = tmp_path / "full"
    real = np.lib.format.write_array
    calls = []

    def disk_fills(f, arr, **k):
        calls.append(1)
        if len(calls) == 3:  # the third shard: half its bytes land, then the disk is full
            f.write(b"\x93NUMPY" + b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, arr, **k)

    monkeypatch.setattr(np.lib.format, "write_array", disk_fills)
    rc = main(["extract", *store_args(synth_root, store), "--no-progress"])
    assert rc != 0 and "disk full while writing shard" in capsys.readouterr().err
    assert not list(store.rglob(".tmp-*"))
    assert len(manifest_splits(store)["train"]["shards"]) == 2  # both finished shards are listed
    monkeypatch.setattr(np.lib.format, "write_array", real)
    make_store(synth_root, store)  # resumes
    assert shard_bytes(store) == shard_bytes(stores["fp16"])


def test_a_frame_that_fails_under_skip_is_left_out_at_extraction_and_training(synth_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root, symlinks=True)
    cfg = load_config(None, store_args(root, tmp_path / "skip", "data.on_bad_sample=skip", "features.splits=[val]",
                                       "data.limit_per_split=6"))
    from cvsjepa.data.endoscapes import load_splits

    samples = load_splits(root, ["val"], frames=8, stride=1, limit=6)["val"].samples
    bad = samples[-1].clip_paths[-1]  # the last keyframe's own frame: only that clip uses it
    bad.write_bytes(bad.read_bytes()[:200])
    extract(cfg, progress=False)
    assert manifest_splits(tmp_path / "skip")["val"]["shards"]["0"]["skipped"] == [5]
    split = open_store_splits(cfg, roles=("val",))["val"]
    assert split.dataset[5] is None and split.dataset[4] is not None
    ids = [i for b in split.loader(4, False, 0) for i in b["sample_id"]]
    assert ids == [s.sample_id for s in samples[:5]]


# ---- refusals -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override,field", [
    ("data.frames=6", "data.frames"),
    ("features.dtype=bfloat16", "features.dtype"),
    ("features.pool=avg2x2", "features.pool"),
    ("data.stride=2", "data.stride"),
])
def test_mismatched_key_is_refused_naming_the_field(stores, synth_root, override, field):
    cfg = load_config(None, store_args(synth_root, stores["fp16"], override))
    with pytest.raises(StoreKeyError, match=field) as e:
        open_store_splits(cfg)
    assert "in the store but" in str(e.value)


def test_other_backbone_weights_are_refused(stores, synth_root):
    cfg = load_config(None, store_args(synth_root, stores["fp16"]))
    other = build_backbone(cfg.backbone)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(StoreKeyError, match="backbone.fingerprint"):
        open_store_splits(cfg, backbone=other.freeze())


def test_extracting_into_a_store_of_other_settings_is_one_line(stores, synth_root, capsys):
    rc = main(["extract", "--no-progress", *store_args(synth_root, stores["fp16"], "features.dtype=float32")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "features.dtype" in err and "'float16'" in err and "'float32'" in err
    assert err.count("\n") == 0


def test_keyframes_missing_from_the_store_are_refused(stores, synth_root):
    cfg = load_config(None, store_args(synth_root, stores["fp16"], "data.limit_per_split=0"))
    with pytest.raises(FeatureStoreError, match="not in feature store"):
        open_store_splits(cfg, roles=("val",))


@pytest.fixture
def store_copy(stores, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(stores["fp16"], dst)
    return dst


def test_truncated_shard_is_detected_naming_the_file(store_copy, synth_root, capsys):
    shard = store_copy / "shards" / "val" / "00001.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    cfg = load_config(None, store_args(synth_root, store_copy))
    with pytest.raises(ShardCorruptError, match=r"shards/val/00001\.npy.*truncated"):
        open_store_splits(cfg, verify=False)  # the size check alone catches it
    assert main(["extract", "--verify", "--no-progress", f"features.store={store_copy}"]) == 2
    assert "00001.npy" in capsys.readouterr().err


def test_bit_flipped_shard_is_detected_and_re_extracted(store_copy, stores, synth_root):
    shard = store_copy / "shards" / "train" / "00001.npy"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    cfg = load_config(None, store_args(synth_root, store_copy))
    with pytest.raises(ShardCorruptError, match=r"shards/train/00001\.npy fails its checksum"):
        open_store_splits(cfg)
    result = make_store(synth_root, store_copy)  # extraction redoes the damaged shard
    assert result.stats.shards == 1
    assert shard_bytes(store_copy) == shard_bytes(stores["fp16"])


def test_reads_are_the_shard_arrays_and_map_nothing(stores, synth_root):
    store = FeatureStore.open(stores["fp32"])
    reader = store.reader("train")
    ref = torch.from_numpy(np.concatenate([np.load(path) for path, _ in store.shard_paths(["train"])]))[:, 0]
    rows = [3, 4, 5, 9, 0, 15, 7, 8]  # runs read in one call (3-5), and 7, 8 across the two shards of 8
    assert torch.equal(reader.read_rows(rows), ref[rows])
    assert torch.equal(reader.read(9), ref[9])
    paths = {str(path.resolve()) for path, _ in store.shard_paths()}
    assert not paths & set(Path("/proc/self/maps").read_text().split())  # read, never memory-mapped

    # the loader's batches: read together into one tensor each, and never overwritten while held
    cfg = load_config(None, store_args(synth_root, stores["fp32"], "features.dtype=float32"))
    split = open_store_splits(cfg, roles=("train",), check_weights=False)["train"]
    held = list(split.loader(3, False, 0))
    assert torch.equal(torch.cat([b["tokens"] for b in held]), ref[split.dataset.rows])
    batch = held[0]
    assert batch["tokens"].untyped_storage().data_ptr() != held[1]["tokens"].untyped_storage().data_ptr()


def test_a_batch_read_in_one_go_is_not_copied_again():
    from cvsjepa.data.dataset import collate_skip_none, rows_of_one_tensor

    batch = torch.randn(4, 5, 6)
    joined = rows_of_one_tensor(list(batch))
    assert joined.data_ptr() == batch.data_ptr() and torch.equal(joined, batch)
    assert rows_of_one_tensor([batch[0], batch[2]]) is None  # not consecutive rows: stacked as usual
    assert rows_of_one_tensor([torch.randn(5, 6), torch.randn(5, 6)]) is None
    items = [{"tokens": batch[i], "label": torch.tensor([i])} for i in range(4)]
    out = collate_skip_none(items)
    assert out["tokens"].data_ptr() == batch.data_ptr() and out["label"].tolist() == [[0], [1], [2], [3]]
    out = collate_skip_none([items[0], None, items[2]])
    assert torch.equal(out["tokens"], batch[[0, 2]]) and out["tokens"].data_ptr() != batch.data_ptr()


# ---- end to end: train from the store ------------------------------------------------------------------

def test_train_from_the_store_reproduces_the_in_loop_val_map(stores, synth_root, tmp_path):
    common = [a for a in store_args(synth_root, "") if not a.startswith("features.store")]
    common += ["train.batch_size=8", "train.epochs=2", "train.lr=1e-3", "train.patience=0", "train.min_steps=0",
               "seed=3"]
    runs = {"live": [], "fp32": [f"features.store={stores['fp32']}", "features.dtype=float32"],
            "fp16": [f"features.store={stores['fp16']}"]}
    summary = {}
    for name, extra in runs.items():
        assert main(["train", "--no-progress", *common, *extra, f"out={tmp_path / name}"]) == 0
        summary[name] = json.loads((tmp_path / name / "summary.json").read_text())
        rows = (tmp_path / name / "metrics.csv").read_text().splitlines()
        summary[name]["rows"] = [r.split(",")[5] for r in rows[1:]]  # val_map per epoch
    assert summary["fp32"]["best_val_map"] == pytest.approx(summary["live"]["best_val_map"], abs=1e-6)
    assert summary["fp32"]["test_map"] == pytest.approx(summary["live"]["test_map"], abs=1e-6)
    assert summary["fp16"]["best_val_map"] == pytest.approx(summary["live"]["best_val_map"], abs=0.02)
    assert summary["fp32"]["features_store"] == str(stores["fp32"])
