"""The attentive head: shapes, attention weights, order invariance, learning, config errors, size."""

from __future__ import annotations

import pytest
import torch

from cvsjepa.config import HeadConfig
from cvsjepa.errors import ConfigError
from cvsjepa.heads import AttentiveHead, build_head

D, N, B = 32, 20, 4


def tokens(b: int = B, n: int = N, d: int = D, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num_queries", [1, 2, 3])
@pytest.mark.parametrize("depth", [1, 4])
def test_shapes_and_attention(num_queries, depth):
    torch.manual_seed(0)
    head = AttentiveHead(D, num_classes=3, num_heads=4, num_queries=num_queries, depth=depth,
                         pooler_mlp_ratio=4.0 if depth == 4 else 0.0, mlp_hidden=16).eval()
    x = tokens()
    logits = head(x)
    assert logits.shape == (B, 3)
    logits2, attn = head(x, return_attention=True)
    assert attn.shape == (B, 4, num_queries, N)
    assert torch.allclose(attn.sum(-1), torch.ones(B, 4, num_queries), atol=1e-5)
    assert (attn >= 0).all()
    assert torch.equal(logits, logits2)  # asking for the weights does not change the logits


@pytest.mark.parametrize("num_queries", [1, 3])
def test_folded_cross_attention_is_the_textbook_one(num_queries):
    """Keys and values folded into per-(query, head) vectors (attentive.py) give what projecting every
    token to keys and values gives: same queries out, same attention weights, same gradients."""
    torch.manual_seed(0)
    head = AttentiveHead(D, num_heads=4, num_queries=num_queries, pooler_mlp_ratio=2.0, mlp_hidden=16)
    with torch.no_grad():  # non-trivial LayerNorm affine and biases, which the fold must carry
        for m in head.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.Linear)):
                m.bias.normal_(0, 0.3)
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1, 0.3)
    x = tokens()
    pool = head.pool
    query = head.query.expand(B, -1, -1)
    out, attn_ref = pool.xattn(query, pool.norm_x(x), return_attention=True)  # textbook: keys/values of every token
    ref = query + out
    ref = ref + pool.mlp(pool.norm_q(ref))
    got, attn = pool(head.query[0], x, return_attention=True)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn, attn_ref, atol=1e-6, rtol=1e-5)
    params = [p for n, p in head.named_parameters() if n != "pool.xattn.k.bias"]  # softmax ignores a shift
    g_ref = torch.autograd.grad(head.classify(ref).square().sum(), params)
    g = torch.autograd.grad(head(x).square().sum(), params)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_head_bank_computes_each_heads_logits_and_gradients():
    from cvsjepa.heads.bank import HeadBank
    from cvsjepa.heads.linear import MeanPoolHead

    heads = []
    for seed, kw in enumerate([{}, {}, {"num_queries": 3}, {"depth": 2}]):
        torch.manual_seed(seed)
        heads.append(AttentiveHead(D, num_heads=4, mlp_hidden=16, **kw))
    heads.append(MeanPoolHead(D))
    bank = HeadBank(heads)
    x = tokens().half()  # as read from the store
    members = [0, 2, 3, 4]  # head 1 is not active
    got = bank(x, members)
    for i, logits in zip(members, got):
        torch.testing.assert_close(logits, heads[i](x), atol=1e-6, rtol=1e-5)
    sum(out.square().sum() for out in got).backward()
    assert all(p.grad is None for p in heads[1].parameters())  # an inactive head is left alone
    for i in members:
        mine = [p.grad.clone() for p in heads[i].parameters()]
        heads[i].zero_grad()
        heads[i](x).square().sum().backward()
        for a, p in zip(mine, heads[i].parameters()):
            torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-4)


def test_query_modes():
    assert AttentiveHead(D, num_heads=4, num_queries=1).query_mode == "single"
    per = AttentiveHead(D, num_heads=4, num_queries=3, mlp_hidden=8)
    assert per.query_mode == "per_class" and per.classifier.fc2.out_features == 1  # shared MLP -> 1 logit
    assert AttentiveHead(D, num_heads=4, num_queries=5).query_mode == "mean"


def test_pooled_logits_ignore_token_order():
    head = AttentiveHead(D, num_heads=4, depth=1).eval()
    x = tokens()
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(head(x), head(x[:, perm]), atol=1e-5)
    _, a = head(x, return_attention=True)
    _, a_perm = head(x[:, perm], return_attention=True)
    assert torch.allclose(a[..., perm], a_perm, atol=1e-6)  # the weights move with their tokens


@pytest.mark.parametrize("num_queries", [1, 3])
def test_learns_a_toy_separable_problem(num_queries):
    # Criterion c is positive when "marker" direction c appears in one (random) token of the clip:
    # solvable only by attending to the right token, which is what the pooling is for.
    g = torch.Generator().manual_seed(0)
    n_samples = 64
    x = torch.randn(n_samples, N, D, generator=g) * 0.5
    y = (torch.rand(n_samples, 3, generator=g) < 0.5).float()
    markers = torch.eye(D)[:3] * 4.0
    for i in range(n_samples):
        for c in range(3):
            if y[i, c]:
                x[i, torch.randint(N, (1,), generator=g)] += markers[c]
    torch.manual_seed(0)
    head = AttentiveHead(D, num_heads=4, num_queries=num_queries, mlp_hidden=32)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    with torch.no_grad():
        start = loss_fn(head(x), y).item()
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn(head(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * start, (start, loss.item())


def test_fp16_tokens_from_the_store_are_accepted():
    head = AttentiveHead(D, num_heads=4)
    assert head(tokens().half()).dtype == torch.float32


def test_bad_inputs_and_configs():
    with pytest.raises(ConfigError, match="head.num_heads=5"):
        AttentiveHead(D, num_heads=5)
    with pytest.raises(ConfigError, match="head.num_heads=5"):
        build_head(HeadConfig(num_heads=5), embed_dim=D)
    for kw, key in ((dict(num_queries=0), "head.num_queries"), (dict(depth=0), "head.depth"),
                    (dict(mlp_hidden=-1), "head.mlp_hidden"), (dict(dropout=1.0), "head.dropout"),
                    (dict(pooler_mlp_ratio=-1.0), "head.pooler_mlp_ratio")):
        with pytest.raises(ConfigError, match=key):
            AttentiveHead(D, num_heads=4, **kw)
    with pytest.raises(ConfigError, match="head.type='gru'"):
        build_head(HeadConfig(type="gru"), embed_dim=D)
    with pytest.raises(ValueError, match=r"tokens \[B, N, 32\]"):
        AttentiveHead(D, num_heads=4)(torch.zeros(2, N, 16))


def test_build_head_from_config_and_linear_probe_shape():
    head = build_head(HeadConfig(num_heads=4, num_queries=3, depth=2, mlp_hidden=0), embed_dim=D, num_classes=3)
    assert isinstance(head, AttentiveHead) and head.depth == 2 and len(head.blocks) == 1
    assert head.classifier.fc1 is None and head.classifier.fc2.in_features == D  # mlp_hidden=0: one Linear
    assert head(tokens()).shape == (B, 3)


def test_init_follows_the_official_probe():
    torch.manual_seed(0)
    head = AttentiveHead(256, num_heads=8, depth=4, pooler_mlp_ratio=4.0)
    assert all((m.bias == 0).all() for m in head.modules() if isinstance(m, torch.nn.Linear))
    assert abs(head.pool.xattn.q.weight.std().item() - 0.02) < 0.002
    # block i's output projections are scaled by 1/sqrt(2 i)
    ratio = head.blocks[0].attn.proj.weight.std() / head.blocks[2].attn.proj.weight.std()
    assert abs(ratio.item() - 3 ** 0.5) < 0.1


def test_exp2_head_param_count():
    """Experiment 2's head at ViT-L width: 8 heads, 1 query, no pooler MLP, MLP 512 -> 3.

    Ours: query 1,024 + LayerNorm(tokens) 2,048 + q/k/v/proj 4 x 1,049,600 + LayerNorm(query) 2,048
    + Linear(1024, 512) 524,800 + Linear(512, 3) 1,539 = 4,729,859 (4.73 M). The research log
    reports ~5.65-5.7 M for its head; its exact layer list is not in the log, so this does not try
    to match it.
    """
    head = build_head(HeadConfig(num_heads=8, num_queries=1, depth=1, pooler_mlp_ratio=0.0, mlp_hidden=512),
                      embed_dim=1024)
    n = sum(p.numel() for p in head.parameters())
    print(f"exp2 head params at D=1024: {n:,}")
    assert n == 1024 + 2 * 1024 + 4 * (1024 * 1024 + 1024) + 2 * 1024 + (1024 * 512 + 512) + (512 * 3 + 3)
    assert 4.5e6 < n < 6e6


# ---- head.pos_embed ---------------------------------------------------------------------------------

def test_learned_positions_start_as_none_and_make_the_head_see_where():
    from cvsjepa.heads import TokenLayout

    layout = TokenLayout(views=3, levels=1, time=2, rows=2, cols=2)  # N = 24
    torch.manual_seed(0)
    plain = build_head(HeadConfig(num_heads=4, mlp_hidden=16), embed_dim=D)
    torch.manual_seed(0)
    placed = build_head(HeadConfig(num_heads=4, mlp_hidden=16, pos_embed="learned"), embed_dim=D, layout=layout)
    tokens = torch.randn(2, layout.num_tokens, D, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(placed(tokens), plain(tokens))  # zero-initialised: the same head at step 0
    assert {n for n, _ in placed.pos.tables.named_parameters()} == {"view", "time", "row", "col"}  # 1 level: no table
    perm = torch.randperm(layout.num_tokens, generator=torch.Generator().manual_seed(2))
    blind = (plain(tokens[:, perm]) - plain(tokens)).abs().max()
    assert blind < 1e-6  # depth 1 without positions: order-blind
    with torch.no_grad():
        for p in placed.pos.tables.values():
            p.normal_(0, 1.0)
    assert (placed(tokens[:, perm]) - placed(tokens)).abs().max() > 1e-4  # now it knows where
    with pytest.raises(ValueError, match="positions are for 24 tokens"):
        placed(tokens[:, :12])
    with pytest.raises(ConfigError, match="token layout"):
        build_head(HeadConfig(num_heads=4, pos_embed="learned"), embed_dim=D)


def test_a_head_with_positions_reloads_from_its_checkpoint(tmp_path):
    from cvsjepa.backbones import build_backbone
    from cvsjepa.checkpoint import load_classifier, save_classifier
    from cvsjepa.config import load_config
    from cvsjepa.model import CVSClassifier, token_layout

    cfg = load_config(None, ["backbone=tiny", "data.frames=4", "head.num_heads=4", "head.pos_embed=learned"])
    bb = build_backbone(cfg.backbone).freeze()
    head = build_head(cfg.head, bb.embed_dim, layout=token_layout(cfg, bb))
    with torch.no_grad():
        head.pos.tables["row"].normal_()
    save_classifier(tmp_path / "ck", CVSClassifier(bb, head), cfg)
    model, _, _ = load_classifier(tmp_path / "ck")
    torch.testing.assert_close(model.head.pos.tables["row"], head.pos.tables["row"])
