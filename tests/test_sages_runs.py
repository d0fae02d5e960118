"""SAGES CVS Challenge 2024 end to end on `cvsjepa synth --layout sages2024`: the synthetic videos, decode
counts (extraction and a shuffled epoch), train + evaluate with the challenge's metrics, the reuse of a
run's split file, and the 90 x 3 submission contract."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cvsjepa.cli import main
from cvsjepa.config import load_config
from cvsjepa.data.dataset import ClipDataset
from cvsjepa.data.index import load_indices
from cvsjepa.data.synth import write_video_mp4
from cvsjepa.data.video_frames import decode_groups, decode_seconds
from cvsjepa.predict.submission import SubmissionError, check_outputs
from cvsjepa.distributed import GlobalBatchSampler

REPO = Path(__file__).resolve().parent.parent
ARGS = ["backbone=tiny", "data.format=sages2024", "data.frames=4", "head.num_heads=4", "head.mlp_hidden=32",
        "train.batch_size=8", "train.epochs=1", "train.patience=0", "train.min_steps=0"]


@pytest.fixture(scope="module")
def sages_run(sages_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sages") / "run"
    assert main(["train", str(REPO / "configs" / "exp2_attention.yaml"), f"data.root={sages_root}", f"out={out}",
                 *ARGS, "--no-progress"]) == 0
    return out


def test_synthetic_sages_videos_show_second_k_at_frame_k_fps(sages_root):
    import av

    header = (sages_root / "train" / "labels" / "case_001" / "frame.csv").read_text().splitlines()[0]
    assert header == "frame_id," + ",".join(f"c{c}_rater{r}" for c in (1, 2, 3) for r in (1, 2, 3))
    oracle = json.loads((sages_root / "oracle.json").read_text())
    assert set(oracle) == {"train", "test"} and 0 < oracle["test"]["map"] <= 1
    video = sages_root / "test" / "videos" / "case_004.mp4"
    with av.open(str(video)) as c:
        raw = [f.to_ndarray(format="rgb24").mean() for f in c.decode(video=0)]
    assert len(raw) % 30 == 0 and raw[30] > 1.6 * raw[31]  # frame 30 k shows second k, the rest are dimmed
    seconds = decode_seconds(video)
    assert len(seconds) == len(raw) // 30
    assert all(abs(float(s.float().mean()) - raw[30 * k]) < 3 for k, s in enumerate(seconds))


@pytest.fixture(scope="module")
def sages_store(sages_root, tmp_path_factory):
    """A feature store of the synthetic copy (tiny backbone) and the extraction's statistics."""
    from cvsjepa.features.extract import extract

    store = tmp_path_factory.mktemp("sages_store") / "store"
    cfg = load_config(None, [*ARGS, f"data.root={sages_root}", f"features.store={store}"])
    return store, extract(cfg, progress=False).stats, cfg


def test_extraction_decodes_each_video_once(sages_store):
    store, stats, cfg = sages_store
    assert stats.distinct_videos == 5 and stats.videos_decoded == 5  # every clip of 5 videos, one decode each
    assert stats.clips == sum(len(i.samples) for i in load_indices(cfg, ["train", "val", "test"]).values())
    assert json.loads((store / "splits.json").read_text())["splits"]["val"]


def test_a_shuffled_epoch_decodes_each_video_once_per_block(sages_root):
    cfg = load_config(None, [*ARGS, f"data.root={sages_root}"])
    samples = [s for i in load_indices(cfg, ["train", "val", "test"]).values() for s in i.samples]

    def decodes(grouped: bool) -> list[int]:
        ds = ClipDataset(samples, crop=64, cache_videos=2)
        sampler = GlobalBatchSampler(len(ds), 8, seed=3, groups=ds.decode_groups if grouped else None)
        sampler.set_epoch(1)
        order = [i for batch in sampler for i in batch]
        assert sorted(order) == list(range(len(ds)))  # still every clip once, in a shuffled order
        for i in order:
            ds[i]
        return sorted(ds.cache.videos.decodes.values())

    assert decode_groups(samples, 2)[1] == 2
    assert decodes(grouped=True) == [1, 1, 1, 1, 1]
    assert max(decodes(grouped=False)) > 1  # plain shuffling of 5 videos through a cache of 2 re-decodes


def _predictions(run: Path, split: str, suffix: str = "") -> tuple[list[str], np.ndarray, np.ndarray]:
    with open(run / f"predictions_{split}{suffix}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return ([r["sample_id"] for r in rows], np.array([[float(r[f"label_C{c}"]) for c in (1, 2, 3)] for r in rows]),
            np.array([[float(r[f"prob_C{c}"]) for c in (1, 2, 3)] for r in rows]))


def test_train_and_evaluate_report_the_challenge_metrics(sages_run, sages_root, capsys):
    from sklearn.metrics import average_precision_score, brier_score_loss, f1_score

    splits = json.loads((sages_run / "splits.json").read_text())["splits"]
    assert sorted(splits) == ["test", "train", "val"] and len(splits["val"]) == 1
    assert not set(splits["val"]) & set(splits["train"])
    assert main(["evaluate", str(sages_run), "--bootstrap", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "task A  mAP (sklearn macro)" in out and "task C  robustness" in out
    c = json.loads((sages_run / "eval_test.json").read_text())["challenge"]
    ids, labels, probs = _predictions(sages_run, "test")
    assert c["n_frames"] == len(ids) and c["n_videos"] == 2
    assert c["task_a"]["map"] == pytest.approx(average_precision_score(labels, probs, average="macro"), abs=1e-6)
    cfg = load_config(None, [*ARGS, f"data.root={sages_root}", f"data.splits_file={sages_run / 'splits.json'}"])
    by_id = {s.sample_id: s for s in load_indices(cfg, ["test"])["test"].samples}
    q = np.array([by_id[i].conf_label for i in ids])
    for k, name in enumerate(("C1", "C2", "C3")):
        assert c["task_b"]["brier_official"][name] == pytest.approx(
            brier_score_loss(q[:, k] > 0, probs[:, k], pos_label=1), abs=1e-6)
        brier = np.mean((probs[:, k] - labels[:, k]) ** 2)
        assert c["task_b"]["brier_majority"][name] == pytest.approx(brier, abs=1e-6)
    assert c["at_0.5"]["f1_samples"] == pytest.approx(f1_score(labels, probs > 0.5, average="samples", zero_division=1))
    t = c["task_c"]
    mins = [s["min_map"] for s in t["strata"].values() if s["min_map"] is not None]
    assert t["robustness_map"] == min(mins) and t["strata"][t["worst_stratum"]]["min_map"] == min(mins)


def test_evaluate_reads_the_runs_split_file_instead_of_redrawing(sages_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sages_run, run)
    plan = json.loads((run / "splits.json").read_text())
    s = plan["splits"]
    s["train"], s["val"] = sorted(s["train"][1:] + s["val"]), [s["train"][0]]  # another val video than the draw
    (run / "splits.json").write_text(json.dumps(plan))
    assert main(["evaluate", str(run), "--split", "val", "--bootstrap", "0", "--no-progress"]) == 0
    ids, _, _ = _predictions(run, "val")
    assert ids and {i.rsplit("_", 1)[0] for i in ids} == set(s["val"])


def test_temporal_tta_shifts_clips_within_the_decoded_videos(sages_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sages_run, run)
    assert main(["evaluate", str(run), "--tta", "2,2", "--tta-step", "3", "--bootstrap", "0", "--no-progress"]) == 0
    report = json.loads((run / "eval_test_tta2x2.json").read_text())
    assert report["tta"]["temporal_offsets_s"] == [0, 3] and report["challenge"]["task_a"]["map"] is not None
    _, _, plain = _predictions(sages_run, "test")
    _, _, tta = _predictions(run, "test", "_tta2x2")
    assert tta.shape == plain.shape and not np.allclose(tta, plain)  # other clips were scored and averaged


def _video_1fps(path: Path, seconds: int) -> Path:
    rng = np.random.default_rng(0)
    return write_video_mp4([rng.integers(0, 255, (72, 128, 3), dtype=np.uint8) for _ in range(seconds)], path, fps=1)


def test_the_submission_is_90_by_3_probabilities(sages_run, tmp_path, capsys):
    video = _video_1fps(tmp_path / "input" / "laparoscopic-video.mp4", 90)
    assert main(["predict", str(video), "--run", str(sages_run), "--format", "sages2024", "--out",
                 str(tmp_path / "output"), "--no-progress"]) == 0
    out = json.loads((tmp_path / "output" / "cvs-criteria.json").read_text())
    assert list(out) == ["overall_outputs"] and np.shape(out["overall_outputs"]) == (90, 3)
    assert all(0 <= p <= 1 for row in out["overall_outputs"] for p in row)
    check_outputs(out)
    bad = [{"overall_outputs": out["overall_outputs"][:89]}, {"outputs": out["overall_outputs"]},
           {"overall_outputs": [[1.5, 0, 0]] + out["overall_outputs"][1:]},
           {"overall_outputs": [[math.nan, 0, 0]] + out["overall_outputs"][1:]}]
    for b in bad:
        with pytest.raises(SubmissionError):
            check_outputs(b)
    short = _video_1fps(tmp_path / "short.mp4", 60)
    assert main(["predict", str(short), "--run", str(sages_run), "--format", "sages2024", "--out",
                 str(tmp_path / "out60"), "--no-progress"]) == 2
    assert "shape (60, 3); the challenge expects (90, 3)" in capsys.readouterr().err
    assert not (tmp_path / "out60" / "cvs-criteria.json").exists()


def test_sweep_on_the_sages_feature_store(sages_root, sages_store, tmp_path):
    store = sages_store[0]
    common = [*ARGS, f"data.root={sages_root}", f"features.store={store}", "--no-progress"]
    out = tmp_path / "sweep"
    assert main(["sweep", *common, f"out={out}", "train.epochs=2", "sweep.lrs=[1e-3,3e-4]",
                 "sweep.weight_decays=[0.1]"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_map"] is not None and (out / "splits.json").is_file()
    assert (out / "splits.json").read_text() == (store / "splits.json").read_text().replace(
        '"source": "official"', f'"source": "{store / "splits.json"}"')
    assert main(["evaluate", str(out), "--bootstrap", "0", "--no-progress"]) == 0
    assert json.loads((out / "eval_test.json").read_text())["challenge"]["task_a"]["map"] is not None


@pytest.mark.slow
def test_the_container_recipe_runs_without_docker(sages_run, tmp_path):
    """The build context and the entry point (with its paths redirected); the image itself needs Docker."""
    ctx = tmp_path / "ctx"
    subprocess.run([sys.executable, str(REPO / "scripts" / "sages_container" / "export_run.py"), str(sages_run),
                    str(ctx)], check=True)
    assert (ctx / "Dockerfile").is_file() and (ctx / "run" / "checkpoints" / "best" / "model.safetensors").is_file()
    _video_1fps(tmp_path / "input" / "laparoscopic-video.mp4", 90)
    env = {"INPUT_DIR": str(tmp_path / "input"), "OUTPUT_DIR": str(tmp_path / "output"), "RUN_DIR": str(ctx / "run"),
           "CVSJEPA": f"{sys.executable} -m cvsjepa", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    subprocess.run(["sh", str(ctx / "entrypoint.sh")], check=True, env=env)
    out = json.loads((tmp_path / "output" / "cvs-criteria.json").read_text())
    assert np.shape(out["overall_outputs"]) == (90, 3)
