"""One fold of a fine-tuning run: its mode's model and sources, an engine, the Run, epochs, evaluation, export.

A fold starts from the run's initial encoder (every fold from the same weights) and a fresh head. Each
optimizer step = `accumulation` micro-batches on each process; the micro-batch at place (micro * world +
rank) of step s draws its dropout, mixup, SpecAugment masks and noise from seeds derived from (run.seed,
fold, s, place). Every run.eval_every_epochs epochs (and after the last) the model is scored on the valid split
(if the task has one) and on the test clips; the reported epoch is the best valid one, or the last
(ctx.select), or, with run.average_epochs, the model of the averaged weights (maeast.finetune.select).
Its classifier is exported to RUN/fold{k}/classifier and its scores to result.json; a fold of a "fold_mean"
run also keeps its test scores per epoch ("test_by_epoch"). A fold lasts its mode's total_steps optimizer
steps (schedule.steps, else its epochs); with run.eval_steps an epoch is that many optimizer steps (the
loader's a freshly shuffled pass each time, the feature cache's draws running on across epochs).

The fold's folder is a maeast.train.run.Run: its log, checkpoints, key trace (run.trace_keys), the stop
after run.stop_at steps or at a stop signal (SIGTERM, SIGUSR1: every process after the same step; a
checkpoint inside the epoch; --resume or run.resume auto continues there, the loader where it was) and
the one line of a dead process (run.collective_timeout) are the Run's.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from maeast.errors import MaeastError
from maeast.files import write_json
from maeast.finetune.modes import fold_schedule
from maeast.finetune.select import WeightSum, average_window, better_on_valid, valid_choice
from maeast.train import distributed as dist
from maeast.train.checkpoint import load_train_state
from maeast.train.run import Run
from maeast.train.trainer import Micro, Trainer


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy with (possibly mixed) target distributions [B, C]."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), targets)


LOSSES = {"ce": soft_cross_entropy, "bce": binary_cross_entropy}


def targets_of(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Labels [B] class ids or [B, C] multi-hot -> float targets [B, C]."""
    return labels.float() if labels.ndim == 2 else F.one_hot(labels, classes).float()


def part_name(fold: int | None) -> str:
    return "main" if fold is None else f"fold{fold}"


@dataclass
class Classification:
    """Fine-tuning's use of the trainer: the mode's logits against the (augmented) targets."""

    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    classes: int
    mode: object  # maeast.finetune.modes.Mode
    dropout_stream: str = "finetune_dropout"
    draw_stream: str = "augment"

    def __call__(self, engine, item, generator: torch.Generator) -> Micro:
        x, pad, targets = self.mode.augment(item.x, item.padding_mask, targets_of(item.labels, self.classes),
                                            generator)
        out = self.mode.logits(engine.forward, x, pad, generator)
        return Micro(self.loss_fn(out, targets), len(item.keys), item.keys, flops=self.mode.flops(item))


@dataclass
class FoldState:
    """Where a fold is, saved with each of its checkpoints (beside the engine's state)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    taken: int = 0  # optimizer steps of the current epoch completed (a checkpoint inside an epoch: run.stop_at)
    best: dict | None = None
    history: list = field(default_factory=list)
    by_epoch: dict = field(default_factory=dict)
    loader: dict | None = None  # the training loader's state, inside an epoch
    weights: WeightSum = field(default_factory=WeightSum)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "taken": self.taken, "best": json.dumps(self.best),
                "history": json.dumps(self.history), "test_by_epoch": json.dumps(self.by_epoch),
                **({"loader": self.loader} if self.loader is not None else {})}

    @classmethod
    def load(cls, checkpoint: Path) -> "FoldState":
        s = load_train_state(checkpoint)
        return cls(s["epoch"], s["step"], int(s.get("taken", 0)), json.loads(s["best"]), json.loads(s["history"]),
                   json.loads(s.get("test_by_epoch", "{}")), s.get("loader"), WeightSum.load(checkpoint))


class Fold:
    """One fold's model, sources, engine and Run, and where it is."""

    def __init__(self, ctx, fold: int | None):
        self.ctx, self.fold, self.mode = ctx, fold, ctx.mode
        self.part = ctx.cfg.run_dir / part_name(fold)
        self.encoder, self.module = self.mode.build(fold)
        self.train_source, self.evals = self.mode.sources(fold, self.encoder)
        self.steps_per_epoch = len(self.train_source) // ctx.accum
        if self.steps_per_epoch == 0:
            raise MaeastError(f"fold {fold}: {len(self.train_source)} micro-batches per epoch is fewer than the "
                              f"{ctx.accum} of one optimizer step; lower optim.global_batch")
        self.last = self.mode.total_steps(ctx.cfg, self.steps_per_epoch)
        self.epochs = -(-self.last // self.steps_per_epoch)  # the last one cut short where schedule.steps ends in it
        self.window = average_window(ctx.cfg.run.average_epochs, self.epochs)
        self.engine = self.mode.engine(self.module, fold_schedule(ctx.cfg, self.last, self.steps_per_epoch))
        self.run = Run(ctx.cfg.run, self.part, ctx.console, label=f"{ctx.task.name} {self.part.name}")
        checkpoint = self.run.latest() if ctx.resume else None
        self.state, self.resumed = FoldState(), checkpoint is not None
        if checkpoint is not None:
            self.engine.load(checkpoint.parent, checkpoint.name)
            self.state = FoldState.load(checkpoint)
            if dist.is_main():
                shutil.rmtree(self.part / "best", ignore_errors=True)
                if (checkpoint / "best").is_dir():
                    shutil.copytree(checkpoint / "best", self.part / "best")
        dist.barrier()
        use = Classification(LOSSES[ctx.task.loss], len(ctx.corpus.labels), self.mode)
        self.trainer = Trainer(self.engine, use, ctx.cfg.run.seed, ctx.world, ctx.rank, ctx.accum, self.run,
                               peak_flops=ctx.peak_flops)

    def announce(self) -> None:
        st = self.state
        where = (f"resumed at epoch {st.epoch}" + (f", step {st.taken} of it" if st.taken else "")
                 if self.resumed else f"started epoch {st.epoch}")
        self.run.event(f"{self.ctx.task.name} {part_name(self.fold)}: {where} of {self.epochs}, "
                       f"{self.steps_per_epoch} steps per epoch, {self.mode.describe(self.ctx.cfg)}",
                       step=st.step, fold=self.fold)

    def train(self) -> bool:
        """Epochs to the fold's last step; True when run.stop_at or a stop signal (run.stopping) stopped the
        session inside the fold, after a checkpoint (inside the epoch: with the loader's place in it)."""
        st, run = self.state, self.run
        while st.epoch < self.epochs:
            self.engine.train()
            stream = _Stream(self.train_source.epoch(st.epoch, st.taken * self.ctx.accum, st.loader), self.ctx)
            for _ in range(min(self.steps_per_epoch - st.taken, self.last - st.step)):
                if stream.peek() is None:
                    break  # the loader ran out (bad samples skipped): this epoch ends a step early
                st.step, st.taken = st.step + 1, st.taken + 1
                record = self.trainer.step(stream.take, number=st.step, key=(self.fold or 0, st.step))
                run.log(record, epoch=st.epoch + 1)
                if run.stopping(st.step) and st.taken < self.steps_per_epoch and st.step < self.last:
                    st.loader = self.train_source.state_dict()
                    stream.close()
                    self.save()
                    return True
            stream.close()
            st.epoch, st.taken, st.loader = st.epoch + 1, 0, None
            self.end_epoch()
            if run.stopping(st.step) and st.epoch < self.epochs:
                return True
        return False

    def end_epoch(self) -> None:
        """After an epoch: the weight sum of run.average_epochs, the evaluation and the checkpoint when due."""
        st, cfg, task = self.state, self.ctx.cfg, self.ctx.task
        if self.window is not None and self.window[0] <= st.epoch <= self.window[1]:
            st.weights.add(self.engine.full_state_dict())  # a collective under ZeRO; every rank keeps the sum
        if self.run.due(st.epoch, cfg.run.eval_every_epochs, last=self.epochs):
            scores = self.mode.evaluate(self.engine.forward, self.engine, self.evals)
            st.history.append({"epoch": st.epoch, "step": st.step, **{k: v[task.metric] for k, v in scores.items()},
                               **({"valid_loss": scores["valid"]["loss"]} if "valid" in scores else {})})
            self.run.eval(st.history[-1], f"epoch {st.epoch} (step {st.step}): " + ", ".join(
                f"{k} {task.metric} {100 * st.history[-1][k]:.2f}%" for k in ("valid", "test") if k in st.history[-1]))
            self.keep_best(scores)
        if self.run.due(st.epoch, cfg.run.save_every_epochs, last=self.epochs) or self.run.stopping(st.step):
            self.save()

    def keep_best(self, scores: dict) -> None:
        st, select, metric = self.state, self.ctx.select, self.ctx.task.metric
        if select == "fold_mean":
            st.by_epoch[str(st.epoch)] = scores["test"]
        if select != "valid" or better_on_valid(scores, st.best, metric):  # ties: the lower valid loss
            st.best = {"epoch": st.epoch, "step": st.step, **scores}
            exported = "last" if select == "fold_mean" else select  # the epoch over folds comes later
            self.mode.export(self.engine.full_state_dict(), self.encoder, self.part / "best", self.fold, st.best,
                             exported)

    def save(self) -> None:
        """Every process: the engine's checkpoint and the fold's state, with best/ (a copy of the best classifier
        so far) and the running weight sum of run.average_epochs."""
        best_dir, weights = self.part / "best", self.state.weights if self.window is not None else None

        def extra(folder: Path) -> None:
            if best_dir.is_dir():
                shutil.copytree(best_dir, folder / "best")
            if weights is not None:
                weights.save(folder)
        self.run.save(self.engine, self.state.step, self.state.to_dict(), extra=extra)

    def finish(self) -> tuple[dict, str]:
        """The reported scores and how they were chosen: the selected epoch's, or the averaged weights'."""
        if self.window is None:
            return self.state.best, self.ctx.select
        mean = self.state.weights.mean()
        plain = self.mode.plain(self.fold)
        plain.load_state_dict(mean)
        scores = self.mode.evaluate(plain, plain, self.evals)
        best = {"epoch": self.window[1], "step": self.state.step, **scores}
        self.mode.export(mean, self.encoder, self.part / "best", self.fold, best, "average")
        self.run.event(f"weights of epochs {self.window[0]}-{self.window[1]} averaged: test {self.ctx.task.metric} "
                       f"{100 * best['test'][self.ctx.task.metric]:.2f}%", step=self.state.step)
        return best, "average"


def train_fold(ctx, fold: int | None) -> dict | None:
    """Fine-tune and score one fold (resuming from its latest checkpoint when ctx.resume); its result, or None
    when run.stop_at stopped the session inside it (a stop signal: the session raises Preempted)."""
    started = time.perf_counter()
    f = Fold(ctx, fold)
    with f.run.session(f.state.step, f.last):
        f.announce()
        if f.train() or f.run.preempted:  # preempted at the fold's last step: saved; the next session finishes it
            return None
        best, selected_by = f.finish()
    result = {"fold": fold, "metric": ctx.task.metric, "selected_by": selected_by,
              "epoch": best["epoch"], "step": best["step"], "test": best["test"], "valid": best.get("valid"),
              "history": f.state.history, "seconds": time.perf_counter() - started,
              "classifier": str(f.part / "classifier")}
    if selected_by == "valid":
        result["choice"] = valid_choice(f.state.history, ctx.task.metric)
    if f.window is not None:
        result["averaged"] = list(f.window)
    if f.state.by_epoch:
        result["test_by_epoch"] = f.state.by_epoch
    if dist.is_main():
        shutil.rmtree(f.part / "classifier", ignore_errors=True)
        (f.part / "best").rename(f.part / "classifier")
        write_json(f.part / "result.json", result)
    dist.barrier()
    return result


class _Stream:
    """An epoch's micro-batches with one batch of look-ahead (the loader keeps only the selection's clips and never
    yields an empty batch: a batch of which no clip decodes gives way to the next)."""

    def __init__(self, batches, ctx):
        self.batches, self.ctx, self.ahead = iter(batches), ctx, None

    def peek(self):
        """The next micro-batch, or None where the epoch ends early (one process without accumulation only)."""
        if self.ahead is None:
            self.ahead = next(self.batches, None)
            if self.ahead is None and self.ctx.world * self.ctx.accum > 1:
                raise MaeastError("the training loader ran out of clips before the epoch's steps; check the "
                                  "shards (bad samples skipped?)")
        return self.ahead

    def close(self) -> None:
        """Stop the epoch's loader (and its workers) when the epoch ends before the loader does."""
        getattr(self.batches, "close", lambda: None)()

    def take(self):
        item = self.peek()
        if item is None:
            raise MaeastError("the training loader ran out of clips in the middle of an optimizer step")
        self.ahead = None
        return item


def is_finished(part: Path) -> dict | None:
    """A fold's result.json, if it finished."""
    file = part / "result.json"
    return json.loads(file.read_text()) if file.is_file() else None
