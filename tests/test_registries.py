"""Every registered choice works, parametrized over the registries themselves (a new family, head or
loss is tested the day it is registered), and each registry agrees with the config's typed choices."""

from __future__ import annotations

from typing import get_args

import pytest
import torch

from cvsjepa import CRITERIA
from cvsjepa.backbones import build_backbone
from cvsjepa.backbones.registry import FAMILIES
from cvsjepa.config import (BackboneConfig, BackboneFamily, DecisionPolicy, HeadConfig, HeadType, LossConfig,
                            LossType, PosEmbed, SecondPoolerKind, SegDecoderType, StoreDtype, TemporalHeadType)
from cvsjepa.evaluate.operating_points import DEFAULT_TARGETS, POLICIES
from cvsjepa.features.encoding import ENCODINGS
from cvsjepa.heads import HEADS, TokenLayout, build_head, head_input
from cvsjepa.heads.pooler import SecondPooler
from cvsjepa.heads.segmentation import SEG_DECODERS
from cvsjepa.train.losses import build_loss

def test_registries_match_the_config_choices():
    assert set(FAMILIES) == set(get_args(BackboneFamily))
    assert set(HEADS) == set(get_args(HeadType))
    assert set(ENCODINGS) == set(get_args(StoreDtype))
    assert {build_loss(LossConfig(type=t)).kind for t in get_args(LossType)} == set(get_args(LossType))
    assert set(POLICIES) == set(get_args(DecisionPolicy)) == set(DEFAULT_TARGETS)
    assert set(SEG_DECODERS) == set(get_args(SegDecoderType))
    temporal = {t for t in HEADS if head_input(build_head(HeadConfig(type=t, num_heads=4), 32)) == "history"}
    assert temporal == set(get_args(TemporalHeadType))  # the config's temporal types read histories
    assert {SecondPooler(k, 32, build_head(HeadConfig(num_heads=4), 32) if k == "run" else None).kind
            for k in get_args(SecondPoolerKind)} == set(get_args(SecondPoolerKind))


def head_inputs(head, batch: int, n: int, dim: int, seed: int = 0) -> tuple:
    """What ``head`` reads: tokens ``[B, n, D]``, or (temporal heads) a history over its own positions
    with the first of them masked for the first sample (before its video began)."""
    g = torch.Generator().manual_seed(seed)
    if head_input(head) == "tokens":
        return (torch.randn(batch, n, dim, generator=g),)
    length = len(head.offsets)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, : length // 2] = False
    return torch.randn(batch, length, dim, generator=g) * mask[..., None], mask


@pytest.mark.parametrize("pos_embed", get_args(PosEmbed))
@pytest.mark.parametrize("head_type", sorted(HEADS))
def test_every_head_builds_with_every_position_choice(head_type, pos_embed):
    layout = TokenLayout(views=1, levels=1, time=3, rows=2, cols=2)
    head = build_head(HeadConfig(type=head_type, num_heads=4, mlp_hidden=16, pos_embed=pos_embed), embed_dim=32,
                      layout=layout)
    assert head(*head_inputs(head, 2, layout.num_tokens, 32)).shape == (2, len(CRITERIA))


@pytest.mark.parametrize("decoder", sorted(SEG_DECODERS))
def test_every_seg_decoder_maps_the_keyframe_tokens_to_pixels(decoder):
    dec = SEG_DECODERS[decoder](16, 5, (2, 2, 2), 32, 16, levels=1)
    out = dec(torch.randn(2, 8, 16))
    assert out.shape == (2, 5, 32, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_tiny_preset_keeps_the_contract(family):
    bb = build_backbone(BackboneConfig(name=family, preset="tiny")).freeze()
    frames = 2 * bb.tubelet_size if bb.tubelet_size > 1 else 2
    for t in (frames, 4):  # some families only run at their own clip length
        video = torch.randn(2, t, 3, bb.crop_size, bb.crop_size, generator=torch.Generator().manual_seed(0))
        try:
            tokens = bb.extract(video)
        except ValueError:
            continue
        assert tokens.shape == (2, bb.num_tokens(t), bb.embed_dim) and torch.isfinite(tokens).all()
        assert "random" in bb.name  # a tiny random model is named as such
        return
    pytest.fail(f"{family}-tiny ran at neither {frames} nor 4 frames")


@pytest.mark.parametrize("head_type", sorted(HEADS))
def test_every_head_maps_tokens_to_criteria_and_learns(head_type):
    head = build_head(HeadConfig(type=head_type, num_heads=4, mlp_hidden=16, temporal_dim=32, history_seconds=20,
                                 history_dense=8, history_stride=3), embed_dim=32)
    inputs = head_inputs(head, 5, 12, 32)
    logits = head(*inputs)
    assert logits.shape == (5, len(CRITERIA)) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters() if p.requires_grad)
    out, attn = head(*inputs, return_attention=True)  # every head can explain itself to diagnose
    assert torch.allclose(out, logits) and attn.shape[0] == 5 and attn.shape[-1] == inputs[0].shape[1]
