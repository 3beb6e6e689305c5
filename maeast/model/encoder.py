"""The MAE-AST encoder: input normalization -> tokens -> linear projection -> positions -> transformer.

Used two ways: MAEAST runs its transformer on the visible tokens only; fine-tuning and embedding
extraction call it whole, unmasked: `encoder(features, padding_mask)` -> EncoderOutput. It owns the
input BatchNorm's running statistics, so an exported encoder normalizes exactly as in pretraining.
Rebuild one from JSON with `Encoder(ModelConfig.from_dict(d))` and load its state dict.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from maeast.errors import MaeastError
from maeast.model.config import ModelConfig
from maeast.model.init import init_weights
from maeast.model.norm import INPUT_NORMS
from maeast.model.positions import Positions
from maeast.model.tokens import grid_shape, pad_freq, patchify, real_rows, token_padding
from maeast.model.transformer import Transformer


@dataclass
class Tokens:
    x: torch.Tensor  # [B, N, D] projected tokens, no positions yet
    patches: torch.Tensor  # [B, N, P] the normalized input patches (the reconstruction targets)
    rows_real: torch.Tensor  # [B] grid rows of real frames per clip
    grid: tuple[int, int]  # (rows, cols) of the batch
    padded: bool  # the batch came with a padding mask (attention needs key padding)


@dataclass
class EncoderOutput:
    x: torch.Tensor  # [B, N, D] token outputs of the last layer
    padding_mask: torch.Tensor | None  # [B, N] bool True = padding token; None when nothing is padded
    layers: list[torch.Tensor]  # every layer's output [B, N, D] when asked (depth entries), else []
    grid: tuple[int, int]  # (rows, cols): token n is at time row n // cols, frequency column n % cols


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.n_mels % cfg.patch_freq:
            warnings.warn(f"patch_freq {cfg.patch_freq} does not divide n_mels {cfg.n_mels}: the frequency "
                          f"axis is zero-padded to {cfg.freq_cols * cfg.patch_freq} bins", stacklevel=2)
        self.input_norm = INPUT_NORMS[cfg.input_norm](cfg)
        self.proj = nn.Linear(cfg.patch_dim, cfg.dim)
        self.positions = Positions(cfg.dim, cfg.stored_positions)
        self.transformer = Transformer(cfg.dim, cfg.depth, cfg.heads, cfg.ffn_dim, cfg.dropout, cfg.attn_dropout,
                                       cfg.act_dropout, cfg.layerdrop, cfg.pre_norm)
        init_weights(self, cfg.init)

    def tokenize(self, features: torch.Tensor, padding_mask: torch.Tensor | None = None) -> Tokens:
        """features [B, T, F] log-mel, padding_mask [B, T] True = pad (a suffix of each clip)."""
        cfg = self.cfg
        if features.ndim != 3 or features.shape[-1] != cfg.n_mels:
            raise MaeastError(f"model input: expected fbank [batch, frames, {cfg.n_mels}], got "
                              f"{list(features.shape)}; set the model's n_mels to the features' mel bins")
        B, T, _ = features.shape
        if T < cfg.patch_time:
            raise MaeastError(f"model input: {T} frames is shorter than one token ({cfg.patch_time} frames); "
                              f"use longer clips")
        x = pad_freq(self.input_norm(features, padding_mask), cfg.patch_freq)  # [B, T, F']
        grid = grid_shape(T, x.shape[-1], cfg.patch_time, cfg.patch_freq, cfg.time_stride, cfg.freq_stride)
        rows_real = real_rows(padding_mask, B, T, cfg.patch_time, features.device, cfg.time_stride)  # [B]
        if padding_mask is not None and bool((rows_real == 0).any()):
            raise MaeastError(f"model input: a clip has fewer than {cfg.patch_time} real frames (one token); "
                              f"drop such clips in the loader")
        patches = patchify(x, cfg.patch_time, cfg.patch_freq, cfg.time_stride, cfg.freq_stride)  # [B, N, P]
        return Tokens(self.proj(patches), patches, rows_real, grid, padding_mask is not None)

    def add_positions(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] tokens in grid order -> plus the fixed position of each token index."""
        return x + self.positions(x.shape[1], x.device, x.dtype)

    def forward(self, features: torch.Tensor, padding_mask: torch.Tensor | None = None,
                layer_results: bool = False, generator: torch.Generator | None = None) -> EncoderOutput:
        """All tokens, unmasked: features [B, T, F] -> EncoderOutput (x [B, N, D])."""
        tokens = self.tokenize(features, padding_mask)
        pad = token_padding(tokens.rows_real, tokens.grid) if tokens.padded else None  # [B, N]
        x, layers = self.transformer(self.add_positions(tokens.x), pad, generator, layer_results)
        return EncoderOutput(x, pad, layers, tokens.grid)
