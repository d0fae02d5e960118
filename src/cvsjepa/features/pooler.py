"""Which per-second pooler ``features.second_pooler`` names, and the key of the embeddings it makes.

* ``mean``: the mean of the clip's tokens; key ``{"pooler": "mean"}``.
* ``run``: the head of the stage-1 run ``features.pooler_run`` (its best checkpoint, every file's
  sha256 checked), up to its classifier; key ``{"pooler": "run", "weights_sha256": ...}``: the
  checkpoint's weights hash, so embeddings pooled by another stage-1 run are never read as these.

The stage-1 run must read the very tokens extraction makes: same backbone weights (fingerprint),
frames, stride, view and layers, a frozen backbone (no LoRA or unfrozen blocks, no stage 2), and a
clip head (attentive or linear).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import CONTENT_KEY, META_FILE, WEIGHTS_FILE, read_checkpoint_meta, verify_content
from ..config import RunConfig, from_dict, is_temporal, to_dict
from ..data.transforms import view_count
from ..errors import ConfigError
from ..heads import build_head
from ..heads.pooler import SecondPooler
from ..io import load_safetensors, sha256_file
from ..model import token_layout
from ..rundir import locate_checkpoint

SECONDS_VERSION = 1  # bump when what a per-second embedding is changes (its clip, its pooling)


def second_pooler(cfg: RunConfig, backbone) -> tuple[SecondPooler, dict]:
    """``(pooler, key)`` for ``cfg.features`` on ``backbone`` (the frozen extraction backbone)."""
    if cfg.features.second_pooler == "mean":
        return SecondPooler("mean", backbone.embed_dim), {"pooler": "mean", "version": SECONDS_VERSION}
    if not cfg.features.pooler_run:
        raise ConfigError("features.second_pooler=run needs features.pooler_run=RUN (the stage-1 run whose head "
                          "pools each second)")
    pooler = stage1_pooler(Path(cfg.features.pooler_run), cfg, backbone)
    return pooler, {"pooler": "run", "weights_sha256": pooler.stage1["weights_sha256"], "version": SECONDS_VERSION}


def stage1_pooler(path: Path, cfg: RunConfig, backbone) -> SecondPooler:
    """The head of the stage-1 run at ``path`` as a frozen :class:`SecondPooler` on ``backbone``."""
    run, ckpt = locate_checkpoint(path)
    meta = read_checkpoint_meta(ckpt)
    verify_content(ckpt, meta)
    s1 = from_dict(meta["config"], where=str(ckpt / META_FILE))
    where = f"features.pooler_run={path}"
    if is_temporal(s1.head.type):
        raise ConfigError(f"{where} is a temporal run (head.type={s1.head.type}); the per-second pooler is a clip "
                          f"model's head (attentive or linear)")
    if s1.adapt.mode != "frozen" or s1.stage2.enabled:
        raise ConfigError(f"{where} adapted its backbone (adapt.mode={s1.adapt.mode}, stage2.enabled="
                          f"{s1.stage2.enabled}): its head reads other tokens than the frozen backbone extracts; "
                          f"use a frozen run as stage 1")
    if meta.get("backbone_fingerprint") and meta["backbone_fingerprint"] != backbone.weights_fingerprint():
        raise ConfigError(f"{where} was trained on other backbone weights than this extraction's "
                          f"({cfg.backbone.path or cfg.backbone.preset}); use the same backbone")
    for key, ours, theirs in (("data.frames", cfg.data.frames, s1.data.frames), ("data.stride", cfg.data.stride,
                              s1.data.stride), ("data.view", cfg.data.view, s1.data.view),
                              ("backbone.layers", list(cfg.backbone.layers), list(s1.backbone.layers))):
        if ours != theirs:
            raise ConfigError(f"{where} was trained with {key}={theirs!r}, this run has {ours!r}: its head would read "
                              f"other clips; use the stage-1 run's {key}")
    layout = token_layout(s1, backbone)
    head = build_head(s1.head, backbone.embed_dim, layout=layout)
    tensors = {k[len("head."):]: v for k, v in load_safetensors(ckpt / WEIGHTS_FILE).items() if k.startswith("head.")}
    try:
        head.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"{ckpt / WEIGHTS_FILE} does not hold the head its config describes ({str(e)[:200]})") from e
    weights_sha = (meta.get(CONTENT_KEY) or {}).get(WEIGHTS_FILE) or sha256_file(ckpt / WEIGHTS_FILE)
    stage1 = {"run": str(run.path.resolve()) if run is not None else None, "checkpoint": str(ckpt.resolve()),
              "weights_sha256": weights_sha, "head_type": s1.head.type, "epoch": meta.get("epoch"),
              "val_map": meta.get("val_map")}
    pooler = SecondPooler("run", backbone.embed_dim, head, to_dict(s1)["head"], layout, stage1)
    n = backbone.num_tokens(cfg.data.frames) * view_count(cfg.data.view)
    try:  # the head must take the backbone's own tokens (a head with positions for 2x2-pooled ones cannot)
        pooler(torch.zeros(1, n, backbone.embed_dim))
    except ValueError as e:
        raise ConfigError(f"{where}: its head cannot pool this backbone's {n} tokens per clip ({e})") from e
    return pooler
