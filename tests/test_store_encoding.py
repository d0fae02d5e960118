"""Compact feature-store encodings (features.dtype=int8 / float8_e4m3): error bounds, non-finite
tokens, and a store written and read back through them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvsjepa.config import load_config
from cvsjepa.features import FeatureStore, StoreKeyError, open_store_splits
from cvsjepa.features.encoding import SCALE_BYTES, encoding_of
from cvsjepa.features.extract import extract


def some_tokens() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 64, generator=g) * torch.logspace(-3, 2, 7).view(1, 7, 1)  # scales differ per token
    x[0, 0] = 0.0  # an all-zero token (skipped rows are zeros)
    return x


def roundtrip(name: str, x: torch.Tensor) -> torch.Tensor:
    enc = encoding_of(name)
    stored = enc.encode(x)
    assert stored.dtype == np.dtype(enc.disk) and stored.shape == (*x.shape[:-1], enc.stored_dim(x.shape[-1]))
    return enc.decode(torch.from_numpy(stored))


def test_int8_error_is_at_most_half_a_step_of_each_tokens_scale():
    x = some_tokens()
    y = roundtrip("int8", x)
    assert y.dtype == torch.float32
    step = x.abs().amax(-1, keepdim=True) / 127
    assert ((y - x).abs() <= step / 2 * (1 + 1e-5) + 1e-12).all()
    top = x.abs().argmax(-1, keepdim=True)  # each token's largest value comes back exactly
    torch.testing.assert_close(y.gather(-1, top), x.gather(-1, top), rtol=1e-6, atol=0)
    assert (y[0, 0] == 0).all()


def test_float8_keeps_three_mantissa_bits_relative_to_each_value():
    x = some_tokens()
    y = roundtrip("float8_e4m3", x)
    scale = x.abs().amax(-1, keepdim=True) / 448
    normal = x.abs() >= scale * 2 ** -6  # e4m3's smallest normal, in units of the token's scale
    assert ((y - x).abs()[normal] <= x.abs()[normal] / 16 * (1 + 1e-5)).all()
    assert ((y - x).abs()[~normal] <= (scale * 2 ** -10).expand_as(x)[~normal] * (1 + 1e-5)).all()  # subnormal step / 2
    assert (y[0, 0] == 0).all()


@pytest.mark.parametrize("name", ["int8", "float8_e4m3"])
def test_a_non_finite_token_decodes_to_nan_not_to_numbers(name):
    x = some_tokens()
    x[1, 2, 5], x[2, 3, 0] = float("nan"), float("inf")
    y = roundtrip(name, x)
    assert torch.isnan(y[1, 2]).all() and torch.isnan(y[2, 3]).all()
    finite = torch.ones(x.shape[:2], dtype=torch.bool)
    finite[1, 2] = finite[2, 3] = False
    assert torch.isfinite(y[finite]).all()


def test_plain_encodings_are_the_dtype_itself():
    x = some_tokens()
    for name, dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        y = roundtrip(name, x)
        assert y.dtype == dtype and torch.equal(y, x.to(dtype))


def test_an_int8_store_is_written_keyed_and_read_back_as_float32(synth_root, tmp_path):
    args = ["backbone=tiny", f"data.root={synth_root}", "data.frames=4", "data.limit_per_split=6",
            "features.splits=[val]", "features.shard_clips=4", "head.num_heads=4", "data.val_split=val"]
    full, small = tmp_path / "fp32", tmp_path / "int8"
    extract(load_config(None, [*args, f"features.store={full}", "features.dtype=float32"]), progress=False)
    cfg = load_config(None, [*args, f"features.store={small}", "features.dtype=int8"])
    extract(cfg, progress=False)
    store = FeatureStore.open(small)
    n, d = store.layout["tokens_per_clip"], store.layout["embed_dim"]
    assert store.key["dtype"] == "int8" and store.layout["bytes_per_clip"] == n * (d + SCALE_BYTES)
    assert np.load(store.root / store.splits["val"]["shards"]["0"]["file"]).shape == (4, 1, n, d + SCALE_BYTES)
    ref = FeatureStore.open(full).reader("val")
    split = open_store_splits(cfg, roles=("val",), check_weights=False)["val"]
    batch = next(iter(split.loader(6, False, 0)))
    want = torch.stack([ref.read(r) for r in split.dataset.rows])
    assert batch["tokens"].dtype == torch.float32 and batch["tokens"].shape == want.shape
    step = want.abs().amax(-1, keepdim=True) / 127
    assert ((batch["tokens"] - want).abs() <= step / 2 * (1 + 1e-5)).all()
    # tokens of another encoding are never mixed in
    with pytest.raises(StoreKeyError, match="features.dtype"):
        open_store_splits(load_config(None, [*args, f"features.store={small}"]), roles=("val",), check_weights=False)
