import csv
import json

import pytest

from cvsjepa.cli import main

FAST = ["backbone=tiny", "data.frames=4", "head.num_heads=4", "head.mlp_hidden=32", "train.batch_size=8",
        "train.epochs=1", "--no-progress"]


@pytest.fixture(scope="module")
def two_runs(synth_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, extra in (("base", []), ("smooth", ["loss.label_smoothing=0.1"])):
        assert main(["train", *FAST, f"data.root={synth_root}", f"out={root / name}", f"name={name}", *extra]) == 0
    return root


def test_runs_table(two_runs, tmp_path, capsys):
    assert main(["runs", str(two_runs), "--baseline", "base", "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "base" in out and "smooth" in out and "best_val_map" in out
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    by = {r["experiment"]: r for r in rows}
    maps = {n: json.loads((two_runs / n / "summary.json").read_text())["best_val_map"] for n in ("base", "smooth")}
    assert float(by["base"]["delta_vs_baseline"]) == 0
    assert float(by["smooth"]["delta_vs_baseline"]) == pytest.approx(maps["smooth"] - maps["base"])
    assert (tmp_path / "t.md").read_text().count("\n") == 4  # header, rule, 2 rows


def test_runs_errors(tmp_path, two_runs, capsys):
    assert main(["runs", str(tmp_path / "missing")]) == 2
    assert main(["runs", str(two_runs / "base"), "--baseline", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
