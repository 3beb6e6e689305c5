"""MAE-AST losses on the masked tokens: weighted MSE reconstruction + InfoNCE classification.

As the official criterion (mae_ast_criterion.py): the MSE compares the reconstruction head with the
input patch as the model sees it (after the input normalization; per-patch normalization is an
option); InfoNCE takes the dot product of each classification-head output with every masked target
of the same clip as logits and the matching target as the class (cross-entropy to the diagonal),
so the other masked patches of the clip are the negatives. Filler slots of clips with fewer real
tokens are neither targets, negatives nor counted: both losses average over real masked tokens
(the official code, with equal counts per clip, took the same mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """[..., P] -> each patch at zero mean, unit variance (MAE's norm_pix_loss)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=False)
    return (patches - mean) * torch.rsqrt(var + eps)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """pred, target [B, M, P], valid [B, M] bool -> mean squared error over valid tokens and values."""
    per_token = (pred.float() - target.float()).square().mean(dim=-1)  # [B, M]
    return (per_token * valid).sum() / valid.sum().clamp(min=1)


def masked_infonce(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """pred, target [B, M, P], valid [B, M] -> mean over valid rows of -log softmax(pred . target)_diag."""
    logits = pred.float() @ target.float().transpose(1, 2)  # [B, M, M]
    logits = logits.masked_fill(~valid[:, None, :], -1e9)  # filler targets are no negatives
    log_p = F.log_softmax(logits, dim=-1).diagonal(dim1=1, dim2=2)  # [B, M]
    return -(log_p * valid).sum() / valid.sum().clamp(min=1)


def mae_loss(recon: torch.Tensor, classify: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
             mse_weight: float = 10.0, infonce_weight: float = 1.0,
             norm_targets: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Heads' outputs and targets [B, M, P], valid [B, M] -> (weighted loss, unweighted parts detached).

    A loss whose weight is 0 is not computed (as the official criterion).
    """
    target = normalize_patches(target.float()) if norm_targets else target.float()
    loss = recon.new_zeros((), dtype=torch.float32)
    parts: dict[str, torch.Tensor] = {}
    if mse_weight > 0:
        mse = masked_mse(recon, target, valid)
        loss = loss + mse_weight * mse
        parts["mse"] = mse.detach()
    if infonce_weight > 0:
        nce = masked_infonce(classify, target, valid)
        loss = loss + infonce_weight * nce
        parts["infonce"] = nce.detach()
    return loss, parts
