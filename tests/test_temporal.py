"""Temporal heads over per-second embeddings (issue 19): causality, streaming == offline, flat memory,
the per-second store (what predict computes, resume after a kill, keys), two-stage training and
sweeping, and evaluate / predict / diagnose of a temporal run."""

from __future__ import annotations

import csv
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch

from cvsjepa.checkpoint import META_FILE, load_classifier
from cvsjepa.cli import main
from cvsjepa.config import HeadConfig, TemporalHeadType, load_config
from cvsjepa.errors import CheckpointError, ConfigError
from cvsjepa.features import FeatureStore, FeatureStoreError
from cvsjepa.features.extract import extract
from cvsjepa.heads import build_head
from cvsjepa.heads.temporal import TemporalStream, gather_history, history_offsets, keyframe_gates

REPO = Path(__file__).resolve().parent.parent
TEMPORAL = sorted(get_args(TemporalHeadType))
SMALL = dict(num_heads=4, mlp_hidden=16, temporal_dim=32, history_seconds=20, history_dense=6, history_stride=3)


def opened(head_type: str, dim: int = 24, seed: int = 0):
    """A temporal head whose gates are open (at initialisation they are shut: the output would not
    depend on the history at all, and the tests below could not fail)."""
    torch.manual_seed(seed)
    head = build_head(HeadConfig(type=head_type, **SMALL), dim).eval()
    with torch.no_grad():
        for name, p in head.named_parameters():
            if "gate" in name:
                p.fill_(0.7)
    return head


def offline(head, table: torch.Tensor, start: int = 0) -> torch.Tensor:
    """The head at every second of one video (rows start..end of ``table``), from gathered histories."""
    rows = torch.arange(start, len(table))
    history, mask = gather_history(table, rows, torch.full_like(rows, start), head.offsets)
    with torch.no_grad():
        return head(history, mask)


# ---------------------------------------------------------------------------- heads, unit level
def test_history_is_dense_near_t_and_sparse_further_back():
    off = history_offsets(64, 16, 4)
    assert off[-16:] == tuple(range(15, -1, -1)) and off[:-16] == tuple(range(63, 15, -4)) and len(off) == 28
    assert history_offsets(5, 5, 9) == (4, 3, 2, 1, 0)
    with pytest.raises(ConfigError, match="history_dense"):
        history_offsets(8, 9, 1)


@pytest.mark.parametrize("head_type", TEMPORAL)
def test_the_output_at_t_never_depends_on_a_later_second(head_type):
    head = opened(head_type)
    g = torch.Generator().manual_seed(1)
    table = torch.randn(90, 24, generator=g)
    base = offline(head, table)
    for t in (0, 5, 30, 70):
        later = table.clone()
        later[t + 1:] = torch.randn(len(table) - t - 1, 24, generator=g) * 10
        assert torch.equal(offline(head, later)[t], base[t])  # seconds after t: no effect at all
        earlier = table.clone()
        earlier[t - 2 if t >= 2 else t] += 3 * torch.randn(24, generator=g)  # a second it holds: the output moves
        assert not torch.allclose(offline(head, earlier)[t], base[t])
    # the rows before the video's start (another video's seconds) are masked out
    two = torch.cat([torch.randn(40, 24, generator=g), table])
    assert torch.allclose(offline(head, two, start=40), base, atol=1e-6)


@pytest.mark.parametrize("head_type", TEMPORAL)
def test_gates_start_shut_so_a_new_head_is_a_classifier_of_the_current_second(head_type):
    head = build_head(HeadConfig(type=head_type, **SMALL), 24).eval()
    table = torch.randn(50, 24)
    other = table.clone()
    other[:-1] = torch.randn(49, 24)
    assert torch.allclose(offline(head, table)[-1], offline(head, other)[-1], atol=1e-6)


@pytest.mark.parametrize("head_type", TEMPORAL)
def test_the_gates_follow_the_current_second_not_the_past(head_type):
    """A gate opens or shuts per keyframe from what the current second shows (so a head can let the
    history in while smoke hides the present, and keep it out otherwise); it starts at 0 everywhere."""
    fresh = build_head(HeadConfig(type=head_type, **SMALL), 24).eval()
    table = torch.randn(50, 24)
    rows = torch.arange(len(table))
    history, _ = gather_history(table, rows, torch.zeros_like(rows), fresh.offsets)
    assert torch.equal(keyframe_gates(fresh, history), torch.zeros(len(table), keyframe_gates(fresh, history).shape[1]))
    head = opened(head_type)
    g = keyframe_gates(head, history)
    assert g.abs().min() > 0 and (g.max(dim=0).values - g.min(dim=0).values).min() > 1e-3  # differs per second
    past = history.clone()
    past[:, :-1] = torch.randn_like(past[:, :-1])
    assert torch.allclose(keyframe_gates(head, past), g, atol=1e-6)


@pytest.mark.parametrize("head_type", TEMPORAL)
def test_streaming_equals_offline(head_type):
    head = opened(head_type)
    table = torch.randn(150, 24, generator=torch.Generator().manual_seed(2))
    want = offline(head, table)
    for chunk in (1, 7, 64):
        stream = TemporalStream(head, 24)
        got = torch.cat([stream.push(table[i:i + chunk]) for i in range(0, len(table), chunk)])
        assert (got - want).abs().max() <= 1e-6, chunk


def _live_tensors() -> int:
    import warnings

    gc.collect()
    with warnings.catch_warnings():  # isinstance on some deprecated torch objects warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.parametrize("head_type", TEMPORAL)
def test_stream_memory_is_flat_over_10_and_80_minutes(head_type):
    head = opened(head_type)
    sizes = {}
    for minutes in (10, 80):
        before = _live_tensors()
        stream = TemporalStream(head, 24)
        for i in range(0, minutes * 60, 60):  # a minute of seconds per push
            stream.push(torch.randn(60, 24))
        state = stream.buffer.state_tensors()
        sizes[minutes] = (sum(t.numel() * t.element_size() for t in state), len(state), _live_tensors() - before)
        assert stream.buffer.seen == minutes * 60
        del stream, state
    # the same ring buffer of the last W seconds, and no other tensor left alive, after 10 or 80 minutes
    assert sizes[10] == sizes[80] and sizes[10][2] == sizes[10][1]
    # the last W float32 embeddings (W = the oldest offset + 1) and the offsets
    assert sizes[10][0] == (max(head.offsets) + 1) * 24 * 4 + len(head.offsets) * 8


def test_temporal_configs_need_per_second_embeddings():
    with pytest.raises(ConfigError, match="features.seconds=true"):
        load_config(None, ["head.type=temporal_gru"])
    with pytest.raises(ConfigError, match="features.pooler_run"):
        load_config(None, ["features.seconds=true", "features.second_pooler=run"])
    with pytest.raises(ConfigError, match="MixUp"):
        load_config(None, ["head.type=temporal_gated", "features.seconds=true", "features.store=/s",
                           "train.mixup_alpha=0.2"])
    with pytest.raises(ConfigError, match="history_dense"):
        load_config(None, ["head.type=temporal_gated", "features.seconds=true", "features.store=/s",
                           "head.history_dense=99"])


# ---------------------------------------------------------------------------- two stages on the session data
def base_args(root, store) -> list[str]:
    return ["backbone=tiny", f"data.root={root}", "data.frames=4", "features.shard_clips=32",
            "head.num_heads=4", "head.mlp_hidden=32", f"features.store={store}", "train.batch_size=4",
            "train.patience=0", "train.min_steps=0"]


TEMPORAL_ARGS = ["head.temporal_dim=32", "head.history_seconds=20", "head.history_dense=6", "head.history_stride=3",
                 "train.epochs=2"]


@pytest.fixture(scope="module")
def two_stage(synth_root, tmp_path_factory):
    """A store (tokens + per-second means), a stage-1 clip run, its per-second embeddings, a
    temporal_gated run (configs/temporal_gated.yaml) and a temporal_gru sweep (configs/temporal_gru.yaml)."""
    work = tmp_path_factory.mktemp("temporal")
    store, stage1 = work / "store", work / "stage1"
    args = base_args(synth_root, store)
    extract(load_config(None, [*args, "features.seconds=true"]), progress=False)
    assert main(["train", *args, "train.epochs=1", f"out={stage1}", "--no-progress"]) == 0
    run_pooler = [f"features.pooler_run={stage1}", *TEMPORAL_ARGS]
    assert main(["extract", str(REPO / "configs" / "temporal_gated.yaml"), *args, *run_pooler, "--no-progress"]) == 0
    gated, gru = work / "gated", work / "gru"
    assert main(["train", str(REPO / "configs" / "temporal_gated.yaml"), *args, *run_pooler, f"out={gated}",
                 "--no-progress"]) == 0
    assert main(["sweep", str(REPO / "configs" / "temporal_gru.yaml"), *args, *run_pooler, "sweep.lrs=[1e-3,3e-3]",
                 "sweep.weight_decays=[0.01]", f"out={gru}", "--no-progress"]) == 0
    return {"root": synth_root, "store": store, "stage1": stage1, "gated": gated, "gru": gru, "args": args,
            "work": work}


def _preds(run: Path, split: str) -> dict[str, list[float]]:
    with open(run / f"predictions_{split}.csv", newline="") as f:
        return {r["sample_id"]: [float(r[f"prob_C{c}"]) for c in (1, 2, 3)] for r in csv.DictReader(f)}


def test_the_store_holds_every_second_as_predict_embeds_it(two_stage):
    from cvsjepa.data.loaders import build_splits
    from cvsjepa.data.seconds import second_samples, seconds_split

    store = FeatureStore.open(two_stage["store"])
    kinds = sorted(store.seconds)
    assert kinds[0] == "mean" and kinds[1].startswith("run-") and len(kinds) == 2
    model, cfg, meta = load_classifier(two_stage["gated"] / "checkpoints" / "best")
    stage1_sha = json.loads((two_stage["stage1"] / "checkpoints" / "best" / META_FILE).read_text())["sha256"]
    assert meta["pooler"]["stage1"]["weights_sha256"] == stage1_sha["model.safetensors"]
    assert store.seconds[kinds[1]]["key"]["weights_sha256"] == stage1_sha["model.safetensors"]
    val = build_splits(cfg, model.backbone.crop_size, roles=("val",))["val"]
    secs = second_samples(val.index, cfg.data.frames, cfg.data.stride)
    entry = store.split_entry(cfg.data.val_split, kinds[1])
    assert entry["sample_ids"] == [s.sample_id for s in secs]  # every second, not 1 in 5
    assert len(secs) > 4 * len(val.index.samples)
    rows = entry["video_rows"]
    assert sorted(rows.values()) == [[0, rows[str(secs[-1].video_id)][0]], [rows[str(secs[-1].video_id)][0], len(secs)]]
    table = np.concatenate([np.load(p) for p, _ in store.shard_paths([cfg.data.val_split], kinds[1])])
    clips = seconds_split(val, cfg, model.backbone.crop_size).dataset
    pick = [0, 3, len(secs) // 2, len(secs) - 1]
    with torch.no_grad():
        got = model.embed_seconds(torch.stack([clips[i]["video"] for i in pick]))
    assert torch.allclose(got, torch.from_numpy(table[pick]), atol=1e-5)


def test_two_stage_runs_train_sweep_and_record_their_stage1(two_stage):
    for name in ("gated", "gru"):
        summary = json.loads((two_stage[name] / "summary.json").read_text())
        assert 0 <= summary["test_map"] <= 1 and summary["features_store"] == str(two_stage["store"])
        meta = json.loads((two_stage[name] / "checkpoints" / "best" / META_FILE).read_text())
        assert meta["config"]["head"]["type"] == f"temporal_{name}" and meta["pooler"]["kind"] == "run"
        assert meta["pooler"]["stage1"]["run"] == str(two_stage["stage1"].resolve())
    assert json.loads((two_stage["gru"] / "summary.json").read_text())["sweep"]["k"] == 2


def test_another_stage1_run_is_refused(two_stage, tmp_path):
    other = tmp_path / "stage1b"
    args = two_stage["args"]
    assert main(["train", *args, "train.epochs=1", "seed=1", f"out={other}", "--no-progress"]) == 0
    cfg = load_config(REPO / "configs" / "temporal_gated.yaml", [*args, *TEMPORAL_ARGS, f"features.pooler_run={other}"])
    from cvsjepa.train.classifier import train

    with pytest.raises(FeatureStoreError, match="no per-second embeddings pooled by run-.*it has: mean, run-"):
        train(cfg, progress=False)
    # a temporal checkpoint whose pooler is not the stage-1 head it records is refused on load
    ckpt = tmp_path / "ckpt"
    shutil.copytree(two_stage["gated"] / "checkpoints" / "best", ckpt)
    meta = json.loads((ckpt / META_FILE).read_text())
    meta["pooler"]["weights_digest"] = "0" * 64
    (ckpt / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="stage-1 run"):
        load_classifier(ckpt)


def test_evaluate_from_the_videos_gives_the_store_s_predictions(two_stage, tmp_path):
    run = tmp_path / "gated"
    shutil.copytree(two_stage["gated"], run)
    trained = _preds(run, "test")
    assert main(["evaluate", str(run), "--bootstrap", "0", "--no-progress"]) == 0
    report = json.loads((run / "eval_test.json").read_text())
    again = _preds(run, "test")
    assert again.keys() == trained.keys()
    assert max(abs(a - b) for k in trained for a, b in zip(trained[k], again[k])) <= 2e-6
    assert report["time_to_cvs"]["method"] == "seconds"
    with pytest.raises(ConfigError, match="temporal run"):
        _tta(run)


def _tta(run: Path) -> None:
    from cvsjepa.evaluate.runner import EvalOptions, evaluate_run
    from cvsjepa.evaluate.tta import TTASettings
    from cvsjepa.reopen import Reopen

    evaluate_run(run, EvalOptions(tta=TTASettings(views=2), bootstrap=0), Reopen(progress=False))


def test_predict_streams_a_temporal_run_second_by_second_as_offline(two_stage, tmp_path):
    from cvsjepa import CVSModel
    from cvsjepa.data.synth import frame_number
    from cvsjepa.features.seconds import load_seconds

    root, run = two_stage["root"], two_stage["gated"]
    vid = int(float((root / "val_vids.txt").read_text().split()[0]))
    folder = tmp_path / "frames"
    folder.mkdir()
    jpegs = sorted((root / "val").glob(f"{vid}_*.jpg"), key=frame_number)
    for p in jpegs:
        shutil.copy(p, folder / p.name)
    model = CVSModel.from_run(run)
    timeline = model.predict_video(folder, batch_size=5)
    raw = torch.from_numpy(timeline.raw_probs if timeline.raw_probs is not None else timeline.probs)
    assert len(raw) == len(jpegs)
    # offline: the head on every second's history gathered from the store's embeddings of this video
    store = FeatureStore.open(two_stage["store"])
    kind = next(k for k in store.seconds if k.startswith("run-"))
    table = load_seconds(store, kind, model.cfg.data.val_split)
    start, stop = table.video_rows[str(vid)]
    want = torch.sigmoid(offline(model.model.head.float(), table.embeddings[start:stop].float()))
    assert (raw.float() - want).abs().max() <= 1e-5  # same seconds, embedded in other batches
    trained = _preds(run, "val")
    for i, f in enumerate(timeline.frame_indices):
        if f"{vid}_{f}" in trained:
            assert max(abs(a - b) for a, b in zip(trained[f"{vid}_{f}"], raw[i].tolist())) <= 2e-6
    with pytest.raises(ValueError, match="temporal run"):
        model.predict_clip(torch.zeros(4, 3, 64, 64))
    stream = model.stream()
    assert stream.state_nbytes() == (max(model.model.head.offsets) + 1) * model.model.pooler.out_dim * 4 + len(
        model.model.head.offsets) * 8


def test_diagnose_plots_which_past_seconds_the_head_used(two_stage, tmp_path):
    from cvsjepa.diagnose.runner import DiagnoseOptions, diagnose_run
    from cvsjepa.reopen import Reopen

    for name in ("gated", "gru"):
        run = tmp_path / name
        shutil.copytree(two_stage[name], run)
        res = diagnose_run(run, DiagnoseOptions(samples=1), Reopen(progress=False))
        assert res.data["analyses"] == ["temporal", "curves"] and (res.out_dir / "temporal_val.png").is_file()
        rows = res.data["temporal"]["samples"]
        assert rows and all(len(r["weights"]) == len(res.data["temporal"]["offsets"]) for r in rows)
        for r in rows:  # weights over the positions the video had, summing to 1 (0 where it had not begun)
            assert sum(r["weights"]) == pytest.approx(1.0, abs=1e-3) or not any(r["weights"])
            assert len(r["gates"]) == (2 if name == "gated" else 1) and all(-1 <= g <= 1 for g in r["gates"])
        with pytest.raises(ConfigError, match="temporal run"):
            diagnose_run(run, DiagnoseOptions(analyses=("attention",)), Reopen(progress=False))
    with pytest.raises(ConfigError, match="clip tokens"):
        diagnose_run(two_stage["stage1"], DiagnoseOptions(analyses=("temporal",)), Reopen(progress=False))


# ---------------------------------------------------------------------------- resume after a kill
KILLER = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)  # as the in-process reference store, so the embeddings match bit for bit
    from cvsjepa.features import writer
    write = writer.StoreWriter.write_shard
    def slow(self, *a, **k):
        out = write(self, *a, **k)
        if (k.get("kind") or (len(a) > 4 and a[4])) and not getattr(writer, "slept", False):
            writer.slept = True
            time.sleep(2.0)  # room for the parent's SIGKILL after the first per-second shard
        return out
    writer.StoreWriter.write_shard = slow
    from cvsjepa.cli import main
    sys.exit(main(["extract", "--no-progress", *sys.argv[1:]]))
""")


def _seconds_shards(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted((store / "seconds").rglob("*.npy"))}


def test_killed_per_second_extraction_resumes_to_the_uninterrupted_store(two_stage, tmp_path):
    args = [a for a in two_stage["args"] if not a.startswith("features.store=")]
    store = tmp_path / "killed"
    cmd = [*args, f"features.store={store}", "features.seconds=true", "features.shard_clips=16"]
    proc = subprocess.Popen([sys.executable, "-c", KILLER, *cmd], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            m = store / "manifest.json"
            if m.is_file():
                try:
                    seconds = json.loads(m.read_text()).get("seconds", {}).get("mean", {}).get("splits", {})
                except json.JSONDecodeError:
                    seconds = {}
                if any(s["shards"] for s in seconds.values()):
                    break
            time.sleep(0.02)
        assert proc.poll() is None, "the extraction ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    splits = json.loads((store / "manifest.json").read_text())["seconds"]["mean"]["splits"]
    done = sum(len(s["shards"]) for s in splits.values())
    total = sum(-(-len(s["sample_ids"]) // 16) for s in splits.values())
    assert 1 <= done < total
    result = extract(load_config(None, cmd), progress=False)
    assert result.seconds.shards == total - done and result.stats.shards == 0  # the tokens were complete
    reference = tmp_path / "reference"
    extract(load_config(None, [*args, f"features.store={reference}", "features.seconds=true",
                               "features.shard_clips=16"]), progress=False)
    assert _seconds_shards(store) == _seconds_shards(reference)  # byte for byte
    a, b = (json.loads((s / "manifest.json").read_text())["seconds"] for s in (store, reference))
    assert a == b
    assert main(["extract", "--verify", f"features.store={store}"]) == 0
