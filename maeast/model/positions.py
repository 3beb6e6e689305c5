"""Fixed 1-D sinusoidal positions over the token index (time-major), as the official MAE-AST.

The official table is sin on even channels and cos on odd ones, pe[n, 2i] = sin(n / 10000^(2i/D)),
pe[n, 2i+1] = cos(...). Models maeast trains compute it for the N tokens at hand (cheap next to one
layer), so there is no maximum length and nothing to save with the weights. A converted official
checkpoint may instead carry its own table (`Positions` with stored rows): fairseq's fp16 training
saved the sinusoids rounded to float16, and the released models were trained with those numbers.
Positions follow the token index whatever the grid: overlapping tokens (ModelConfig.stride_time /
stride_freq, SSAST's input) make more of them, 1212 for a 10 s clip of 16x16 patches every 10 frames and
bins, and the table is sized to them (rows past a stored table are exact sinusoids).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def sinusoid(n: int, dim: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[n, dim] positions for token indices 0..n-1 (dim even)."""
    position = torch.arange(n, device=device, dtype=torch.float32)[:, None]  # [n, 1]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angle = position * freq  # [n, dim / 2]
    return torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(n, dim).to(dtype)


class Positions(nn.Module):
    """The positions one transformer stack adds to its tokens: `positions(n, device, dtype)` -> [n, dim].

    stored = 0 (ModelConfig.stored_positions, every model maeast trains): exact sinusoids for any n,
    no state. stored > 0: a buffer `table` [stored, dim] (saved with the weights) gives the first
    `stored` rows, exact sinusoids the rows past it.
    """

    def __init__(self, dim: int, stored: int = 0):
        super().__init__()
        self.dim = dim
        self.register_buffer("table", sinusoid(stored, dim) if stored else None)

    def forward(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        exact = sinusoid(n, self.dim, device, dtype)  # [n, dim]
        if self.table is None:
            return exact
        table = self.table.to(device=device, dtype=dtype)  # no branch on n: an ONNX graph takes any length
        return torch.cat([table, exact[table.shape[0]:]])[:n]  # [n, dim]
