"""DDP on CPU (gloo): 2 processes launched by torchrun train like 1 process with the same global batch,
and every val sample is counted exactly once."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from cvsjepa import distributed
from cvsjepa.distributed import GlobalBatchSampler
from resume_state import edit_resume_state

FAST = ["backbone=tiny", "data.frames=4", "head.num_heads=4", "head.mlp_hidden=32", "train.batch_size=8",
        "train.epochs=2", "train.patience=0", "train.min_steps=0", "train.lr=3e-3", "--no-progress"]


def _torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "cvsjepa", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_global_batches_split_across_ranks(monkeypatch):
    n, bs = 21, 8
    monkeypatch.setattr(distributed, "world", lambda: (0, 1))
    single = list(GlobalBatchSampler(n, bs, seed=3))
    per_rank = []
    for r in range(2):
        monkeypatch.setattr(distributed, "world", lambda r=r: (r, 2))
        per_rank.append(list(GlobalBatchSampler(n, bs, seed=3)))
    assert len(per_rank[0]) == len(per_rank[1])  # every rank steps the same number of times
    for b, (a0, a1) in enumerate(zip(*per_rank)):
        assert a0 + a1 == single[b]  # the same global batch, split in two
    with pytest.raises(ValueError, match="multiple"):
        GlobalBatchSampler(n, 7, seed=0)


def test_shards_cover_every_index_once(monkeypatch):
    seen = []
    for r in range(3):
        monkeypatch.setattr(distributed, "world", lambda r=r: (r, 3))
        seen += distributed.shard(10)
    assert sorted(seen) == list(range(10))


@pytest.mark.slow
def test_two_processes_match_one(synth_root, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = _torchrun(1, [*FAST, f"data.root={synth_root}", f"out={one}"])
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = _torchrun(2, [*FAST, f"data.root={synth_root}", f"out={two}"])
    assert r2.returncode == 0, r2.stderr[-2000:]
    s1 = json.loads((one / "summary.json").read_text())
    s2 = json.loads((two / "summary.json").read_text())
    assert s2["world_size"] == 2
    assert s2["best_val_map"] == pytest.approx(s1["best_val_map"], abs=0.02)
    # every val sample exactly once, in the same order as one process
    ids1 = [r["sample_id"] for r in csv.DictReader(open(one / "predictions_val.csv"))]
    ids2 = [r["sample_id"] for r in csv.DictReader(open(two / "predictions_val.csv"))]
    assert ids2 == ids1 and len(set(ids2)) == len(ids2)
    # rank 0 alone wrote: one metrics row per epoch
    assert len((two / "metrics.csv").read_text().splitlines()) == 1 + 2


@pytest.mark.slow
def test_resume_on_another_world_size(synth_root, tmp_path):
    out = tmp_path / "run"
    r = _torchrun(2, [*FAST, "train.epochs=1", f"data.root={synth_root}", f"out={out}"])
    assert r.returncode == 0, r.stderr[-2000:]
    (out / "summary.json").unlink()  # pretend it stopped after epoch 1 of 2
    cfg = (out / "config.yaml").read_text().replace("epochs: 1", "epochs: 2")
    (out / "config.yaml").write_text(cfg)
    edit_resume_state(out, lambda state: state.update(stage_done=False))
    r = subprocess.run([sys.executable, "-m", "cvsjepa", "train", "--resume", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(x["epoch"]) for x in rows] == [1, 2]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 1


@pytest.mark.slow
def test_two_process_extraction_equals_one(synth_root, tmp_path):
    args = ["backbone=tiny", "data.frames=4", f"data.root={synth_root}", "features.shard_clips=8"]
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = subprocess.run([sys.executable, "-m", "cvsjepa", "extract", *args, f"features.store={one}", "--no-progress"],
                        capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr[-2000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cvsjepa",
           "extract", *args, f"features.store={two}", "--no-progress"]
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-2000:]
    m1 = json.loads((one / "manifest.json").read_text())
    m2 = json.loads((two / "manifest.json").read_text())
    assert m1["splits"].keys() == m2["splits"].keys() and m1["layout"] == m2["layout"]
    for split, e1 in m1["splits"].items():
        e2 = m2["splits"][split]
        assert e2["complete"] and e2["sample_ids"] == e1["sample_ids"]
        assert {k: v["sha256"] for k, v in e2["shards"].items()} == {k: v["sha256"] for k, v in e1["shards"].items()}
    # the store reads back and verifies
    r3 = subprocess.run([sys.executable, "-m", "cvsjepa", "extract", *args, f"features.store={two}", "--verify",
                         "--no-progress"], capture_output=True, text=True, timeout=600)
    assert r3.returncode == 0, r3.stderr[-2000:]
