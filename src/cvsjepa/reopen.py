"""Re-open a finished run to use its best checkpoint again (``evaluate``, ``diagnose``): the config
it was trained with, where its data is now, the device and batch size to run it with.

The commands share these options (``commands/_common.add_reopen_args``) instead of each declaring
its own ``--device``/``--batch-size``/``--data-root``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .checkpoint import META_FILE, load_classifier, read_checkpoint_meta
from .config import RunConfig, from_dict
from .rundir import RunDir, with_saved_splits
from .runtime import configure_threads, resolve_device


@dataclass(frozen=True)
class Reopen:
    data_root: str | None = None  # the dataset, when it moved since training (None: the run's data.root)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int | None = None  # clips per forward; None: the run's train.batch_size
    progress: bool = True  # progress bars
    backbone_path: str | None = None  # the backbone weights, when they moved since training (checked by fingerprint)

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def batch(self, cfg: RunConfig) -> int:
        return self.batch_size or cfg.train.batch_size


def _relocate(cfg: RunConfig, reopen: Reopen, run_dir: str | Path) -> RunConfig:
    """``data.root`` moved per ``reopen``; the run's recorded split assignment (SAGES ``splits.json``)
    as ``data.splits_file``, so a drawn split is reused, never drawn again."""
    if reopen.data_root:
        cfg = replace(cfg, data=replace(cfg.data, root=str(reopen.data_root)))
    return with_saved_splits(cfg, run_dir)


def run_config(run_dir: str | Path, reopen: Reopen = Reopen()) -> tuple[RunConfig, dict]:
    """The config a run's best checkpoint was trained with (relocated per ``reopen``) and the
    checkpoint's metadata; a clear error when ``run_dir`` has no best checkpoint."""
    ckpt = RunDir.open(run_dir).require_best()
    meta = read_checkpoint_meta(ckpt)
    return _relocate(from_dict(meta["config"], where=str(ckpt / META_FILE)), reopen, run_dir), meta


def load_run(run_dir: str | Path, reopen: Reopen = Reopen(), device: torch.device | None = None):
    """``(model, cfg, meta)`` of a run's best checkpoint in eval mode, relocated per ``reopen``."""
    ckpt = RunDir.open(run_dir).require_best()
    configure_threads()
    model, cfg, meta = load_classifier(ckpt, device or reopen.torch_device(), backbone_path=reopen.backbone_path)
    return model, _relocate(cfg, reopen, run_dir), meta
