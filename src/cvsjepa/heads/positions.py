"""Where each token sits, and positions a head can learn from it.

The encoder's tokens carry their positions only implicitly (V-JEPA 2 applies RoPE inside its own
attention; nothing positional reaches the output), so an attentive head that pools them is
permutation invariant: it can learn *what* to look for but not *where*. ``head.pos_embed=learned``
adds a learned position to every token before the head reads it.

Token order (``TokenLayout``): view-major (``data.view=three_crops``: left, centre, right), then
level (``backbone.layers``), then the backbone's grid: time step, row, column. So token ``n`` of a
clip is at ``np.unravel_index(n, layout.shape)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

AXES = ("view", "level", "time", "row", "col")


@dataclass(frozen=True)
class TokenLayout:
    """Sizes of the token axes, in token order; their product is N."""
    views: int = 1
    levels: int = 1
    time: int = 1
    rows: int = 1
    cols: int = 1

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.views, self.levels, self.time, self.rows, self.cols)

    @property
    def num_tokens(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @classmethod
    def of(cls, views: int, levels: int, grid) -> "TokenLayout":
        t, h, w = (int(x) for x in grid)
        return cls(int(views), int(levels), t, h, w)


class AxisPositions(nn.Module):
    """Learned positions, factorised over the axes of the layout:

        pos[v, l, t, r, c] = E_view[v] + E_level[l] + E_time[t] + E_row[r] + E_col[c]   (each [D])

    (axes of size 1 have no table). ``forward(x [B, N, D]) -> x + pos`` with ``N = layout.num_tokens``.
    The tables start at zero, so a head begins exactly as without positions and learns them; a
    factorised table has (V + L + T + H + W) x D parameters instead of V L T H W x D, and a row or
    column prior ("the plate lies low in the frame") is one vector.
    """

    def __init__(self, layout: TokenLayout, dim: int):
        super().__init__()
        self.layout = layout
        self.tables = nn.ParameterDict({name: nn.Parameter(torch.zeros(size, dim))
                                        for name, size in zip(AXES, layout.shape) if size > 1})

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.layout.num_tokens:
            raise ValueError(f"the head's positions are for {self.layout.num_tokens} tokens {self.layout}, got "
                             f"{x.shape[1]}: the tokens come from another backbone grid, view or level setting")
        pos = x.new_zeros(self.layout.shape + (x.shape[-1],))
        for k, name in enumerate(AXES):
            if name in self.tables:
                shape = [1] * len(AXES) + [x.shape[-1]]
                shape[k] = self.layout.shape[k]
                pos = pos + self.tables[name].to(x.dtype).view(shape)
        return x + pos.view(1, -1, x.shape[-1])
