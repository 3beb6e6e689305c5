"""The one trainer: the optimizer step, the non-finite guard and the resume guard of every run.

    trainer = Trainer(engine, use, seed=cfg.run.seed, world=world, rank=rank, accum=accum, run_dir=run_dir, logger=logger)
    record = trainer.step(stream.take, number=step + 1, key=(step,))   # one optimizer step's figures

One optimizer step = `accum` micro-batches on each of the world's processes. The micro-batch in slot
(micro * world + rank) draws its dropout from the `use`'s dropout stream and everything else (masks,
layerdrop, augmentation) from a generator of its draw stream, both at (key, slot): the same numbers on
1 process with accumulation as on several, and again after a resume. What a micro-batch means is the
`use`'s business: pretraining's model returns its loss; fine-tuning is a model plus a loss function.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn as nn

from maeast.configio import to_dict
from maeast.train import distributed as dist
from maeast.train import rng
from maeast.errors import MaeastError

RESUME_FREE = ("run.stop_at", "run.log_every", "run.threads", "run.keep", "run.trace_keys", "run.eval_every",
               "run.save_every", "run.folds", "eval.every", "eval.batches", "run.collective_timeout")
"""Keys a resumed run may change: they do not touch the weights or the loss curve (run.save_every of
fine-tuning counts epochs; pretraining's, which counts steps, is one of its keys too: saving draws nothing)."""


@dataclass
class Micro:
    """What one micro-batch gave: its loss (to backpropagate), its parts, clips and audio seconds."""

    loss: torch.Tensor
    clips: int
    keys: list[str]
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    audio_s: float | None = None


class Use(Protocol):
    """A use of the trainer: its two random streams and how a micro-batch becomes a loss."""

    dropout_stream: str
    draw_stream: str

    def __call__(self, engine, item, generator: torch.Generator) -> Micro: ...


class NonFiniteLoss(MaeastError):
    """The loss became NaN or infinite; the run stopped before the bad step touched the weights."""


class Trainer:
    def __init__(self, engine, use: Use, seed: int, world: int, rank: int, accum: int, run_dir: Path, logger,
                 trace=None, checkpoint: Callable[[], Path | None] = lambda: None):
        self.engine, self.use, self.seed = engine, use, seed
        self.world, self.rank, self.accum = world, rank, accum
        self.run_dir, self.logger, self.trace, self.checkpoint = Path(run_dir), logger, trace, checkpoint

    def step(self, take: Callable[[], object], number: int, key: tuple[int, ...]) -> dict:
        """Optimizer step `number` (1-based): `accum` micro-batches from take(), seeded by key -> its figures."""
        engine, use = self.engine, self.use
        lr = engine.lr()
        t0, wait, sums = time.perf_counter(), 0.0, None
        for micro in range(self.accum):
            tw = time.perf_counter()
            item = take()
            wait += time.perf_counter() - tw
            slot = micro * self.world + self.rank
            generator = rng.generator(use.draw_stream, self.seed, *key, slot)
            with rng.scoped(use.dropout_stream, self.seed, *key, slot, device=engine.device):
                out = use(engine, item, generator)
            self._check_finite(out, number, micro)
            engine.backward(out.loss)
            engine.step()
            row = [float(out.loss.detach()), out.clips, out.audio_s or 0.0] + [float(v) for _, v in sorted(out.parts.items())]
            sums = torch.tensor(row, dtype=torch.float64) + (0 if sums is None else sums)
            if self.trace is not None:
                self.trace.write("".join(f"{number}\t{slot}\t{k}\n" for k in out.keys))
        sync_buffers(engine.module)
        total = dist.all_reduce_sum(sums)
        seconds = time.perf_counter() - t0
        micro_batches = self.accum * self.world
        record = {"step": number, "loss": total[0].item() / micro_batches, "lr": lr, "grad_norm": engine.grad_norm(),
                  "clips": int(total[1]), "clips_per_s": total[1].item() / seconds}
        if out.audio_s is not None:
            record["audio_s_per_s"] = total[2].item() / seconds
        record.update({name: total[3 + i].item() / micro_batches for i, name in enumerate(sorted(out.parts))})
        record.update(data_wait=wait / seconds, step_s=seconds)
        return record

    def _check_finite(self, out: Micro, number: int, micro: int) -> None:
        """Every process learns whether any process's loss is non-finite; all stop before the update."""
        bad = dist.all_reduce_sum(torch.tensor([0.0 if torch.isfinite(out.loss.detach()).item() else 1.0],
                                               dtype=torch.float64))
        if bad.item() == 0:
            return
        good = self.checkpoint()
        parts = "".join(f", {k} {float(v):.4g}" for k, v in out.parts.items())
        message = (f"{self.run_dir.name}: non-finite loss at step {number} (micro-batch {micro}; this process: loss "
                   f"{float(out.loss.detach()):.4g}{parts}); stopped before updating the weights. The last good "
                   f"checkpoint is {good if good else 'none (no checkpoint yet)'}: lower optim.lr or raise "
                   f"schedule.warmup_steps, then --resume")
        self.logger.event(message, step=number)
        raise NonFiniteLoss(message)


def sync_buffers(module: nn.Module) -> None:
    """Average floating-point buffers (the input BatchNorm's running statistics) over all processes,
    so that every process evaluates and exports the same normalization."""
    if dist.world_size() == 1:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.detach().double().reshape(-1) for b in buffers])
    flat = dist.all_reduce_sum(flat) / dist.world_size()
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b).to(b.dtype))
        offset += b.numel()


# ---- the resume guard ---------------------------------------------------------------------------

def config_changes(saved, now, free: tuple[str, ...] = RESUME_FREE) -> list[tuple[str, object, object]]:
    """(key, saved value, now's value) for every dotted key of two configs that differs, less the free keys."""
    a, b = _flat(to_dict(saved)), _flat(to_dict(now))
    return [(k, a.get(k), b[k]) for k in b if b[k] != a.get(k) and k not in free]


def check_resume(saved, now, where: Path, free: tuple[str, ...] = RESUME_FREE) -> None:
    """A resumed run must keep its config (less the free keys); one line names the first change."""
    changed = config_changes(saved, now, free)
    if changed:
        key, was, value = changed[0]
        raise MaeastError(f"--resume with a different config: {key} is {value!r}, the run has {was!r}; resume with "
                          f"the run's config ({where})")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
