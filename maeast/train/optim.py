"""The optimizer and the learning-rate schedules, as plain torch objects handed to DeepSpeed.

AdamW is fairseq's `adam` (decoupled weight decay: p -= lr * wd * p before the Adam update), so
torch.optim.AdamW is the same algorithm; passing a torch optimizer also keeps DeepSpeed from
compiling its fused Adam op. Parameter groups (which parameters decay, layer-wise lr scales) come
from maeast.model.param_groups, the one place that decides them.

Two schedules, both a factor on each group's peak lr, stepped once per optimizer update:

  polynomial (ScheduleConfig; pretraining, and fine-tuning's "linear"): fairseq's polynomial_decay,
    linear warmup to the peak, then lr(s) = (peak - end) * (1 - (s - warmup) / (steps - warmup)) ** power + end.
  step (StepDecay; fine-tuning's "step"): SSAST's fine-tuning schedule (YuanGongND/ssast src/traintest.py),
    torch's MultiStepLR(milestones=range(lrscheduler_start, 1000, lrscheduler_step), gamma=lrscheduler_decay)
    stepped after every epoch, so epoch e (1-based) runs at peak * gamma ** (number of milestones <= e - 1);
    with --warmup True, `if global_step <= 1000 and global_step % 50 == 0: lr = global_step / 1000 * lr`,
    a staircase from 0 that reaches the peak at step 1000 (SSAST's warmup is always 1000 steps and ends
    before the first milestone in every run_*.sh; here warmup_steps is free and the staircase keeps 50).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from maeast.train.config import OptimConfig, ScheduleConfig
from maeast.errors import MaeastError
from maeast.model import param_groups

WARMUP_STAIR = 50
"""SSAST's warmup sets the lr every 50 steps (src/traintest.py: `global_step % 50 == 0`)."""


def lr_at(step: int, peak: float, schedule: ScheduleConfig) -> float:
    """Learning rate of the optimizer step that follows `step` completed steps (step 0 is the first)."""
    warmup, total = schedule.warmup_steps, schedule.steps
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= total:
        return schedule.end_lr
    remaining = 1.0 - (step - warmup) / (total - warmup)
    return (peak - schedule.end_lr) * remaining ** schedule.power + schedule.end_lr


@dataclass(frozen=True)
class StepDecay:
    """SSAST's step schedule: x gamma every `every` epochs once `start` epochs are done, after a staircase warmup."""

    steps_per_epoch: int
    """Optimizer steps of one epoch (the decay counts epochs)."""
    start: int
    """Epochs completed before the first decay (SSAST's --lrscheduler_start: the first milestone)."""
    every: int = 1
    """Epochs between decays (--lrscheduler_step)."""
    gamma: float = 1.0
    """Factor of each decay (--lrscheduler_decay)."""
    warmup_steps: int = 0
    """Steps of SSAST's staircase warmup (--warmup True: 1000); 0: none."""

    def __post_init__(self):
        for name in ("steps_per_epoch", "every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise MaeastError(f"step schedule: {name} {getattr(self, name)!r} must be an integer >= 1")
        if not isinstance(self.start, int) or self.start < 0:
            raise MaeastError(f"step schedule: start {self.start!r} must be an integer >= 0")
        if not 0.0 < self.gamma <= 1.0:
            raise MaeastError(f"step schedule: gamma {self.gamma} must be in (0, 1]")


def step_lr_at(step: int, peak: float, schedule: StepDecay) -> float:
    """Learning rate of the optimizer step that follows `step` completed steps under SSAST's step schedule."""
    if step < schedule.warmup_steps:
        return peak * (step - step % WARMUP_STAIR) / schedule.warmup_steps
    epochs_done = step // schedule.steps_per_epoch
    decays = 0 if epochs_done < schedule.start else (epochs_done - schedule.start) // schedule.every + 1
    return peak * schedule.gamma ** decays


SCHEDULES = {"polynomial": (ScheduleConfig, lr_at), "step": (StepDecay, step_lr_at)}
"""Schedule kind -> (its dataclass, its lr function); the one registry build_schedule reads."""


def schedule_lr(step: int, peak: float, schedule: ScheduleConfig | StepDecay) -> float:
    """The lr of either schedule at `step`."""
    return next(fn for kind, fn in SCHEDULES.values() if isinstance(schedule, kind))(step, peak, schedule)


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups; each group's lr is optim.lr x its lr_scale."""
    groups = param_groups(model, optim.weight_decay, optim.layer_decay, optim.head_lr)
    for group in groups:
        group["lr"] = optim.lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                             weight_decay=optim.weight_decay)


def build_schedule(optimizer: torch.optim.Optimizer, peak: float,
                   schedule: ScheduleConfig | StepDecay) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose factor makes the schedule's lr at each step (times each group's lr_scale); stepped
    once per update."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Factor(peak, schedule))


class _Factor:
    """The schedule's lr / peak as a picklable callable (LambdaLR stores callable objects in its state_dict)."""

    def __init__(self, peak: float, schedule: ScheduleConfig | StepDecay):
        self.kind = next(name for name, (kind, _) in SCHEDULES.items() if isinstance(schedule, kind))
        self.peak, self.schedule = peak, dataclasses.asdict(schedule)  # plain numbers in checkpoints

    def __call__(self, step: int) -> float:
        kind, _ = SCHEDULES[self.kind]
        return schedule_lr(step, self.peak, kind(**self.schedule)) / self.peak
