"""Fixed 1-D sinusoidal positions over the token index (time-major), as the official MAE-AST.

The official table is sin on even channels and cos on odd ones, pe[n, 2i] = sin(n / 10000^(2i/D)),
pe[n, 2i+1] = cos(...). It is computed for the N tokens at hand (cheap next to one layer), so there is
no maximum length and nothing to save with the weights.
"""

from __future__ import annotations

import math

import torch


def sinusoid(n: int, dim: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[n, dim] positions for token indices 0..n-1 (dim even)."""
    position = torch.arange(n, device=device, dtype=torch.float32)[:, None]  # [n, 1]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angle = position * freq  # [n, dim / 2]
    return torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(n, dim).to(dtype)
