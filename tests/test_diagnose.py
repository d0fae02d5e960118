"""`cvsjepa diagnose`: entropy normalisation, token-grid mapping, label categories, the internal
attention entropy against transformers' own attention output, the report and the CLI's errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cvsjepa.cli import main
from cvsjepa.diagnose.attention import mean_map, normalised_entropy, temporal_slots, to_grid
from cvsjepa.diagnose.criteria import (CATEGORIES, categories, category, category_table, criterion_comparison,
                                       pick_per_category, wrong_class)
from cvsjepa.diagnose.curves import curve_summary
from tiny_runs import train_tiny_run


@pytest.fixture(scope="module")
def run_dir(synth_root, tmp_path_factory) -> Path:
    """One small trained run for the module (tiny random backbone, 4-frame clips, 2 epochs)."""
    return train_tiny_run(synth_root, tmp_path_factory.mktemp("diag") / "run", frames=4)


# ------------------------------------------------------------------ pure functions
def test_entropy_uniform_is_one_and_one_hot_is_zero():
    for n in (2, 7, 2048):
        assert float(normalised_entropy(torch.full((n,), 1.0 / n))) == pytest.approx(1.0, abs=1e-5)
        one_hot = torch.zeros(n)
        one_hot[n // 2] = 1
        assert float(normalised_entropy(one_hot)) == 0.0
    half = torch.tensor([0.5, 0.5, 0.0, 0.0])  # log 2 / log 4
    assert float(normalised_entropy(half)) == pytest.approx(0.5)
    rows = torch.softmax(torch.randn(2, 3, 5, 9), dim=-1)
    assert normalised_entropy(rows).shape == (2, 3, 5)
    with pytest.raises(ValueError):
        normalised_entropy(torch.ones(1))


def test_token_maps_back_to_frame_row_column():
    grid = (2, 4, 4)  # V-JEPA order: frame-major, then row, then column
    att = torch.zeros(1, 32)
    att[0, np.ravel_multi_index((1, 0, 3), grid)] = 1.0
    g = to_grid(att, grid)
    assert g.shape == (1, 2, 4, 4) and g[0, 1, 0, 3] == 1.0
    two_levels = torch.cat([att, att], dim=1) / 2  # multilevel tokens: level-major; levels summed
    assert torch.equal(to_grid(two_levels, (2, *grid)), g)
    with pytest.raises(ValueError, match="token layout"):
        to_grid(torch.zeros(1, 30), grid)
    heads = torch.softmax(torch.randn(3, 4, 2, 32), dim=-1)
    torch.testing.assert_close(mean_map(heads).sum(dim=1), torch.ones(3))
    assert temporal_slots(8) == [0, 2, 5, 7] and temporal_slots(3) == [0, 1, 2]


def test_category_assignment_on_hand_made_labels():
    hand = {(1, 1, 1): "full CVS", (1, 0, 0): "C1-only", (0, 1, 0): "C2-only", (0, 0, 1): "C3-only",
            (1, 1, 0): "mixed", (0, 1, 1): "mixed", (1, 0, 1): "mixed", (0, 0, 0): "all-negative"}
    for label, cat in hand.items():
        assert category(label) == cat
    assert category([0.0, 1.0, 0.0]) == "C2-only"
    assert categories(np.array(list(hand))) == list(hand.values())
    with pytest.raises(ValueError):
        category([1, 2, 0])
    labels = np.array([[1, 1, 1]] * 3 + [[0, 0, 0]] * 10 + [[0, 1, 0]] * 4)
    picked = pick_per_category(labels, 2, seed=0)
    assert [category(labels[i]) for i in picked] == ["full CVS"] * 2 + ["C2-only"] * 2 + ["all-negative"] * 2
    assert picked == pick_per_category(labels, 2, seed=0)


def test_category_tables_criterion_comparison_and_wrong_class():
    labels = np.array([[0, 1, 0], [0, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]])
    probs = np.array([[0.7, 0.4, 0.1],  # C2-only, ranked C1 first, C2 missed at 0.5
                      [0.2, 0.6, 0.1],  # C2-only, right
                      [0.9, 0.8, 0.7],  # full CVS, all detected
                      [0.6, 0.1, 0.2],  # C1-only, right
                      [0.1, 0.1, 0.1]])
    thr = [0.5, 0.5, 0.5]
    rows = {r["category"]: r for r in category_table(labels, probs, thr, {"s": np.arange(5.0)})}
    assert [r for r in rows] == list(CATEGORIES)
    assert rows["C2-only"]["n"] == 2 and rows["C2-only"]["mean_s"] == 0.5
    assert rows["C2-only"]["accuracy"] == pytest.approx((1 / 3 + 1) / 2) and rows["C2-only"]["exact_match"] == 0.5
    assert rows["full CVS"]["exact_match"] == 1.0 and math.isnan(rows["mixed"]["accuracy"])
    comp = {r["criterion"]: r for r in criterion_comparison(labels, probs, thr)}
    assert comp["C2"]["n_alone"] == 2 and comp["C2"]["detection_rate_alone"] == 0.5
    assert comp["C2"]["mean_prob_alone"] == pytest.approx(0.5) and comp["C2"]["detection_rate_in_full_cvs"] == 1.0
    assert comp["C3"]["n_alone"] == 0 and math.isnan(comp["C3"]["mean_prob_alone"])
    wrong = {r["category"]: r for r in wrong_class(labels, probs)}
    assert (wrong["C2-only"]["top_C1"], wrong["C2-only"]["top_C2"]) == (1, 1)
    assert wrong["C2-only"]["top_is_true_criterion"] == 0.5 and wrong["C2-only"]["most_confused_with"] == "C1"
    assert wrong["C1-only"]["top_is_true_criterion"] == 1.0 and wrong["C1-only"]["most_confused_with"] == ""


def test_curve_summary_gap_at_best_epoch():
    rows = [{"epoch": 1, "train_map": 0.26, "val_map": 0.42}, {"epoch": 2, "train_map": 0.55, "val_map": 0.50},
            {"epoch": 3, "train_map": 0.73, "val_map": 0.48}]
    s = curve_summary({"exp2": rows})[0]
    assert s["best_epoch"] == 2 and s["gap_at_best"] == pytest.approx(0.05) and s["final_gap"] == pytest.approx(0.25)


# ------------------------------------------------------------------ internal entropy on the real backbone
def test_internal_entropy_matches_transformers_attentions(run_dir):
    from torch.utils.data import DataLoader, Subset

    from cvsjepa.data.dataset import collate_skip_none
    from cvsjepa.data.loaders import build_splits
    from cvsjepa.diagnose.entropy import internal_entropy
    from cvsjepa.reopen import load_run

    model, cfg, _ = load_run(run_dir, device=torch.device("cpu"))
    val = build_splits(cfg, 64, roles=("val",))["val"]
    loader = DataLoader(Subset(val.dataset, [0, 5, 9]), batch_size=1, collate_fn=collate_skip_none)
    res = internal_entropy(model, loader, torch.device("cpu"), progress=False)
    hf = model.backbone.model
    assert hf.config._attn_implementation != "eager"  # switched back after the pass
    assert res["layers_heads"].shape == (2, 4) and res["n_clips"] == 3 and res["n_tokens"] == 32
    # reference: transformers' own attention output (eager), same clips
    hf.set_attn_implementation("eager")
    try:
        video = torch.stack([val.dataset[i]["video"] for i in (0, 5, 9)])
        out = hf(pixel_values_videos=video, skip_predictor=True, output_attentions=True)
    finally:
        hf.set_attn_implementation("sdpa")
    ref = np.stack([normalised_entropy(a).mean(dim=(0, 2)).numpy() for a in out.attentions])  # [layers, heads]
    np.testing.assert_allclose(res["layers_heads"], ref, atol=1e-5)
    assert 0 < res["pooler"] <= 1


# ------------------------------------------------------------------ the command
def test_diagnose_all_writes_report_and_figures(run_dir, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(run_dir, twin)
    rc = main(["diagnose", str(run_dir), "all", "--samples", "1", "--entropy-samples", "2", "--compare", str(twin),
               "--runs", str(twin), "--no-progress"])
    assert rc == 0
    out = run_dir / "diagnose"
    data = json.loads((out / "diagnose.json").read_text())
    assert data["analyses"] == ["attention", "categories", "entropy", "curves"]
    for name in ["report.md", "categories_val.png", "internal_entropy.png", "training_curves.png", "attention_val.csv"]:
        assert (out / name).is_file(), name
    assert set(data["figures"]) <= {p.name for p in out.glob("*.png")}
    heat = data["attention"]["samples"]
    assert heat and all((out / r["png"]).is_file() for r in heat)
    assert len({r["category"] for r in heat}) == len(heat)  # one per category present
    for r in heat:
        assert 0 <= r["attention_entropy"] <= 1 + 1e-6 and r["attention_max"] >= 1 / 32 - 1e-6
        assert sum(r["temporal"]) == pytest.approx(1.0, abs=1e-5) and len(r["temporal"]) == 2
    cats = {r["category"]: r for r in data["categories"]["rows"]}
    n_val = data["n_samples"]
    assert sum(r["n"] for r in cats.values()) == n_val
    ent = data["entropy"]["runs"]
    assert len(ent) == 2 and len(data["entropy"]["clips"]) == 2
    (a, b) = ent.values()
    assert a["mean"] == pytest.approx(b["mean"])  # same frozen backbone, same clips
    report = (out / "report.md").read_text()
    for heading in ["## Pooler attention", "## Label categories", "### Criterion comparison", "### Wrong class",
                    "## Backbone internal attention entropy", "## Training curves"]:
        assert heading in report
    assert all(f"]({name})" in report for name in data["figures"])


def test_diagnose_chosen_sample_ids_and_curves_only(run_dir):
    assert main(["diagnose", str(run_dir), "attention", "--sample-ids", "5_0", "--no-progress"]) == 0
    data = json.loads((run_dir / "diagnose" / "diagnose.json").read_text())
    assert [r["sample_id"] for r in data["attention"]["samples"]] == ["5_0"]
    assert main(["diagnose", str(run_dir), "curves", "--no-progress"]) == 0
    assert json.loads((run_dir / "diagnose" / "diagnose.json").read_text())["analyses"] == ["curves"]


@pytest.mark.parametrize("extra,needle", [(["attention"], "does not exist"), (["curves"], "does not exist")])
def test_cli_missing_run_is_one_line(tmp_path, capsys, extra, needle):
    rc = main(["diagnose", str(tmp_path / "nope"), *extra, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and err.count("\n") == 0 and "Traceback" not in err


def test_cli_run_without_checkpoint_and_bad_input(run_dir, tmp_path, capsys):
    empty = tmp_path / "run"
    empty.mkdir()
    (empty / "config.yaml").write_text("name: x\n")
    cases = [([str(empty), "entropy"], "no best checkpoint"), ([str(empty), "curves"], "metrics.csv"),
             ([str(run_dir), "heatmaps"], "unknown analysis"),
             ([str(run_dir), "attention", "--sample-ids", "999_0"], "999_0")]
    for args, needle in cases:
        rc = main(["diagnose", *args, "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and needle in err and err.count("\n") == 0, (args, err)
