"""MAEAST: encode the visible tokens, decode with mask tokens restored, score the masked ones.

`model(batch)` (a maeast.batch.Batch) or `model(features, padding_mask, generator)` -> MAEOutput with
`.loss` and `.parts` {"mse", "infonce"}. `model.encoder` is the part to keep for fine-tuning.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn

from maeast.batch import Batch
from maeast.model.config import ModelConfig, make_config
from maeast.model.decoder import Decoder, gather_tokens
from maeast.model.encoder import Encoder
from maeast.model.losses import mae_loss
from maeast.model.masking import MASK_OPTIONS, MASKS


@dataclass
class MAEOutput:
    loss: torch.Tensor  # [] weighted sum of the parts
    parts: dict[str, torch.Tensor]  # unweighted, detached: "mse", "infonce" (those with weight > 0)
    mask: torch.Tensor  # [B, N] float: 1 = masked real token
    ids_masked: torch.Tensor  # [B, M] the masked tokens, in grid order
    target_pad: torch.Tensor  # [B, M] bool: True for filler slots (clips with fewer real tokens)
    recon: torch.Tensor  # [B, M, P] reconstruction head output
    classify: torch.Tensor  # [B, M, P] InfoNCE head output
    target: torch.Tensor  # [B, M, P] normalized input patches at ids_masked
    grid: tuple[int, int]  # (rows, cols) of the token grid


class MAEAST(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.input_dropout = nn.Dropout(cfg.input_dropout)
        self.decoder = Decoder(cfg)
        options = {k: getattr(cfg, k) for k in MASK_OPTIONS.get(cfg.mask_type, ())}
        self.mask_fn = functools.partial(MASKS[cfg.mask_type], ratio=cfg.mask_ratio, **options)

    def forward(self, batch: Batch | torch.Tensor, padding_mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> MAEOutput:
        if isinstance(batch, Batch):
            batch, padding_mask = batch.features, batch.padding_mask
        features = batch  # [B, T, F]
        tokens = self.encoder.tokenize(features, padding_mask)
        m = self.mask_fn(tokens.rows_real, tokens.grid, generator=generator)
        x = self.encoder.add_positions(self.input_dropout(tokens.x))  # [B, N, D]
        latent, _ = self.encoder.transformer(gather_tokens(x, m.ids_keep), m.keep_pad if tokens.padded else None,
                                             generator)  # [B, K, D]
        recon, classify = self.decoder(latent, m, tokens.padded, generator)  # [B, M, P] each
        target = gather_tokens(tokens.patches, m.ids_masked)  # [B, M, P]
        loss, parts = mae_loss(recon, classify, target, ~m.masked_pad, self.cfg.mse_weight,
                               self.cfg.infonce_weight, self.cfg.norm_targets)
        return MAEOutput(loss, parts, m.mask, m.ids_masked, m.masked_pad, recon, classify, target, tokens.grid)

    def compile_blocks(self, **kwargs) -> "MAEAST":
        """torch.compile each transformer block in place (shapes vary per batch only by T)."""
        for stack in (self.encoder.transformer, self.decoder.transformer):
            for block in stack.blocks:
                block.compile(**kwargs)
        return self


def build_model(preset: str = "base", **overrides) -> MAEAST:
    """MAEAST from a preset name (base, base_frame, small, small_frame, tiny) and field overrides."""
    return MAEAST(make_config(preset, **overrides))
