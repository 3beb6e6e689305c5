"""MAEAST: encode the visible tokens, decode with mask tokens restored, score the masked ones.

`model(batch)` (a maeast.batch.Batch) or `model(features, padding_mask, generator)` -> MAEOutput with
`.loss` and `.parts` {"mse", "infonce"}. `model.encoder` is the part to keep for fine-tuning.

Views (cfg.views = V > 1): each clip is normalized, patchified and projected once, then masked V times, each
view from its own generator (view_generators); the views go through encoder, decoder and losses as one
batch of V x B rows, view-major (row v * B + b is view v of clip b), so the loss is the mean over every
view's masked tokens: the mean of the views' losses whenever they mask equal counts (every mask but
retain_spans and mask_spans, whose counts are drawn). V = 1 is the one-mask step, draw for draw.
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
from maeast.model.masking import MASK_OPTIONS, MASKS, Masking, MaskFn


@dataclass
class MAEOutput:
    # B = views x clips rows, view-major (one view: B clips)
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
                generator: torch.Generator | None = None, views: int | None = None) -> MAEOutput:
        """features [B, T, F] (or a Batch) -> MAEOutput on views x B rows; views: cfg.views unless given."""
        if isinstance(batch, Batch):
            batch, padding_mask = batch.features, batch.padding_mask
        features = batch  # [B, T, F]
        views = self.cfg.views if views is None else views
        tokens = self.encoder.tokenize(features, padding_mask)
        m, uneven = view_masks(self.mask_fn, tokens.rows_real, tokens.grid, views, generator)  # [V B, ...]
        padded = tokens.padded or uneven
        x = self.encoder.add_positions(self.input_dropout(repeat_views(tokens.x, views)))  # [V B, N, D]
        latent, _ = self.encoder.transformer(gather_tokens(x, m.ids_keep), m.keep_pad if padded else None,
                                             generator)  # [V B, K, D]
        recon, classify = self.decoder(latent, m, tokens.padded, generator)  # [V B, M, P] each
        target = gather_tokens(repeat_views(tokens.patches, views), m.ids_masked)  # [V B, M, P]
        loss, parts = mae_loss(recon, classify, target, ~m.masked_pad, self.cfg.mse_weight,
                               self.cfg.infonce_weight, self.cfg.norm_targets)
        return MAEOutput(loss, parts, m.mask, m.ids_masked, m.masked_pad, recon, classify, target, tokens.grid)

    def compile_blocks(self, **kwargs) -> "MAEAST":
        """torch.compile each transformer block in place (shapes vary per batch only by T)."""
        for stack in (self.encoder.transformer, self.decoder.transformer):
            for block in stack.blocks:
                block.compile(**kwargs)
        return self


def repeat_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """[B, ...] -> [V B, ...], view-major; one view: x itself."""
    return x if views == 1 else x.repeat(views, *([1] * (x.ndim - 1)))


def view_generators(generator: torch.Generator | None, views: int) -> list[torch.Generator | None]:
    """One generator per view, each seeded by a draw of `generator` (a function of its seed, so of the
    micro-batch's step and place, and of the view); None (the global RNG) stays None for every view."""
    if generator is None:
        return [None] * views
    seeds = torch.randint(0, 2 ** 63 - 1, (views,), generator=generator, device=generator.device).tolist()
    return [torch.Generator(device=generator.device).manual_seed(s) for s in seeds]


def view_masks(mask_fn: MaskFn, rows_real: torch.Tensor, grid: tuple[int, int], views: int,
               generator: torch.Generator | None) -> tuple[Masking, bool]:
    """`views` independent masks of the same clips, stacked view-major ([V B, ...]), and whether their slot
    counts differ (the span masks draw their visible counts: the shorter views get filler slots, flagged in
    keep_pad / masked_pad, so the encoder needs key padding). One view: mask_fn on `generator` itself."""
    if views == 1:
        return mask_fn(rows_real, grid, generator=generator), False
    masks = [mask_fn(rows_real, grid, generator=g) for g in view_generators(generator, views)]
    keep = max(m.ids_keep.shape[1] for m in masks)
    masked = max(m.ids_masked.shape[1] for m in masks)

    def cat(name: str, width: int | None = None, fill: int | bool = 0) -> torch.Tensor:
        parts = [getattr(m, name) for m in masks]
        if width is not None:  # filler slots: any token index, flagged as filler
            parts = [torch.cat([t, t.new_full((t.shape[0], width - t.shape[1]), fill)], dim=1) for t in parts]
        return torch.cat(parts)

    stacked = Masking(ids_keep=cat("ids_keep", keep), keep_pad=cat("keep_pad", keep, True),
                      ids_masked=cat("ids_masked", masked), masked_pad=cat("masked_pad", masked, True),
                      ids_restore=cat("ids_restore"), mask=cat("mask"), token_pad=cat("token_pad"),
                      n_keep=cat("n_keep"))
    return stacked, len({m.ids_keep.shape[1] for m in masks}) > 1


def build_model(preset: str = "base", **overrides) -> MAEAST:
    """MAEAST from a preset name (base, base_frame, small, small_frame, tiny) and field overrides."""
    return MAEAST(make_config(preset, **overrides))
