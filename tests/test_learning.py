"""Learning on a dataset of the project's own size with the shipped settings and the default budget
(issue 21): no epoch count tuned to the data, yet most of the oracle mAP."""

from __future__ import annotations

import json

import pytest

SEED = 5  # a dataset and initialisation not used by docs/benchmarks.md (seeds 0-4)


@pytest.mark.slow
def test_the_default_budget_learns_200_keyframes_to_most_of_the_oracle(tmp_path):
    from cvsjepa.config import load_config
    from cvsjepa.data.synth import write_synthetic_dataset
    from cvsjepa.demo import DEMO_OVERRIDES
    from cvsjepa.features.extract import extract
    from cvsjepa.train.classifier import train

    assert not any(o.split("=")[0] in ("train.epochs", "train.steps", "train.min_steps", "train.patience",
                                       "train.warmup_epochs", "train.warmup_steps") for o in DEMO_OVERRIDES)
    root = tmp_path / "data"
    # the anatomy inside the centre crop (outside_crop=False): this tests the budget alone. With the
    # default framing the test mAP of 16 train videos swings between 0.43 and 0.82 of the oracle from
    # one generated dataset to the next, whatever the budget (docs/benchmarks.md, "Field of view")
    write_synthetic_dataset(root, seed=SEED, videos=(16, 6, 12), progress=False, outside_crop=False,
                            occlusions=False)
    n_train = len(json.loads((root / "train" / "annotation_ds_coco.json").read_text())["images"])
    assert 180 <= n_train <= 240, n_train  # the size of the project's own synth
    cfg = load_config(None, [*DEMO_OVERRIDES, f"data.root={root}", f"out={tmp_path / 'run'}", f"seed={SEED}",
                             f"features.store={tmp_path / 'store'}"])
    extract(cfg, progress=False)
    summary = train(cfg, progress=False).summary
    oracle = json.loads((root / "oracle.json").read_text())["test"]["map"]
    budget = summary["budget"]["1"]
    assert budget["extended"] and budget["steps_run"] >= 500  # the step floor sized the run, not epochs
    assert summary["test_map"] >= 0.7 * oracle, (summary["test_map"], oracle)

