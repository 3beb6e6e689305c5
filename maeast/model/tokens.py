"""Fbank frames <-> tokens: pure functions, exact inverses of each other.

A token is a `patch_time x patch_freq` tile of the fbank, numbered time-major: token n sits at grid
row n // cols (time) and column n % cols (frequency), as nn.Unfold numbers them in the official code.
Inside a token the values are flattened time-major too (index i * patch_freq + j for frame i, bin j).
Frame tokens are the case patch_freq = n_mels (cols = 1). Trailing frames short of a whole patch are
dropped; a frequency axis that patch_freq does not divide is zero-padded up to a multiple (after
normalization, so the pad is the mean).

Tiles start `stride` apart: by default stride = size, tiles never overlap (MAE-AST) and patchify and
unpatchify are exact inverses. A stride below the size overlaps them (SSAST's fine-tuning: 16x16
patches every 10 frames and 10 bins, 2-frame tokens every frame), as SSAST's Conv2d patch embedding
with stride (fstride, tstride) cuts them (YuanGongND/ssast src/models/ast_models.py, get_shape): rows =
(T - patch_time) // stride_time + 1, cols = (F - patch_freq) // stride_freq + 1. Overlapping tokens have
no inverse: unpatchify refuses them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from maeast.errors import MaeastError


def pad_freq(x: torch.Tensor, patch_freq: int) -> torch.Tensor:
    """[B, T, F] -> [B, T, ceil(F / patch_freq) * patch_freq], zeros appended to the bins."""
    extra = math.ceil(x.shape[-1] / patch_freq) * patch_freq - x.shape[-1]
    return F.pad(x, (0, extra)) if extra else x


def grid_shape(frames: int, bins: int, patch_time: int, patch_freq: int, stride_time: int | None = None,
               stride_freq: int | None = None) -> tuple[int, int]:
    """(rows, cols) of the token grid for `frames` x `bins` (bins already a multiple of patch_freq);
    strides None: the patch sizes (no overlap)."""
    st, sf = stride_time or patch_time, stride_freq or patch_freq  # stride = size: frames // patch_time
    return max((frames - patch_time) // st + 1, 0), max((bins - patch_freq) // sf + 1, 0)


def patchify(x: torch.Tensor, patch_time: int, patch_freq: int, stride_time: int | None = None,
             stride_freq: int | None = None) -> torch.Tensor:
    """[B, T, F] -> [B, rows * cols, patch_time * patch_freq]; F must be a multiple of patch_freq.
    Strides below the patch sizes give overlapping tiles (every stride_time frames, stride_freq bins)."""
    B, T, Fb = x.shape
    if Fb % patch_freq:
        raise MaeastError(f"patchify: {Fb} bins is not a multiple of patch_freq {patch_freq}; pad_freq first")
    st, sf = stride_time or patch_time, stride_freq or patch_freq
    rows, cols = grid_shape(T, Fb, patch_time, patch_freq, st, sf)
    if (st, sf) != (patch_time, patch_freq):
        tiles = x.unfold(1, patch_time, st).unfold(2, patch_freq, sf)  # [B, R, F, pt] -> [B, R, C, pt, pf]
        return tiles.reshape(B, rows * cols, patch_time * patch_freq)
    x = x[:, : rows * patch_time]
    x = x.reshape(B, rows, patch_time, cols, patch_freq)  # [B, R, pt, C, pf]
    return x.permute(0, 1, 3, 2, 4).reshape(B, rows * cols, patch_time * patch_freq)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int], patch_time: int, patch_freq: int,
               stride_time: int | None = None, stride_freq: int | None = None) -> torch.Tensor:
    """[B, rows * cols, patch_time * patch_freq] -> [B, rows * patch_time, cols * patch_freq] (tiles that
    do not overlap only)."""
    if (stride_time or patch_time, stride_freq or patch_freq) != (patch_time, patch_freq):
        raise MaeastError(f"unpatchify: tokens {patch_time}x{patch_freq} every {stride_time or patch_time} frames "
                          f"and {stride_freq or patch_freq} bins overlap, so they have no one spectrogram; "
                          f"use a model without token strides")
    B = tokens.shape[0]
    rows, cols = grid
    x = tokens.reshape(B, rows, cols, patch_time, patch_freq)  # [B, R, C, pt, pf]
    return x.permute(0, 1, 3, 2, 4).reshape(B, rows * patch_time, cols * patch_freq)


def real_rows(padding_mask: torch.Tensor | None, batch: int, frames: int, patch_time: int,
              device: torch.device, stride_time: int | None = None) -> torch.Tensor:
    """[B] int64: grid rows made only of real frames (padding is a suffix of each clip).

    A row with any padded frame is padding, so a padded clip yields exactly the tokens the same clip
    yields alone.
    """
    st = stride_time or patch_time
    if padding_mask is None:
        rows, _ = grid_shape(frames, 1, patch_time, 1, st, 1)
        return torch.full((batch,), rows, dtype=torch.long, device=device)
    real = (~padding_mask).sum(dim=1)  # [B]
    return ((real - patch_time) // st + 1).clamp(min=0)  # grid_shape's rows per clip


def token_padding(rows_real: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B] real rows -> [B, rows * cols] bool, True where the token is padding."""
    rows, cols = grid
    row_of = torch.arange(rows * cols, device=rows_real.device) // cols  # [N]
    return row_of[None, :] >= rows_real[:, None]
