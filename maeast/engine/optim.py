"""The optimizer and the learning-rate schedule, as plain torch objects handed to DeepSpeed.

AdamW is fairseq's `adam` (decoupled weight decay: p -= lr * wd * p before the Adam update), so
torch.optim.AdamW is the same algorithm; passing a torch optimizer also keeps DeepSpeed from
compiling its fused Adam op. Parameter groups (which parameters decay, layer-wise lr scales) come
from maeast.model.param_groups, the one place that decides them.

The schedule is fairseq's polynomial_decay: linear warmup to the peak, then
lr(s) = (peak - end) * (1 - (s - warmup) / (steps - warmup)) ** power + end.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from maeast.engine.config import OptimConfig, ScheduleConfig
from maeast.model import param_groups


def lr_at(step: int, peak: float, schedule: ScheduleConfig) -> float:
    """Learning rate of the optimizer step that follows `step` completed steps (step 0 is the first)."""
    warmup, total = schedule.warmup_steps, schedule.steps
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= total:
        return schedule.end_lr
    remaining = 1.0 - (step - warmup) / (total - warmup)
    return (peak - schedule.end_lr) * remaining ** schedule.power + schedule.end_lr


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups; each group's lr is optim.lr x its lr_scale."""
    groups = param_groups(model, optim.weight_decay, optim.layer_decay, optim.head_lr)
    for group in groups:
        group["lr"] = optim.lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                             weight_decay=optim.weight_decay)


def build_schedule(optimizer: torch.optim.Optimizer, peak: float,
                   schedule: ScheduleConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose factor makes lr_at(step) (times each group's lr_scale); stepped once per update."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Factor(peak, schedule))


class _Factor:
    """lr_at / peak as a picklable callable (LambdaLR stores callable objects in its state_dict)."""

    def __init__(self, peak: float, schedule: ScheduleConfig):
        self.peak, self.schedule = peak, dataclasses.asdict(schedule)  # plain numbers in checkpoints

    def __call__(self, step: int) -> float:
        return lr_at(step, self.peak, ScheduleConfig(**self.schedule)) / self.peak
