"""How the feature store encodes tokens on disk (``features.dtype``), and how the reader decodes them.

====================  ==========================================  =========================  ==============
``features.dtype``    one token of D values on disk               read back as               bytes / token
====================  ==========================================  =========================  ==============
``float16``           D x float16                                 float16 (as stored)        2 D
``bfloat16``          D x bfloat16 (kept as uint16 bits)          bfloat16 (as stored)       2 D
``float32``           D x float32                                 float32                    4 D
``int8``              D x int8 codes + float32 scale              float32 = code x scale     D + 4
``float8_e4m3``       D x float8 e4m3 (fn) codes + float32 scale  float32 = code x scale     D + 4
====================  ==========================================  =========================  ==============

**Scaled encodings** (``int8``, ``float8_e4m3``): each token ``x [D]`` gets its own scale
``s = max_i |x_i| / q_max`` (``q_max`` = 127 for int8, 448 for e4m3; ``s = 1`` for an all-zero
token) and is stored as codes ``round(x / s)`` (int8; float8: round to nearest e4m3), followed by
``s`` as 4 float32 bytes: a shard holds uint8 ``[clips, views, N, D + 4]``, so one file still holds
one shard (atomic write, one checksum). Decoding is ``code x s`` in float32: the largest value of
each token is exact, the others are off by at most ``s / 2`` (int8) or 1/16 of their magnitude
(e4m3, 3 mantissa bits). A non-finite token gives a non-finite scale, and so decodes to NaN
(never to plausible numbers). The accuracy cost on synthetic data is measured by
``benchmarks/store_encodings.py`` (docs/benchmarks.md).

The encoding is the store key's ``dtype`` field: stores of other encodings are never mixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SCALE_BYTES = 4  # the float32 scale after each token's codes


@dataclass(frozen=True)
class Encoding:
    """One ``features.dtype``. ``disk``: numpy element type of the shard array; ``read``: torch dtype
    of decoded tokens; ``codes``: torch dtype of the codes of a scaled encoding (None: plain);
    ``q_max``: largest code magnitude."""

    name: str
    disk: type
    read: torch.dtype
    codes: torch.dtype | None = None
    q_max: float = 0.0

    @property
    def scaled(self) -> bool:
        return self.codes is not None

    def stored_dim(self, embed_dim: int) -> int:
        """Elements per token on disk: ``D`` (+ the scale's bytes when scaled)."""
        return embed_dim + SCALE_BYTES if self.scaled else embed_dim

    def encode(self, tokens: torch.Tensor) -> np.ndarray:
        """Float tokens ``[..., D]`` (any device) -> the shard array ``[..., stored_dim(D)]`` of ``disk`` type."""
        if not self.scaled:
            x = tokens.to(self.read).cpu()
            return x.view(torch.int16).numpy().view(np.uint16) if self.read == torch.bfloat16 else x.numpy()
        x = tokens.float()
        amax = x.abs().amax(dim=-1, keepdim=True)
        scale = torch.where(amax == 0, torch.ones_like(amax), amax / self.q_max)  # NaN/inf amax -> NaN/inf scale
        y = (x / scale).clamp(-self.q_max, self.q_max)  # NaN stays NaN; its scale is NaN too
        codes = y.round().to(torch.int8) if self.codes == torch.int8 else y.to(self.codes)
        row = torch.cat([codes.view(torch.uint8), scale.view(torch.uint8)], dim=-1)
        return row.cpu().numpy()

    def decode(self, stored: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``stored [..., stored_dim]`` (the disk type as a torch tensor) -> tokens ``[..., D]`` of
        dtype ``read``. Plain encodings return ``stored`` itself (bfloat16 reinterpreted); scaled ones
        decode into ``out`` (float32, allocated when None)."""
        if not self.scaled:
            return stored.view(torch.bfloat16) if self.read == torch.bfloat16 else stored
        d = stored.shape[-1] - SCALE_BYTES
        codes = stored[..., :d].view(self.codes)
        scale = stored[..., d:].contiguous().view(torch.float32)  # [..., 1]
        if out is None:
            out = torch.empty(codes.shape, dtype=torch.float32)
        return out.copy_(codes).mul_(scale)


ENCODINGS: dict[str, Encoding] = {
    "float16": Encoding("float16", np.float16, torch.float16),
    "bfloat16": Encoding("bfloat16", np.uint16, torch.bfloat16),  # numpy has no bfloat16
    "float32": Encoding("float32", np.float32, torch.float32),
    "int8": Encoding("int8", np.uint8, torch.float32, torch.int8, 127.0),
    "float8_e4m3": Encoding("float8_e4m3", np.uint8, torch.float32, torch.float8_e4m3fn, 448.0),
}


def encoding_of(name: str) -> Encoding:
    """The encoding called ``name`` (a ``features.dtype`` value, or a store layout's ``dtype``)."""
    try:
        return ENCODINGS[name]
    except KeyError:
        raise ValueError(f"unknown feature store dtype {name!r}; known: {', '.join(ENCODINGS)}") from None
