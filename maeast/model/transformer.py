"""The transformer stack shared by encoder and decoder (fairseq's TransformerEncoder as MAE-AST uses it).

Post-LN (the official default): LayerNorm on the stack's input, then blocks that normalize after
each residual add. Pre-LN: blocks normalize before attention and FFN, one LayerNorm on the output.
One attention path: torch.nn.functional.scaled_dot_product_attention with a key padding mask.
Layerdrop skips whole blocks in training (a skipped block is the identity, so per-layer outputs
keep their indices).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, attn_dropout: float):
        super().__init__()
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, D]; attend [B, 1, 1, L] bool, True for keys to attend to (None: all)."""
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # [3, B, H, L, Dh]
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attend,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, L, D))  # [B, L, D]


class Block(nn.Module):
    """Attention + GELU FFN with their LayerNorms; subclasses order the norms."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, attn_dropout: float,
                 act_dropout: float):
        super().__init__()
        self.attn = SelfAttention(dim, heads, attn_dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.act_drop = nn.Dropout(act_dropout)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act_drop(F.gelu(self.fc1(x)))))


class PostNormBlock(Block):
    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, attend)))
        return self.norm2(x + self.ffn(x))


class PreNormBlock(Block):
    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), attend))
        return x + self.ffn(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, ffn_dim: int, dropout: float, attn_dropout: float,
                 act_dropout: float, layerdrop: float, pre_norm: bool):
        super().__init__()
        block = PreNormBlock if pre_norm else PostNormBlock
        self.norm_in = nn.Identity() if pre_norm else nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            block(dim, heads, ffn_dim, dropout, attn_dropout, act_dropout) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim) if pre_norm else nn.Identity()
        self.layerdrop = layerdrop

    def skipped(self, generator: torch.Generator | None) -> list[bool]:
        """Which blocks layerdrop skips in this step (drawn on the CPU: a CPU generator is used)."""
        if not self.training or self.layerdrop == 0.0:
            return [False] * len(self.blocks)
        cpu_gen = generator if generator is not None and generator.device.type == "cpu" else None
        return (torch.rand(len(self.blocks), generator=cpu_gen) < self.layerdrop).tolist()

    def forward(self, x: torch.Tensor, key_pad: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                layer_results: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x [B, L, D], key_pad [B, L] True = padding -> ([B, L, D], every block's output if asked)."""
        attend = None if key_pad is None else ~key_pad[:, None, None, :]  # [B, 1, 1, L]
        x = self.drop(self.norm_in(x))
        hidden: list[torch.Tensor] = []
        for block, skip in zip(self.blocks, self.skipped(generator)):
            if not skip:
                x = block(x, attend)
            if layer_results:
                hidden.append(x)
        return self.norm_out(x), hidden
