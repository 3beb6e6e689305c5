"""Training FLOPs of the MAE-AST model, counted from its config: what MFU divides by.

Convention (Kaplan et al., PaLM): 2 FLOPs per multiply-add, matrix products only: the token
projection (on every token, as MAEAST.forward runs it), each transformer layer's q/k/v/out and FFN
linears plus attention's scores (QK^T) and values (AV), the decoder's input projection when its width
differs, the two heads on the M masked tokens and InfoNCE's M x M logits. LayerNorm, softmax, GELU,
dropout, the losses' elementwise work and the optimizer are left out. A training step counts 3 x the
forward (backward = 2 x forward; the projection's input gradient, which autograd skips, is counted all
the same). Every layer is counted: layerdrop's skipped layers count as if they ran.

A clip counts its real tokens only: N = tokens_for(frames) of its unpadded frames, K = max(1,
floor((1 - mask_ratio) * N)) visible (maeast.model.masking.visible_count, as the model masks), M = N - K.
In a padded batch the padding's work is not counted (it is lost utilisation, not model FLOPs).
retain_spans sets its own visible share (span_prob), which this count does not follow: it assumes
mask_ratio. With model.views V, a clip's token projection runs once and the rest V times (MAEAST.forward),
so a step counts projection + V x the rest per clip (step_flops, pretrain_flops).

    forward_flops(cfg, frames)         # one clip's forward, by part (a dict)
    step_flops(cfg, batch, frames)     # a step on `batch` clips of equal length
    pretrain_flops(cfg, batch.frames())    # a pretraining micro-batch of clips of any lengths
    classifier_flops(cfg, batch.frames())  # a full fine-tuning micro-batch (encoder on all tokens)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maeast.model.config import ModelConfig
from maeast.model.masking import visible_count

Count = int | torch.Tensor  # a count for one clip, or for each clip of a batch ([B] int64)


def layer_flops(tokens: Count, dim: int, ffn: int) -> Count:
    """Forward FLOPs of one transformer layer on one sequence of `tokens`: q/k/v/out (4 D^2) and the
    FFN (2 D F) per token, and attention's scores and values (2 L^2 D each)."""
    return 2 * tokens * (4 * dim * dim + 2 * dim * ffn) + 4 * tokens * tokens * dim


def visible_tokens(cfg: ModelConfig, n: Count) -> Count:
    """Visible tokens of a clip of n real tokens: visible_count, never more than n (0 for n = 0)."""
    k = visible_count(n, cfg.mask_ratio)
    return torch.minimum(k, n) if isinstance(n, torch.Tensor) else min(k, n)


def mae_parts(cfg: ModelConfig, n: Count, k: Count) -> dict[str, Count]:
    """Forward FLOPs of MAEAST on a clip of n real tokens of which k are visible, by part."""
    m = n - k
    p = cfg.patch_dim
    return {
        "projection": 2 * n * p * cfg.dim,
        "encoder": cfg.depth * layer_flops(k, cfg.dim, cfg.ffn_dim),
        "decoder_projection": 0 if cfg.decoder_dim == cfg.dim else 2 * k * cfg.dim * cfg.decoder_dim,
        "decoder": cfg.decoder_depth * layer_flops(n, cfg.decoder_dim, cfg.decoder_ffn_dim),
        "heads": 2 * (2 * m * cfg.decoder_dim * p),
        "infonce": 2 * m * m * p,
    }


def encoder_parts(cfg: ModelConfig, n: Count) -> dict[str, Count]:
    """Forward FLOPs of the Encoder on all n real tokens of a clip (no masking), by part."""
    return {"projection": 2 * n * cfg.patch_dim * cfg.dim, "encoder": cfg.depth * layer_flops(n, cfg.dim, cfg.ffn_dim)}


def forward_flops(cfg: ModelConfig, frames: int) -> dict[str, int]:
    """Forward FLOPs of MAEAST on one unpadded clip of `frames` fbank frames, by part."""
    n = cfg.tokens_for(frames)
    return mae_parts(cfg, n, visible_tokens(cfg, n))


def viewed(cfg: ModelConfig, parts: dict[str, Count]) -> Count:
    """One clip's forward FLOPs over its cfg.views views: the projection once, the rest once per view."""
    if cfg.views == 1:
        return sum(parts.values())
    return parts["projection"] + cfg.views * sum(v for k, v in parts.items() if k != "projection")


def step_flops(cfg: ModelConfig, batch: int, frames: int) -> int:
    """Training FLOPs of one pretraining step on `batch` clips of `frames` frames (each seen as cfg.views
    views): 3 x the forward."""
    return 3 * batch * viewed(cfg, forward_flops(cfg, frames))


def _tokens(cfg: ModelConfig, frames: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Real tokens of each clip, [B] int64 on the CPU, from its real frames (e.g. Batch.frames())."""
    return cfg.tokens_for(torch.as_tensor(frames, dtype=torch.long, device="cpu").reshape(-1))


def pretrain_flops(cfg: ModelConfig, frames: Sequence[int] | torch.Tensor) -> int:
    """Training FLOPs (3 x forward) of one MAEAST pretraining micro-batch whose clips have `frames` real
    fbank frames each (a [B] sequence or tensor, e.g. the CPU batch's Batch.frames(): a CUDA tensor
    would make the host wait for it). Each clip counts as forward_flops of its own length (times its views,
    cfg.views, less the projection: `viewed`), so clips of equal length give step_flops."""
    n = _tokens(cfg, frames)
    return 3 * int(viewed(cfg, mae_parts(cfg, n, visible_tokens(cfg, n))).sum())


def classifier_flops(cfg: ModelConfig, frames: Sequence[int] | torch.Tensor) -> int:
    """Training FLOPs (3 x forward) of one full fine-tuning micro-batch (Classifier: the encoder on every
    real token, no masking, then the head) whose clips have `frames` real fbank frames each (as in
    pretrain_flops). The head is left out as negligible: a Linear (and projector) on each clip's pooled
    features, 2 x width x classes per clip: for the base encoder 0.02% of the count on 10 s AudioSet
    clips (527 classes), 0.2% at most (VoxCeleb's 1,251 speakers on every layer's mean and std, 3 s).
    A head trained on a frozen encoder has no backward through the encoder: this count is not for it."""
    n = _tokens(cfg, frames)
    return 3 * int(sum(encoder_parts(cfg, n).values()).sum())
