"""Optimizer parameter groups: the one place that decides weight decay and layer-wise lr scales.

No weight decay on 1-D parameters (biases, LayerNorm) and on the mask token. With layer_decay < 1
(fine-tuning), the encoder's parameters get lr_scale = layer_decay ** (depth + 1 - layer): the token
projection (and post-LN input norm) is layer 0, block i is layer i + 1, everything after the encoder
(its pre-LN output norm, the decoder, a classifier head) is layer depth + 1 with scale 1, and
parameters outside the encoder get head_lr instead. The engine multiplies each group's learning rate
by its "lr_scale" (optim.layer_decay and optim.head_lr of the config).
"""

from __future__ import annotations

import torch.nn as nn

from maeast.model.encoder import Encoder


def _encoder_of(model: nn.Module) -> tuple[str, int]:
    """(name prefix, depth) of the first Encoder inside model; ('', 0) when there is none."""
    for name, module in model.named_modules():
        if isinstance(module, Encoder):
            return (name + "." if name else ""), module.cfg.depth
    return "", 0


def layer_of(name: str, prefix: str, depth: int) -> int:
    """Layer index of a parameter for layer-wise lr decay (see the module docstring)."""
    blocks = prefix + "transformer.blocks."
    if name.startswith(blocks):
        return int(name[len(blocks):].split(".", 1)[0]) + 1
    if depth == 0 or not name.startswith(prefix) or name.startswith(prefix + "transformer.norm_out"):
        return depth + 1
    return 0


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0, head_lr: float = 1.0) -> list[dict]:
    """Parameter groups for torch.optim / DeepSpeed: {"params", "weight_decay", "lr_scale"}.

    lr_scale is layer_decay ** (depth + 1 - layer) inside the encoder and head_lr outside it (a
    fine-tuning head; the decoder in pretraining, where both are 1)."""
    prefix, depth = _encoder_of(model)
    groups: dict[tuple[bool, int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim > 1 and not name.endswith("mask_token")
        layer = layer_of(name, prefix, depth)
        outside = depth > 0 and not name.startswith(prefix)
        group = groups.setdefault((decay, layer, outside), {
            "params": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": head_lr if outside else layer_decay ** (depth + 1 - layer)})
        group["params"].append(p)
    return list(groups.values())
