"""One fold of a fine-tuning run: build the model and its engine, train for the epochs, evaluate, export.

A fold starts from the run's initial encoder (every fold from the same weights) and a fresh head.
Each optimizer step = `accumulation` micro-batches on each process; the micro-batch in slot
(micro * world + rank) of step s draws its dropout, mixup, SpecAugment masks and noise from seeds derived
from (run.seed, fold, s, slot). Every run.eval_every epochs (and after the last) the model is scored on
the valid split (if the task has one) and on the test clips; the reported epoch is the best valid one,
or the last (ctx.select), or, with run.average_epochs, the model of the averaged weights
(maeast.finetune.select). Its classifier is exported to RUN/fold{k}/classifier and its scores to
result.json; a fold of a "fold_mean" run also keeps its test scores per epoch ("test_by_epoch").
A fold lasts FinetuneConfig.total_steps optimizer steps (schedule.steps, else its epochs); with
run.eval_steps an epoch is that many optimizer steps (the loader's a freshly shuffled pass each time,
the feature cache's draws running on across epochs).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from maeast.artifacts import latest_checkpoint
from maeast.train import distributed as dist
from maeast.train import rng
from maeast.train.checkpoint import load_train_state, save_checkpoint
from maeast.train.logging import RunLogger, cut_log
from maeast.train.trainer import Micro, Trainer
from maeast.errors import MaeastError
from maeast.files import write_json
from maeast.finetune.augment import mixup, noise_roll, spec_augment
from maeast.finetune.data import class_weights, make_loader, selections
from maeast.finetune.evaluate import predict
from maeast.finetune.metrics import score
from maeast.finetune.select import WeightSum, average_window
from maeast.finetune.sources import CacheSource, LoaderSource
from maeast.finetune.utterances import evaluation_loader, whole_clips
from maeast.model import Encoder
from maeast.model.heads import Classifier, Head, make_head, pooled_layers


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


def build_model(ctx, fold: int | None) -> tuple[Encoder, Head, torch.nn.Module]:
    """(encoder with the run's initial weights, a fresh head, the module the engine trains)."""
    cfg = ctx.cfg
    encoder = Encoder(ctx.model_cfg)
    encoder.load_state_dict(ctx.encoder_state)
    torch.manual_seed(rng.seed("head_init", cfg.run.seed, fold or 0))
    head = make_head(cfg.head_spec, encoder, len(ctx.corpus.labels))
    if cfg.run.freeze_encoder:
        encoder.requires_grad_(False)
        return encoder.to(ctx.device).eval(), head, head
    return encoder, head, Classifier(encoder, head, cfg.head_spec.weighted)


def sources(ctx, fold: int | None, encoder: Encoder) -> tuple[object, dict[str, object]]:
    """(training source, {"valid"?, "test": evaluation source}) for one fold."""
    cfg, corpus = ctx.cfg, ctx.corpus
    picks = selections(corpus, fold)
    weighted, stats = cfg.head_spec.weighted, cfg.head_spec.stats
    common = dict(clip_seconds=ctx.clip_seconds, fbank=ctx.fbank, workers=cfg.data.num_workers, on_error=cfg.data.on_error)
    epoch_batches = cfg.run.eval_steps * ctx.accum if cfg.run.eval_steps else cfg.data.epoch_batches
    if cfg.run.freeze_encoder and cfg.run.cache_features:
        def cached(selection):
            return ctx.cached(selection.split).take(selection.rows(ctx.cached(selection.split).keys, corpus))
        pooled = cached(picks["train"])
        weights = torch.tensor(class_weights(corpus, picks["train"]))[pooled.labels] if cfg.data.balanced else None
        train = CacheSource(pooled, ctx.micro, ctx.world, ctx.rank, rng.seed("data_order", cfg.run.seed, fold or 0),
                            ctx.device, weights=weights, batches=epoch_batches)
        evals = {name: CacheSource(cached(sel), cfg.data.eval_batch_size, 1, 0, 0, ctx.device, shuffle=False)
                 for name, sel in picks.items() if name != "train"}
        return train, evals
    encode = None
    if cfg.run.freeze_encoder:
        def encode(batch):
            with torch.no_grad():
                return pooled_layers(encoder, batch.features, batch.padding_mask, weighted, stats=stats)
    loader = make_loader(corpus, picks["train"], train=True, batch_size=ctx.micro,
                         seed=rng.seed("data_order", cfg.run.seed, fold or 0), shuffle_buffer=cfg.data.shuffle_buffer,
                         epoch_batches=epoch_batches, rank=ctx.rank, world_size=ctx.world, balanced=cfg.data.balanced,
                         **common)
    train = LoaderSource(loader, picks["train"], corpus, ctx.device, encode)
    evals = {}
    for name, sel in picks.items():
        if name != "train":
            eval_loader = evaluation_loader(corpus, sel, whole=whole_clips(corpus, sel.split, evaluation=True),
                                            batch_size=cfg.data.eval_batch_size, max_seconds=cfg.data.eval_max_seconds,
                                            **common)
            evals[name] = LoaderSource(eval_loader, sel, corpus, ctx.device, encode)
    return train, evals


def logits(engine, x: torch.Tensor, pad: torch.Tensor | None, frozen: bool,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """The engine's module on one micro-batch: the head alone (pooled features) or the whole classifier (fbank)."""
    return engine.forward(x) if frozen else engine.forward(x, pad, generator)


def evaluate_sources(engine, evals: dict, metric: str, frozen: bool) -> dict[str, dict]:
    """Score the engine's model on each evaluation source (every process runs every batch)."""
    engine.eval()
    try:
        out = {}
        for name, source in evals.items():
            preds = predict(lambda x, pad: logits(engine, x, pad, frozen), source.epoch(0))
            out[name] = score(metric, preds.logits, preds.labels)
    finally:
        engine.train()
    return out


@dataclass
class Classification:
    """Fine-tuning's use of the trainer: the classifier's logits against the (augmented) targets."""

    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    classes: int
    frozen: bool  # the engine trains the head alone, on pooled features (no augmentation)
    augment: object  # the config's augment section
    noise_unit: float | None = None  # augment.noise: 1.0 on dataset-normalized features, None on raw log-mel
    dropout_stream: str = "finetune_dropout"
    draw_stream: str = "augment"

    def __call__(self, engine, item, generator: torch.Generator) -> Micro:
        x, pad, labels, keys = item
        targets = targets_of(labels, self.classes)
        if not self.frozen:  # SSAST's order: mixup, SpecAugment, noise and roll
            a = self.augment
            x, pad, targets = mixup(x, pad, targets, a.mixup, a.mixup_alpha, generator)
            x = spec_augment(x, pad, a.freq_mask, a.time_mask, generator)
            if a.noise:
                x, pad = noise_roll(x, pad, self.noise_unit, generator)
        out = logits(engine, x, pad, self.frozen, generator)
        return Micro(self.loss_fn(out, targets), len(keys), keys)


def train_fold(ctx, fold: int | None) -> dict:
    """Fine-tune and score one fold (resuming from its latest checkpoint when ctx.resume); its result."""
    cfg, task, started = ctx.cfg, ctx.task, time.perf_counter()
    part = cfg.run_dir / part_name(fold)
    encoder, _, module = build_model(ctx, fold)
    train, evals = sources(ctx, fold, encoder)
    steps_per_epoch = len(train) // ctx.accum
    if steps_per_epoch == 0:
        raise MaeastError(f"fold {fold}: {len(train)} micro-batches per epoch is fewer than the {ctx.accum} of one "
                          f"optimizer step; lower optim.global_batch")
    last = cfg.total_steps(steps_per_epoch)
    epochs = -(-last // steps_per_epoch)  # the last one cut short where schedule.steps ends inside it
    engine = ctx.make_engine(module, last, steps_per_epoch)
    checkpoint = latest_checkpoint(part) if ctx.resume else None
    window = average_window(cfg.run.average_epochs, epochs)
    epoch, step, best, history, by_epoch, weights = 0, 0, None, [], {}, WeightSum()
    if checkpoint is not None:
        engine.load(checkpoint.parent, checkpoint.name)
        state = load_train_state(checkpoint)
        epoch, step, best, history = state["epoch"], state["step"], json.loads(state["best"]), json.loads(state["history"])
        by_epoch = json.loads(state.get("test_by_epoch", "{}"))
        weights = WeightSum.load(checkpoint)
        if dist.is_main():
            shutil.rmtree(part / "best", ignore_errors=True)
            if (checkpoint / "best").is_dir():
                shutil.copytree(checkpoint / "best", part / "best")
    if dist.is_main():
        part.mkdir(parents=True, exist_ok=True)
        cut_log(part, step)
    dist.barrier()
    logger = RunLogger(part, step, last, dist.is_main(), ctx.console, label=f"{ctx.task.name} {part.name}")
    mode = ("frozen encoder" + (", cached features" if cfg.run.cache_features else "")) if cfg.run.freeze_encoder \
        else "full fine-tuning"
    logger.event(f"{task.name} {part_name(fold)}: {'resumed at' if checkpoint else 'started'} epoch {epoch} of "
                 f"{epochs}, {steps_per_epoch} steps per epoch, {mode}", step=step, fold=fold)
    use = Classification(LOSSES[task.loss], len(ctx.corpus.labels), cfg.run.freeze_encoder, cfg.augment,
                         noise_unit=1.0 if ctx.fbank.norm_std is not None else None)
    trainer = Trainer(engine, use, cfg.run.seed, ctx.world, ctx.rank, ctx.accum, part, logger,
                      checkpoint=lambda: latest_checkpoint(part))
    try:
        while epoch < epochs:
            engine.train()
            stream = _Stream(train.epoch(epoch), ctx)
            for _ in range(min(steps_per_epoch, last - step)):
                if stream.peek() is None:
                    break  # one process skipped empty batches: this epoch ends a step early
                step += 1
                record = trainer.step(stream.take, number=step, key=(fold or 0, step))
                logger.train({**record, "epoch": epoch + 1}, log=step % cfg.run.log_every == 0 or step == last)
            stream.close()
            epoch += 1
            if window is not None and window[0] <= epoch <= window[1]:
                weights.add(engine.full_state_dict())  # a collective under ZeRO; every rank keeps the sum
            if epoch % cfg.run.eval_every == 0 or epoch == epochs:
                scores = evaluate_sources(engine, evals, task.metric, cfg.run.freeze_encoder)
                history.append({"epoch": epoch, "step": step, **{k: v[task.metric] for k, v in scores.items()}})
                logger.eval(history[-1], f"epoch {epoch} (step {step}): " + ", ".join(
                    f"{k} {task.metric} {100 * history[-1][k]:.2f}%" for k in ("valid", "test") if k in history[-1]))
                if ctx.select == "fold_mean":
                    by_epoch[str(epoch)] = scores["test"]
                if best is None or ctx.select != "valid" or scores["valid"][task.metric] > best["valid"][task.metric]:
                    best = {"epoch": epoch, "step": step, **scores}
                    exported = "last" if ctx.select == "fold_mean" else ctx.select  # the epoch over folds comes later
                    ctx.export(engine.full_state_dict(), encoder, part / "best", fold, best, exported)
            if epoch % cfg.run.save_every == 0 or epoch == epochs:
                state = {"epoch": epoch, "step": step, "best": json.dumps(best), "history": json.dumps(history),
                         "test_by_epoch": json.dumps(by_epoch)}
                saved = save_fold_checkpoint(engine, part, step, state, part / "best", cfg.run.keep,
                                             weights if window is not None else None)
                logger.event(f"checkpoint {saved}", step=step)
        selected_by = ctx.select
        if window is not None:
            best = averaged(ctx, encoder, evals, weights, window, part, fold, step)
            logger.event(f"weights of epochs {window[0]}-{window[1]} averaged: test {task.metric} "
                         f"{100 * best['test'][task.metric]:.2f}%", step=step)
            selected_by = "average"
    finally:
        logger.close()
    result = {"fold": fold, "metric": task.metric, "selected_by": selected_by,
              "epoch": best["epoch"], "step": best["step"], "test": best["test"], "valid": best.get("valid"),
              "history": history, "seconds": time.perf_counter() - started,
              "classifier": str(part / "classifier")}
    if window is not None:
        result["averaged"] = list(window)
    if by_epoch:
        result["test_by_epoch"] = by_epoch
    if dist.is_main():
        shutil.rmtree(part / "classifier", ignore_errors=True)
        (part / "best").rename(part / "classifier")
        write_json(part / "result.json", result)
    dist.barrier()
    return result


def averaged(ctx, encoder: Encoder, evals: dict, weights: WeightSum, window: tuple[int, int], part: Path,
             fold: int | None, step: int) -> dict:
    """Score and export the model of the averaged weights (every rank holds the sum and evaluates it)."""
    mean = weights.mean()
    _, _, plain = build_model(ctx, fold)
    plain.load_state_dict(mean)
    scores = evaluate_sources(_Plain(plain.to(ctx.device)), evals, ctx.task.metric, ctx.cfg.run.freeze_encoder)
    best = {"epoch": window[1], "step": step, **scores}
    ctx.export(mean, encoder, part / "best", fold, best, "average")
    return best


class _Plain:
    """A plain module where evaluate_sources expects an engine: the averaged model, in float32."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def eval(self) -> None:
        self.module.eval()

    def train(self) -> None:
        self.module.train()

    def forward(self, *inputs):
        return self.module(*inputs)


class _Stream:
    """An epoch's micro-batches with one batch of look-ahead, skipping empty ones where that is safe."""

    def __init__(self, batches, ctx):
        self.batches, self.ctx, self.ahead = iter(batches), ctx, None

    def peek(self):
        while self.ahead is None:
            item = next(self.batches, None)
            if item is None:
                if self.ctx.world * self.ctx.accum > 1:
                    raise MaeastError("the training loader ran out of clips before the epoch's steps; check the "
                                      "shards (bad samples skipped?)")
                return None
            if item[3]:
                self.ahead = item
            elif self.ctx.world * self.ctx.accum > 1:
                raise MaeastError("a training batch held only held-out-fold clips; raise data.shuffle_buffer so "
                                  "the folds mix (several processes must step in lockstep)")
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


def save_fold_checkpoint(engine, part_dir: Path, step: int, state: dict, best_dir: Path | None, keep: int,
                         weights: WeightSum | None = None) -> Path:
    """Every process calls this at the same step: the engine's checkpoint (DeepSpeed state, this
    process's state) plus best/, a copy of the best classifier so far, and the running weight sum of
    run.average_epochs."""
    def extra(folder: Path) -> None:
        if best_dir is not None and best_dir.is_dir():
            shutil.copytree(best_dir, folder / "best")
        if weights is not None:
            weights.save(folder)
    return save_checkpoint(engine, part_dir, step, state, None, keep, extra=extra)
