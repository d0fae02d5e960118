import csv
import json
import statistics

import numpy as np
import pytest

from cvsjepa.cli import main

FAST = ["backbone=tiny", "data.frames=4", "head.num_heads=4", "head.mlp_hidden=32", "train.batch_size=8",
        "train.epochs=1", "train.min_steps=0", "--no-progress"]


@pytest.fixture(scope="module")
def two_runs(synth_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, extra in (("base", []), ("smooth", ["loss.label_smoothing=0.1"])):
        assert main(["train", *FAST, f"data.root={synth_root}", f"out={root / name}", f"name={name}", *extra]) == 0
    assert main(["train", *FAST, f"data.root={synth_root}", f"out={root / 'grp'}", "name=grp", "--seeds", "3", "4"]) == 0
    return root


def test_runs_table(two_runs, tmp_path, capsys):
    assert main(["runs", str(two_runs), "--baseline", "base", "--bootstrap", "200", "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "base" in out and "smooth" in out and "best_val_map" in out and "delta_ci95" in out
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    by = {r["experiment"]: r for r in rows}
    maps = {n: json.loads((two_runs / n / "summary.json").read_text())["best_val_map"] for n in ("base", "smooth")}
    assert float(by["base"]["delta_vs_baseline"]) == 0
    assert float(by["smooth"]["delta_vs_baseline"]) == pytest.approx(maps["smooth"] - maps["base"])
    assert (tmp_path / "t.md").read_text().count("\n") == 5  # header, rule, 2 runs and the group
    # paired intervals against the baseline: not for the baseline itself, around the delta for the others
    assert by["base"]["delta_ci95_lo"] == "" and by["base"]["delta_p"] == ""
    for name in ("smooth", "grp"):
        lo, hi, p = (float(by[name][k]) for k in ("delta_ci95_lo", "delta_ci95_hi", "delta_p"))
        assert lo <= float(by[name]["delta_vs_baseline"]) + 1e-6 and float(by[name]["delta_vs_baseline"]) <= hi + 1e-6
        assert 0 <= p <= 1
    # the group is one row: the mean over its seeds, with their sd
    members = [json.loads((two_runs / "grp" / f"seed{k}" / "summary.json").read_text())["best_val_map"] for k in (3, 4)]
    assert float(by["grp"]["best_val_map"]) == pytest.approx(statistics.mean(members))
    assert float(by["grp"]["best_val_map_sd"]) == pytest.approx(statistics.stdev(members))
    assert by["grp"]["seeds"] == "2" and " +- " in out


def test_demo_report_prints_the_operating_point(two_runs):
    from cvsjepa.demo import operating_point

    text = operating_point(two_runs / "base")
    assert text.startswith("operating point (what `cvsjepa predict` uses): specificity >= 0.95")
    assert "calibrated on val: T = C1" in text
    assert ("CVS would never be declared: val cannot support" in text) != ("test, full CVS declared" in text)


def test_seed_group_layout_summary_and_ensemble(two_runs, synth_root, capsys):
    grp = two_runs / "grp"
    doc = json.loads((grp / "group.json").read_text())
    assert doc["members"] == ["seed3", "seed4"] and doc["seeds"] == [3, 4]
    for k in (3, 4):
        assert f"\nseed: {k}\n" in (grp / f"seed{k}" / "config.yaml").read_text()
    rows = [list(csv.DictReader(open(grp / f"seed{k}" / "predictions_test.csv"))) for k in (3, 4)]
    ens = list(csv.DictReader(open(grp / "predictions_test.csv")))
    assert [r["sample_id"] for r in ens] == [r["sample_id"] for r in rows[0]]
    mean = np.mean([[[float(r[f"prob_C{c}"]) for c in (1, 2, 3)] for r in rr] for rr in rows], axis=0)
    got = np.array([[float(r[f"prob_C{c}"]) for c in (1, 2, 3)] for r in ens])
    assert np.abs(got - mean).max() < 2e-6 and doc["ensemble"]["test"]["n_samples"] == len(ens)
    # the same command again: finished seeds are skipped, the summary rewritten identically
    assert main(["train", *FAST, f"data.root={synth_root}", f"out={grp}", "name=grp", "--seeds", "3", "4"]) == 0
    assert json.loads((grp / "group.json").read_text())["metrics"] == doc["metrics"]
    assert "ensemble test mAP" in capsys.readouterr().out
    # compare reads a group like a run (the mean over its seeds)
    assert main(["compare", str(two_runs / "base"), str(grp), "--bootstrap", "50", "--out",
                 str(two_runs / "cmp.json")]) == 0
    res = json.loads((two_runs / "cmp.json").read_text())["comparisons"][0]
    assert res["map_run"] == pytest.approx(doc["metrics"]["test_map"]["mean"], abs=1e-4)


def test_runs_errors(tmp_path, two_runs, capsys):
    assert main(["runs", str(tmp_path / "missing")]) == 2
    assert main(["runs", str(two_runs / "base"), "--baseline", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "notes.txt").write_text("mine")
    assert main(["train", *FAST, "data.root=x", f"out={tmp_path / 'stray'}", "--seeds", "0", "1"]) == 2
    assert "notes.txt" in capsys.readouterr().err
