"""Fbank frames <-> tokens: pure functions, exact inverses of each other.

A token is a `patch_time x patch_freq` tile of the fbank, tiles never overlap (stride = size) and are
numbered time-major: token n sits at grid row n // cols (time) and column n % cols (frequency), as
nn.Unfold numbers them in the official code. Inside a token the values are flattened time-major too
(index i * patch_freq + j for frame i, bin j). Frame tokens are the case patch_freq = n_mels
(cols = 1). Trailing frames short of a whole patch are dropped; a frequency axis that patch_freq does
not divide is zero-padded up to a multiple (after normalization, so the pad is the mean).
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


def grid_shape(frames: int, bins: int, patch_time: int, patch_freq: int) -> tuple[int, int]:
    """(rows, cols) of the token grid for `frames` x `bins` (bins already a multiple of patch_freq)."""
    return frames // patch_time, bins // patch_freq


def patchify(x: torch.Tensor, patch_time: int, patch_freq: int) -> torch.Tensor:
    """[B, T, F] -> [B, rows * cols, patch_time * patch_freq]; F must be a multiple of patch_freq."""
    B, T, Fb = x.shape
    if Fb % patch_freq:
        raise MaeastError(f"patchify: {Fb} bins is not a multiple of patch_freq {patch_freq}; pad_freq first")
    rows, cols = grid_shape(T, Fb, patch_time, patch_freq)
    x = x[:, : rows * patch_time]
    x = x.reshape(B, rows, patch_time, cols, patch_freq)  # [B, R, pt, C, pf]
    return x.permute(0, 1, 3, 2, 4).reshape(B, rows * cols, patch_time * patch_freq)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int], patch_time: int, patch_freq: int) -> torch.Tensor:
    """[B, rows * cols, patch_time * patch_freq] -> [B, rows * patch_time, cols * patch_freq]."""
    B = tokens.shape[0]
    rows, cols = grid
    x = tokens.reshape(B, rows, cols, patch_time, patch_freq)  # [B, R, C, pt, pf]
    return x.permute(0, 1, 3, 2, 4).reshape(B, rows * patch_time, cols * patch_freq)


def real_rows(padding_mask: torch.Tensor | None, batch: int, frames: int, patch_time: int,
              device: torch.device) -> torch.Tensor:
    """[B] int64: grid rows made only of real frames (padding is a suffix of each clip).

    A row with any padded frame is padding, so a padded clip yields exactly the tokens the same clip
    yields alone.
    """
    if padding_mask is None:
        return torch.full((batch,), frames // patch_time, dtype=torch.long, device=device)
    return (~padding_mask).sum(dim=1) // patch_time


def token_padding(rows_real: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B] real rows -> [B, rows * cols] bool, True where the token is padding."""
    rows, cols = grid
    row_of = torch.arange(rows * cols, device=rows_real.device) // cols  # [N]
    return row_of[None, :] >= rows_real[:, None]
