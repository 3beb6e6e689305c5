"""The one trainer: the optimizer step and the non-finite guard of every run.

    trainer = Trainer(engine, use, seed=cfg.run.seed, world=world, rank=rank, accum=accum, run=run)
    record = trainer.step(stream.take, number=step + 1, key=(step,))   # one optimizer step's figures

One optimizer step = `accum` micro-batches on each of the world's processes. The micro-batch at place
(micro * world + rank) of the step's global batch draws its dropout from the `use`'s dropout stream and
everything else (masks, layerdrop, augmentation) from a generator of its draw stream, both at (key, place):
the same numbers on 1 process with accumulation as on several, and again after a resume. What a
micro-batch means is the `use`'s business: pretraining's model returns its loss; fine-tuning is a model
plus a loss function.

The host waits on the device once per optimizer step: each micro-batch's loss and parts stay where they
were computed, and just before the update one all-reduce carries every process's sums, its count of
non-finite losses, its stop requests (a SIGTERM or SIGUSR1 it got: maeast.train.preempt) and its
floating-point buffers (the input BatchNorm's running statistics, averaged); a non-finite loss anywhere
stops every process there, before the update touches the weights, and a stop request anywhere makes every
process's Run stop after this step (run.stopping), so that all save at the same step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
import torch.nn as nn

from maeast.errors import MaeastError
from maeast.train import distributed as dist
from maeast.train import rng


@dataclass
class Micro:
    """What one micro-batch gave: its loss (to backpropagate), its parts, clips, audio seconds, the
    training FLOPs of its model (for MFU; None: not counted) and the masked views it trained on when a clip
    is seen more than once (pretraining's model.views; None: one per clip)."""

    loss: torch.Tensor
    clips: int
    keys: list[str]
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    audio_s: float | None = None
    flops: float | None = None
    views: int | None = None


class Use(Protocol):
    """A use of the trainer: its two random streams and how a micro-batch becomes a loss."""

    dropout_stream: str
    draw_stream: str

    def __call__(self, engine, item, generator: torch.Generator) -> Micro: ...


class NonFiniteLoss(MaeastError):
    """The loss became NaN or infinite; the run stopped before the bad step touched the weights."""


class Trainer:
    """Optimizer steps of one engine for one `use`, reporting through `run` (maeast.train.run.Run: its
    logger, key trace and latest checkpoint); peak_flops (FLOP/s) turns on the MFU figure."""

    def __init__(self, engine, use: Use, seed: int, world: int, rank: int, accum: int, run,
                 peak_flops: float | None = None):
        self.engine, self.use, self.seed = engine, use, seed
        self.world, self.rank, self.accum = world, rank, accum
        self.run, self.peak_flops = run, peak_flops

    def step(self, take: Callable[[], object], number: int, key: tuple[int, ...]) -> dict:
        """Optimizer step `number` (1-based): `accum` micro-batches from take(), seeded by key -> its figures."""
        engine, use = self.engine, self.use
        lr = engine.lr()
        t0, wait, outs = time.perf_counter(), 0.0, []
        for micro in range(self.accum):
            tw = time.perf_counter()
            item = take()
            wait += time.perf_counter() - tw
            place = micro * self.world + self.rank
            generator = rng.generator(use.draw_stream, self.seed, *key, place)
            with rng.scoped(use.dropout_stream, self.seed, *key, place, device=engine.device):
                out = use(engine, item, generator)
            engine.backward(out.loss)
            if micro < self.accum - 1:
                engine.step()  # DeepSpeed counts the micro-step; the update waits for the boundary
            outs.append(out)
            if self.run.trace is not None:
                self.run.trace.write("".join(f"{number}\t{place}\t{k}\n" for k in out.keys))
        requests = self.run.stop_votes()
        total = self._reduce(outs, engine.module, requests)
        if total["bad"]:
            self._stop(outs, number)
        self.run.agree(number, {name: total[name] for name in requests})
        engine.step()  # the update
        seconds = time.perf_counter() - t0
        micro_batches = self.accum * self.world
        record = {"step": number, "loss": total["loss"] / micro_batches, "lr": lr, "grad_norm": engine.grad_norm(),
                  "clips": int(total["clips"]), "clips_per_s": total["clips"] / seconds}
        if outs[-1].audio_s is not None:
            record["audio_s_per_s"] = total["audio_s"] / seconds
        if outs[-1].views is not None:
            record.update(views=int(total["views"]), views_per_s=total["views"] / seconds)
        record.update({name: total[name] / micro_batches for name in sorted(outs[-1].parts)})
        if self.peak_flops and outs[-1].flops is not None:
            record["mfu"] = total["flops"] / self.world / seconds / self.peak_flops  # per process, against its peak
        record.update(data_wait=wait / seconds, step_s=seconds)
        return record

    def _reduce(self, outs: list[Micro], module: nn.Module, requests: dict[str, float]) -> dict[str, float]:
        """Every process's sums (loss, clips, audio, flops, views, parts, non-finite count, stop requests by signal) and
        its buffers' mean, in one all-reduce and one wait for the device."""
        device = outs[0].loss.device
        names = sorted(outs[0].parts)
        losses = torch.stack([o.loss.detach().double() for o in outs])  # [accum]
        host = [sum(o.clips for o in outs), sum(o.audio_s or 0.0 for o in outs), sum(o.flops or 0.0 for o in outs),
                sum(o.clips if o.views is None else o.views for o in outs)]
        parts = [torch.stack([torch.as_tensor(o.parts[n], device=device).detach().double() for o in outs]).sum()
                 for n in names]
        bad = (~torch.isfinite(losses)).sum().double()
        host += list(requests.values())
        figures = torch.stack([losses.sum(), *torch.tensor(host, dtype=torch.float64, device=device), *parts, bad])
        buffers = [b for b in module.buffers() if b.is_floating_point()] if self.world > 1 else []
        flat = torch.cat([figures, *(b.detach().double().reshape(-1).to(device) for b in buffers)])
        flat = dist.all_reduce_sum(flat)
        offset = len(figures)
        for b in buffers:
            b.copy_((flat[offset:offset + b.numel()] / self.world).view_as(b).to(b.dtype))
            offset += b.numel()
        values = flat[:len(figures)].tolist()  # the step's one wait for the device
        return dict(zip(["loss", "clips", "audio_s", "flops", "views", *requests, *names, "bad"], values))

    def _stop(self, outs: list[Micro], number: int) -> None:
        """A non-finite loss on some process: every process stops before the update, naming the step."""
        good = self.run.latest()
        mine = [i for i, o in enumerate(outs) if not torch.isfinite(o.loss.detach()).item()]
        out = outs[mine[0]] if mine else outs[0]
        where = f"micro-batch {mine[0]}; this process: loss " if mine else "another process; this process: loss "
        parts = "".join(f", {k} {float(v):.4g}" for k, v in out.parts.items())
        message = (f"{self.run.name}: non-finite loss at step {number} ({where}{float(out.loss.detach()):.4g}{parts}); "
                   f"stopped before updating the weights. The last good checkpoint is "
                   f"{good if good else 'none (no checkpoint yet)'}: lower optim.lr or raise schedule.warmup_steps, "
                   f"then --resume")
        self.run.event(message, step=number)
        raise NonFiniteLoss(message)
