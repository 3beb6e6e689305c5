"""The MAE-AST decoder: mask tokens back in place, positions again, a shallow transformer, two heads.

The heads run only on the masked tokens: `head_recon` predicts the patch (MSE), `head_nce` gives
the vector scored against every masked patch of the clip (InfoNCE).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from maeast.model.config import ModelConfig
from maeast.model.init import init_weights
from maeast.model.masking import Masking
from maeast.model.positions import Positions
from maeast.model.transformer import Transformer


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], ids [B, L] -> [B, L, D]."""
    return x.gather(1, ids[..., None].expand(-1, -1, x.shape[-1]))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.proj = nn.Identity() if cfg.decoder_dim == cfg.dim else nn.Linear(cfg.dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.empty(cfg.decoder_dim))
        self.positions = Positions(cfg.decoder_dim, cfg.stored_positions)
        self.transformer = Transformer(cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, cfg.decoder_ffn_dim,
                                       cfg.dropout, cfg.attn_dropout, cfg.act_dropout, cfg.decoder_layerdrop,
                                       cfg.pre_norm)
        self.head_recon = nn.Linear(cfg.decoder_dim, cfg.patch_dim)
        self.head_nce = nn.Linear(cfg.decoder_dim, cfg.patch_dim)
        init_weights(self, cfg.init)

    def forward(self, latent: torch.Tensor, m: Masking, padded: bool,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """latent [B, K, D] encoder outputs of the visible slots -> (recon, classify) [B, M, P]."""
        x = self.proj(latent)  # [B, K, Dd]
        B, K, D = x.shape
        N = m.ids_restore.shape[1]
        slots = torch.cat([x, x.new_zeros(B, N - K, D)], dim=1)  # [B, N, Dd] in [visible, masked, pad] order
        visible = torch.arange(N, device=x.device)[None, :] < m.n_keep[:, None]  # [B, N]
        slots = torch.where(visible[..., None], slots, self.mask_token.to(slots.dtype))
        x = gather_tokens(slots, m.ids_restore)  # [B, N, Dd] in grid order
        x = x + self.positions(N, x.device, x.dtype)
        x, _ = self.transformer(x, m.token_pad if padded else None, generator)
        x = gather_tokens(x, m.ids_masked)  # [B, M, Dd]
        return self.head_recon(x), self.head_nce(x)
