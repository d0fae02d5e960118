"""The arguments of a small, fast training run on the session's synthetic data (tiny random
backbone, small head): shared by every test module that needs a trained run."""

from __future__ import annotations

from pathlib import Path


def tiny_train_args(root: Path, out: Path, frames: int = 4, epochs: int = 2) -> list[str]:
    return ["backbone=tiny", f"data.root={root}", f"out={out}", f"data.frames={frames}", "head.num_heads=4",
            "head.mlp_hidden=32", "train.batch_size=8", f"train.epochs={epochs}", "train.lr=1e-3",
            "train.patience=0", "train.min_steps=0"]


def train_tiny_run(root: Path, out: Path, frames: int = 4, epochs: int = 2) -> Path:
    """Train one such run into ``out`` (the module fixtures of evaluate and diagnose tests)."""
    from cvsjepa.cli import main

    assert main(["train", *tiny_train_args(root, out, frames=frames, epochs=epochs), "--no-progress"]) == 0
    return out
