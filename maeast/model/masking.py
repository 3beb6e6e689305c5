"""Token masks: pure batched functions, one draw per clip, an explicit torch.Generator, no sample loop.

Every mask function has the signature `fn(rows_real [B], grid (rows, cols), ratio, generator, **opts)`
and returns a `Masking`. It only scores the tokens (lower = masked first); `masking_from_order` turns
any score into the index sets, so every mask shares the same invariants:

- clip b has n_real = rows_real[b] * cols real tokens; it keeps n_keep = max(1, round((1 - ratio) *
  n_real)) of them visible and masks exactly the rest (n_masked = n_real - n_keep); padding tokens are
  neither visible nor masked;
- fixed shapes: the visible set has K = max(1, round((1 - ratio) * N)) slots and the masked set
  M = N - K slots, N = rows * cols tokens of the padded batch. Both depend on the batch's shape only
  (no host sync, static for torch.compile); a clip with fewer real tokens fills its spare slots with
  filler flagged in keep_pad / masked_pad (the encoder gets them as key padding, the losses skip them).
  Without padding every slot is real;
- ids_restore is the inverse of the permutation ids_shuffle = [visible, masked, padding], with the
  visible and the masked tokens each in token (time-major) order.

The official code drew the chunk mask once per batch because its Python loop was slow; here every
clip gets its own mask at the cost of a scatter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from maeast.model.tokens import token_padding


@dataclass
class Masking:
    ids_keep: torch.Tensor  # [B, K] long: visible tokens, the first n_keep[b] real
    keep_pad: torch.Tensor  # [B, K] bool: True for a filler slot
    ids_masked: torch.Tensor  # [B, M] long: masked tokens (the targets), the first n_masked[b] real
    masked_pad: torch.Tensor  # [B, M] bool: True for a filler slot
    ids_restore: torch.Tensor  # [B, N] long: where each token sits in [visible, masked, padding]
    mask: torch.Tensor  # [B, N] float: 1 = masked real token, 0 = visible or padding
    token_pad: torch.Tensor  # [B, N] bool: True for a padding token
    n_keep: torch.Tensor  # [B] long


MaskFn = Callable[..., Masking]


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) drawn on the generator's device, moved to `device`."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def _randint(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    where = generator.device if generator is not None else device
    return torch.randint(low, high, shape, generator=generator, device=where).to(device)


def visible_count(n: int | torch.Tensor, ratio: float) -> int | torch.Tensor:
    """Visible tokens out of n real ones: max(1, round((1 - ratio) * n)), half to even."""
    if isinstance(n, torch.Tensor):
        return torch.round((1.0 - ratio) * n.double()).long().clamp(min=1)
    return max(1, round((1.0 - ratio) * n))


def masking_from_order(order: torch.Tensor, rows_real: torch.Tensor, grid: tuple[int, int],
                       ratio: float) -> Masking:
    """Mask the lowest-scored real tokens of each clip; order is [B, N], any real dtype."""
    B, N = order.shape
    cols = grid[1]
    device = order.device
    token_pad = token_padding(rows_real, grid)  # [B, N]
    n_real = rows_real * cols  # [B]
    n_keep = torch.minimum(visible_count(n_real, ratio), n_real)  # [B]
    n_masked = n_real - n_keep  # [B]
    K = visible_count(N, ratio)
    M = N - K

    rank = order.masked_fill(token_pad, math.inf).argsort(dim=1).argsort(dim=1)  # [B, N]
    masked = rank < n_masked[:, None]  # [B, N] real tokens only: padding ranks last
    category = torch.where(token_pad, 2, masked.long())  # 0 visible, 1 masked, 2 padding
    idx = torch.arange(N, device=device)
    ids_shuffle = (category * N + idx).argsort(dim=1)  # [B, N]
    ids_restore = ids_shuffle.argsort(dim=1)  # [B, N]

    slot_m = torch.arange(M, device=device)
    where_m = (n_keep[:, None] + slot_m).clamp(max=N - 1)  # [B, M]
    return Masking(
        ids_keep=ids_shuffle[:, :K],
        keep_pad=torch.arange(K, device=device)[None, :] >= n_keep[:, None],
        ids_masked=ids_shuffle.gather(1, where_m),
        masked_pad=slot_m[None, :] >= n_masked[:, None],
        ids_restore=ids_restore,
        mask=masked.float(),
        token_pad=token_pad,
        n_keep=n_keep,
    )


def random_mask(rows_real: torch.Tensor, grid: tuple[int, int], ratio: float,
                generator: torch.Generator | None = None) -> Masking:
    """Uniformly random tokens (MAE; the official 'random_mask')."""
    B, N = rows_real.shape[0], grid[0] * grid[1]
    return masking_from_order(_rand((B, N), generator, rows_real.device), rows_real, grid, ratio)


def chunk_mask(rows_real: torch.Tensor, grid: tuple[int, int], ratio: float,
               generator: torch.Generator | None = None, chunk_min: int = 3, chunk_max: int = 5) -> Masking:
    """Square blocks of side chunk_min..chunk_max tokens (SSAST), spans of frames when cols = 1.

    Blocks are drawn in sequence, each with its own side and a top-left corner that keeps it inside
    the clip's real grid; tokens are masked in block order, so the mask is whole blocks plus part of
    the last one. Enough blocks are drawn to cover the ratio with a wide margin; a token no block
    reached ranks after every block (in random order), so the count stays exact in any case.
    """
    rows, cols = grid
    B, N, device = rows_real.shape[0], rows * cols, rows_real.device
    area_min = chunk_min * min(chunk_min, cols)
    n_blocks = math.ceil(2.5 * N * math.log(1.0 / (1.0 - ratio)) / area_min) + 1

    side = _randint(chunk_min, chunk_max + 1, (B, n_blocks), generator, device)  # [B, nb]
    real = rows_real[:, None].clamp(min=1)  # [B, 1]
    side_t = torch.minimum(side, real)
    side_f = side.clamp(max=cols)
    t0 = (_rand((B, n_blocks), generator, device) * (real - side_t + 1)).long()
    t0 = torch.minimum(t0, real - side_t)
    f0 = (_rand((B, n_blocks), generator, device) * (cols - side_f + 1)).long().clamp(max=cols - side_f)

    d = torch.arange(chunk_max, device=device)
    dt, df = d[:, None], d[None, :]  # [S, 1], [1, S]
    inside = (dt < side_t[..., None, None]) & (df < side_f[..., None, None])  # [B, nb, S, S]
    token = (t0[..., None, None] + dt) * cols + f0[..., None, None] + df  # [B, nb, S, S]
    token = torch.where(inside, token, N).flatten(1)  # outside -> a spare column
    block = torch.arange(n_blocks, device=device)[None, :, None, None].expand_as(inside).flatten(1)
    first = torch.full((B, N + 1), n_blocks, dtype=torch.long, device=device)
    first.scatter_reduce_(1, token, block, reduce="amin")  # [B, N + 1] first block covering a token
    order = first[:, :N].double() + _rand((B, N), generator, device).double()
    return masking_from_order(order, rows_real, grid, ratio)


def tf_mask(rows_real: torch.Tensor, grid: tuple[int, int], ratio: float,
            generator: torch.Generator | None = None) -> Masking:
    """Whole time rows and whole frequency columns (Audio-MAE's time-frequency mask).

    Rows and columns are each put in random order and interleaved by the fraction of their axis
    they cover, so about the same fraction of rows and of columns is masked and their union is the
    exact ratio (the last line is partial). With frame tokens (cols = 1) it masks whole frames.
    """
    rows, cols = grid
    B, N, device = rows_real.shape[0], rows * cols, rows_real.device
    row_noise = _rand((B, rows), generator, device).masked_fill(
        torch.arange(rows, device=device)[None, :] >= rows_real[:, None], 2.0)
    row_score = (row_noise.argsort(1).argsort(1) + 1).double() / rows_real[:, None].clamp(min=1)  # [B, R]
    col_score = (_rand((B, cols), generator, device).argsort(1).argsort(1) + 1).double() / cols  # [B, C]
    order = torch.minimum(row_score[:, :, None], col_score[:, None, :]).reshape(B, N)
    order = order + _rand((B, N), generator, device).double() * (0.5 / N)  # ties below any gap 1/N
    return masking_from_order(order, rows_real, grid, ratio)


MASKS: dict[str, MaskFn] = {"random": random_mask, "chunk": chunk_mask, "tf": tf_mask}
"""Mask functions by name (ModelConfig.mask_type)."""

MASK_OPTIONS: dict[str, tuple[str, ...]] = {"chunk": ("chunk_min", "chunk_max")}
"""ModelConfig fields that a mask function takes as keyword options."""
