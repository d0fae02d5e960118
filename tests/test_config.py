import pytest

from cvsjepa.config import RunConfig, all_keys, from_dict, load_config, parse_overrides, to_dict
from cvsjepa.errors import ConfigError


def test_defaults_are_exp2_values():
    cfg = load_config()
    assert (cfg.head.num_heads, cfg.head.mlp_hidden, cfg.train.batch_size, cfg.train.lr) == (8, 512, 32, 5e-4)


def test_yaml_base_chain_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\n  lr: 0.1\nhead:\n  num_heads: 2\n")
    (tmp_path / "exp.yaml").write_text("base: base.yaml\ntrain:\n  lr: 0.2\n")
    cfg = load_config(tmp_path / "exp.yaml", ["train.epochs=3", "backbone=tiny", "data.criteria=[a,b,c]"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.2 and cfg.head.num_heads == 2
    assert cfg.backbone.preset == "tiny" and cfg.data.criteria == ["a", "b", "c"]


def test_backbone_shorthand_drops_stale_path():
    cfg = load_config(None, ["backbone.path=/somewhere", "backbone=tiny"])
    assert cfg.backbone.preset == "tiny" and cfg.backbone.path == ""


@pytest.mark.parametrize("override,needle", [
    ("train.epoch=2", "train.epochs"),          # misspelt leaf: names it, suggests the right one
    ("trian.epochs=2", "trian.epochs"),         # misspelt group
    ("head.heads=4", "head.heads"),
    ("bogus=1", "bogus"),
])
def test_unknown_key_is_named(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "train.epochz" in str(e.value) and "bad.yaml" in str(e.value) and "train.epochs" in str(e.value)


@pytest.mark.parametrize("override", ["train.epochs=abc", "data.target=fuzzy", "train.epochs=0",
                                      "train.lr=-1", "noequalsign"])
def test_bad_values(override):
    with pytest.raises(ConfigError):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "old.yaml").write_text("version: 0\n")
    with pytest.raises(ConfigError, match="version"):
        load_config(tmp_path / "old.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="itself"):
        load_config(tmp_path / "loop.yaml")


def test_round_trip_through_dict():
    cfg = load_config(None, ["train.epochs=4", "backbone=tiny"])
    assert from_dict(to_dict(cfg)) == cfg


def test_parse_overrides_types():
    assert parse_overrides(["a=1", "b=[1,5,1]", "c=x", "d=1e-4", "e="]) == {
        "a": 1, "b": [1, 5, 1], "c": "x", "d": 1e-4, "e": ""}


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted(Path(__file__).parent.parent.joinpath("configs").glob("exp*.yaml")):
        cfg = load_config(path, ["backbone=tiny", "data.root=/x"])
        assert isinstance(cfg, RunConfig) and cfg.name == path.stem


def test_all_keys_lists_leaves():
    keys = dict(all_keys())
    assert keys["train.epochs"] == 15 and "data.root" in keys and "train" not in keys


def test_every_key_has_a_one_line_description_from_its_field_comment():
    from cvsjepa.config_docs import key_docs

    docs = key_docs()
    assert sorted(docs) == sorted(k for k, _ in all_keys())
    assert all(d and "\n" not in d for d in docs.values())
    # a comment at the end of the field's line, or the comment lines right above it (joined)
    assert docs["train.grad_clip"] == "max gradient norm; 0 = off"
    assert docs["data.val_fraction"].startswith("SAGES: share of the train videos") and "splits.json" in docs[
        "data.val_fraction"]


def test_config_keys_prints_descriptions_and_choices(capsys):
    from cvsjepa.cli import main

    assert main(["config-keys", "train.logg"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("train.loggers = ['csv']  # experiment trackers")
    assert out[0].endswith("[choices: csv | tensorboard | mlflow | wandb]")
    assert main(["config-keys", "nothing.like.this"]) == 2


def test_a_bad_tracker_name_is_one_line():
    import pytest

    from cvsjepa.errors import ConfigError

    with pytest.raises(ConfigError, match="each item of train.loggers must be one of csv, tensorboard, mlflow, wandb"):
        load_config(overrides=["train.loggers=[csv,neptune]"])


def test_train_and_sweep_print_the_config_differences_at_the_start(caplog, tmp_path):
    import logging

    from cvsjepa.config import changes_from_defaults
    from cvsjepa.rundir import LOG_FILE, RunDir
    from cvsjepa.train.build import run_log

    cfg = load_config(overrides=["backbone=tiny", f"data.root={tmp_path}", "train.epochs=2", "train.device=cpu"])
    assert changes_from_defaults(cfg) == ["backbone.preset = 'tiny'  (default 'vitl')",
                                          f"data.root = '{tmp_path}'  (default '')",
                                          "train.device = 'cpu'  (default 'auto')", "train.epochs = 2  (default 15)"]
    logger = logging.getLogger("cvsjepa")
    logger.addHandler(caplog.handler)
    try:
        with run_log(RunDir(tmp_path), cfg):  # train and sweep both log into their run directory through it
            pass
    finally:
        logger.removeHandler(caplog.handler)
    for text in (caplog.text, (tmp_path / LOG_FILE).read_text()):
        assert "config (differences from the defaults):\n  backbone.preset = 'tiny'" in text
        assert "train.epochs = 2  (default 15)" in text
