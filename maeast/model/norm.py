"""Input normalization of the fbank before it is cut into tokens.

The official model normalizes with nn.BatchNorm2d(1, affine=False) times 0.5: one mean and one
variance over every frame and bin of the batch, running statistics for evaluation. Here padded frames
are left out of the statistics (the official code pretrained on unpadded crops, so it never had to),
and come out as zeros. The running statistics are buffers, so they travel with every exported encoder.
'batchnorm_padded' counts the padded frames, zeros, in the training statistics, as nn.BatchNorm2d does on
the zero-padded fbanks of s3prl's trainable upstream (MAE-AST-Public s3prl/mae_ast/expert.py: pad_sequence,
then the model's batch_norm; s3prl's runner puts a trainable upstream in train mode); in eval mode, and so in a
frozen encoder, both use the running statistics and agree.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class MaskedBatchNorm(nn.Module):
    """BatchNorm over all real frames and bins of a [B, T, F] batch, no affine, times `scale`.

    Buffers keep nn.BatchNorm2d's names and update rule (momentum 0.1, unbiased running variance).
    """

    def __init__(self, scale: float = 0.5, momentum: float = 0.1, eps: float = 1e-5, count_padding: bool = False):
        super().__init__()
        self.scale, self.momentum, self.eps, self.count_padding = scale, momentum, eps, count_padding
        self.register_buffer("running_mean", torch.zeros(1))
        self.register_buffer("running_var", torch.ones(1))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, F], padding_mask [B, T] True = pad -> [B, T, F] float32, padded frames 0."""
        x = x.float()
        if self.training:
            if padding_mask is None or self.count_padding:  # count_padding: padded frames (zeros) too
                mean, var, count = x.mean(), x.var(unbiased=False), x.new_tensor(x.numel())
            else:
                real = (~padding_mask)[..., None].to(x.dtype)  # [B, T, 1]
                count = real.sum() * x.shape[-1]
                mean = (x * real).sum() / count
                var = ((x - mean).square() * real).sum() / count
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach().reshape(1), self.momentum)
                self.running_var.lerp_(unbiased.detach().reshape(1), self.momentum)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.scale
        return y if padding_mask is None else y.masked_fill(padding_mask[..., None], 0.0)


class PaddingToZero(nn.Module):
    """input_norm='none': features already normalized (e.g. the ssast preset); padded frames to 0."""

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x.float()
        return x if padding_mask is None else x.masked_fill(padding_mask[..., None], 0.0)


INPUT_NORMS = {"batchnorm": lambda cfg: MaskedBatchNorm(cfg.input_scale), "none": lambda cfg: PaddingToZero(),
               "batchnorm_padded": lambda cfg: MaskedBatchNorm(cfg.input_scale, count_padding=True)}
"""ModelConfig.input_norm -> a module factory."""
