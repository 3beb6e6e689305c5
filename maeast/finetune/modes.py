"""Fine-tuning's two modes, chosen once (`mode_of`): a head on a frozen encoder's features, or the whole
classifier trained. Each owns its model, its sources, how a micro-batch becomes logits, and its export; the
fold loop (maeast.finetune.fold) runs either through the same Trainer and Run without asking which.

    FrozenHead     the encoder frozen (eval mode, no gradients); the engine trains the head alone on the
                   encoder's pooled per-layer features, cached once per run (run.cache_features) or
                   computed on the fly; no augmentation; head.frozen's protocol; optim.frozen_lr, epochs
                   schedule.frozen_epochs (else schedule.epochs)
    FullFinetune   encoder + head (maeast.model.Classifier) on fbank, with SSAST's augmentation (mixup,
                   SpecAugment, noise and roll); the head section's head; optim.lr with layer-wise decay
                   and head_lr; schedule.epochs

What only the config decides (the head, the protocol, the epochs, the learning rate, the run folder's name)
is a static method of each mode, which maeast.finetune.config reads through mode_of.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Callable

import torch

from maeast.artifacts import write_classifier
from maeast.errors import MaeastError
from maeast.finetune.augment import mixup, noise_roll, spec_augment
from maeast.finetune.data import class_weights, make_loader, selections
from maeast.finetune.evaluate import predict
from maeast.finetune.inputs import SsastTrain, read_label_file
from maeast.finetune.metrics import score
from maeast.finetune.select import eval_loss
from maeast.finetune.sources import CacheSource, LoaderSource
from maeast.finetune.utterances import evaluation_loader, whole_clips
from maeast.model import Encoder
from maeast.model.flops import classifier_flops
from maeast.model.heads import FROZEN_PROTOCOLS, Classifier, HeadSpec, head_record, make_head, pooled_layers
from maeast.train import distributed as dist
from maeast.train import rng
from maeast.train.config import ScheduleConfig
from maeast.train.optim import StepDecay


class Mode:
    """What both modes share: the fold's encoder and head, the engine, evaluation and export.

    Each mode adds what only the config decides, as static methods of cfg (maeast.finetune.config reads them
    through mode_of): head_spec, protocol, epochs, peak_lr, describe and title; and what a fold does in it:
    build, sources, augment, logits, flops, split (its weights into encoder and head) and plain."""

    name = ""

    def __init__(self, ctx):
        self.ctx, self.cfg = ctx, ctx.cfg
        self.spec = self.head_spec(self.cfg)

    @staticmethod
    def check(cfg) -> None:
        """Refuse, before any work, what the config asks and this mode cannot do."""

    @classmethod
    def total_steps(cls, cfg, steps_per_epoch: int) -> int:
        """Optimizer steps of a fold: schedule.steps, or its epochs x steps_per_epoch."""
        return cfg.schedule.steps or cls.epochs(cfg) * steps_per_epoch

    # ---- a fold ----
    def encoder(self) -> Encoder:
        """An encoder with the run's initial weights."""
        encoder = Encoder(self.ctx.model_cfg)
        encoder.load_state_dict(self.ctx.encoder_state)
        if self.cfg.model.compile:
            for block in encoder.transformer.blocks:
                block.compile()
        return encoder

    def head(self, encoder: Encoder, fold: int | None):
        """A fresh head, seeded by the fold."""
        torch.manual_seed(rng.seed("head_init", self.cfg.run.seed, fold or 0))
        return make_head(self.spec, encoder, len(self.ctx.corpus.labels))

    def engine(self, module: torch.nn.Module, schedule):
        """The engine over the module this mode trains (maeast.train.engine)."""
        from maeast.train.ds_config import deepspeed_config
        from maeast.train.engine import Engine  # deepspeed
        ctx = self.ctx
        ds_config = deepspeed_config(self.optim(), ctx.micro, ctx.world, ctx.zero, ctx.device.type == "cuda")
        return Engine(module, self.optim(), schedule, ds_config)

    def optim(self):
        return dataclasses.replace(self.cfg.optim, lr=self.peak_lr(self.cfg))

    def evaluate(self, call: Callable, module, evals: dict) -> dict[str, dict]:
        """Score `call` (an engine's forward or a plain module) on each evaluation source; `module` (the
        engine or the module) is put in eval mode meanwhile. Every process runs every batch."""
        module.eval()
        try:
            out = {}
            for name, source in evals.items():
                preds = predict(lambda x, pad: self.logits(call, x, pad), source.epoch(0))
                out[name] = {**score(self.ctx.task.metric, preds.logits, preds.labels),
                             "loss": eval_loss(preds.logits, preds.labels)}  # the tie-break of selection by valid
            return out
        finally:
            module.train()

    def export(self, weights: dict, encoder: Encoder, folder: Path, fold: int | None, best: dict,
               selected_by: str) -> None:
        """Write weights (the engine's full_state_dict, or the averaged ones) as a classifier folder."""
        ctx, cfg = self.ctx, self.cfg
        encoder_w, head_w = self.split(weights)
        info = {"task": ctx.task.name, "labels": ctx.corpus.labels, "multi_label": ctx.corpus.multi_label,
                "metric": ctx.task.metric, "head": head_record(self.spec, encoder, self.protocol(cfg)),
                "clip_seconds": ctx.clip_seconds, "shards": str(ctx.corpus.dir),
                "train_split": ctx.corpus.train_split,
                "seeded_split": dataclasses.asdict(cfg.seeded_split) if ctx.task.from_corpus else None,
                "fold": fold, "epoch": best["epoch"], "step": best["step"],
                "selected_by": selected_by, "frozen": self.name == "frozen", "checkpoint": cfg.checkpoint,
                "scores": {k: best[k][ctx.task.metric] for k in ("valid", "test") if k in best}}
        if dist.is_main():
            shutil.rmtree(folder, ignore_errors=True)
            pretraining = ctx.encoder_info.get("pretraining") or {"init": "random", "preset": cfg.model.preset,
                                                                   "seed": cfg.run.seed}
            write_classifier(folder, encoder_w, head_w, ctx.model_cfg, ctx.fbank, pretraining, info)
        dist.barrier()

    def fbank_sources(self, fold: int | None, encode: Callable | None):
        """(training source, {"valid"?, "test": evaluation source}) read from the shards; encode maps a Batch
        to what the engine's module takes (None: its fbank)."""
        ctx, cfg, corpus = self.ctx, self.cfg, self.ctx.corpus
        picks = selections(corpus, fold)
        common = dict(clip_seconds=ctx.clip_seconds, fbank=ctx.fbank, stream=cfg.data)
        waves = self.wave_mixup > 0.0
        if waves and cfg.data.backend != "stream":
            raise MaeastError(f"data.input ssast mixes waveforms (augment.mixup {cfg.augment.mixup}), which backend "
                              f"{cfg.data.backend} cannot; use data.backend stream, or augment.mixup 0")
        loader = make_loader(corpus, picks["train"], train=True, batch_size=ctx.micro, seed=self.order_seed(fold),
                             shuffle_buffer=cfg.data.shuffle_buffer, epoch_batches=self.epoch_batches(),
                             rank=ctx.rank, world_size=ctx.world, balanced=cfg.data.balanced,
                             fbank_on="device" if waves else "loader", from_start=cfg.data.input == "ssast",
                             **common)
        if waves or cfg.data.label_file:
            relabel = read_label_file(cfg.data.label_file, corpus.labels) if cfg.data.label_file else None
            loader = SsastTrain(loader, len(corpus.labels), self.wave_mixup, cfg.augment.mixup_alpha,
                                rng.seed("augment", cfg.run.seed, fold or 0), relabel)
        evals = {}
        for name, sel in picks.items():
            if name != "train":
                batches = evaluation_loader(corpus, sel, whole=whole_clips(corpus, sel.split, evaluation=True),
                                            batch_size=cfg.data.eval_batch_size,
                                            max_seconds=cfg.data.eval_max_seconds, **common)
                evals[name] = LoaderSource(batches, sel, corpus, ctx.device, encode)
        return LoaderSource(loader, picks["train"], corpus, ctx.device, encode), evals

    @property
    def wave_mixup(self) -> float:
        """The chance of SSAST's waveform mixup in the training loader: none here (a frozen encoder sees its
        clips unaugmented); FullFinetune's under data.input ssast."""
        return 0.0

    def order_seed(self, fold: int | None) -> int:
        return rng.seed("data_order", self.cfg.run.seed, fold or 0)

    def epoch_batches(self) -> int | None:
        """Micro-batches of a training epoch per process: run.eval_steps' steps, else data.epoch_batches."""
        run = self.cfg.run
        return run.eval_steps * self.ctx.accum if run.eval_steps else self.cfg.data.epoch_batches


class FrozenHead(Mode):
    """A head on the frozen encoder's pooled features (cached once, or computed on the fly)."""

    name = "frozen"

    @staticmethod
    def head_spec(cfg) -> HeadSpec:
        return FROZEN_PROTOCOLS[cfg.head.frozen]

    @staticmethod
    def check(cfg) -> None:
        if cfg.data.label_file and cfg.run.cache_features:
            raise MaeastError("data.label_file relabels the streamed training clips; a frozen encoder's feature cache "
                              "keeps the shards' labels: set --run.cache_features false")

    @staticmethod
    def protocol(cfg) -> str:
        return cfg.head.frozen

    @staticmethod
    def epochs(cfg) -> int:
        return cfg.schedule.frozen_epochs or cfg.schedule.epochs

    @staticmethod
    def peak_lr(cfg) -> float:
        return cfg.optim.frozen_lr

    @classmethod
    def total_steps(cls, cfg, steps_per_epoch: int) -> int:
        if cfg.schedule.frozen_epochs is not None:
            return cfg.schedule.frozen_epochs * steps_per_epoch
        return super().total_steps(cfg, steps_per_epoch)

    @staticmethod
    def describe(cfg) -> str:
        return "frozen encoder" + (", cached features" if cfg.run.cache_features else "")

    @staticmethod
    def title(cfg) -> str:
        return f"frozen, {cfg.head.frozen}"

    def optim(self):
        return dataclasses.replace(super().optim(), layer_decay=1.0, head_lr=1.0)

    def build(self, fold: int | None):
        """(the frozen encoder, on the device, and the head: the module the engine trains)."""
        encoder = self.encoder()
        head = self.head(encoder, fold)
        encoder.requires_grad_(False)
        return encoder.to(self.ctx.device).eval(), head

    def sources(self, fold: int | None, encoder: Encoder):
        if self.cfg.run.cache_features:
            return self.cached_sources(fold)

        def encode(batch):
            with torch.no_grad():
                return pooled_layers(encoder, batch.features, batch.padding_mask, self.spec.weighted,
                                     stats=self.spec.stats)
        return self.fbank_sources(fold, encode)

    def cached_sources(self, fold: int | None):
        """The head's sources on the run's cache of pooled features (maeast.finetune.cache)."""
        ctx, cfg, corpus = self.ctx, self.cfg, self.ctx.corpus
        picks = selections(corpus, fold)

        def cached(selection):
            pooled = ctx.cached(selection.split)
            return pooled.take(selection.rows(pooled.keys, corpus))
        pooled = cached(picks["train"])
        weights = torch.tensor(class_weights(corpus, picks["train"]))[pooled.labels] if cfg.data.balanced else None
        train = CacheSource(pooled, ctx.micro, ctx.world, ctx.rank, self.order_seed(fold), ctx.device,
                            weights=weights, batches=self.epoch_batches())
        evals = {name: CacheSource(cached(sel), cfg.data.eval_batch_size, 1, 0, 0, ctx.device, shuffle=False)
                 for name, sel in picks.items() if name != "train"}
        return train, evals

    def augment(self, x, pad, targets, generator):
        return x, pad, targets  # the encoder saw its clips unaugmented when the features were made

    def flops(self, item) -> None:
        return None  # the head's few FLOPs: no MFU figure

    def logits(self, call: Callable, x, pad, generator=None) -> torch.Tensor:
        return call(x)  # pooled features [B, L, D] -> the head's logits

    def split(self, weights: dict) -> tuple[dict, dict]:
        return self.ctx.encoder_state, weights

    def plain(self, fold: int | None) -> torch.nn.Module:
        """A fresh head on the device, for weights from elsewhere (the averaged ones)."""
        _, head = self.build(fold)
        return head.to(self.ctx.device)


class FullFinetune(Mode):
    """Encoder and head trained together on fbank, with SSAST's augmentation."""

    name = "full"

    @staticmethod
    def head_spec(cfg) -> HeadSpec:
        return HeadSpec(cfg.head.layers == "weighted", cfg.head.norm or "layer", cfg.head.projector)

    @staticmethod
    def protocol(cfg) -> str:
        return "full"

    @staticmethod
    def epochs(cfg) -> int:
        return cfg.schedule.epochs

    @staticmethod
    def peak_lr(cfg) -> float:
        return cfg.optim.lr

    @staticmethod
    def describe(cfg) -> str:
        return "full fine-tuning"

    @staticmethod
    def title(cfg) -> str:
        return "full"

    def build(self, fold: int | None):
        """(the encoder, and the classifier over it: the module the engine trains)."""
        encoder = self.encoder()
        return encoder, Classifier(encoder, self.head(encoder, fold), self.spec.weighted)

    def sources(self, fold: int | None, encoder: Encoder):
        return self.fbank_sources(fold, None)

    @property
    def wave_mixup(self) -> float:
        return self.cfg.augment.mixup if self.cfg.data.input == "ssast" else 0.0

    def augment(self, x, pad, targets, generator):
        """SSAST's order: mixup (data.input ssast: on waveforms, in the loader, SsastTrain), SpecAugment (ssast:
        masks at raw log-mel 0, FbankConfig.pad_value), noise and roll (noise in normalized units on
        normalized features)."""
        a, ssast = self.cfg.augment, self.cfg.data.input == "ssast"
        if not ssast:
            x, pad, targets = mixup(x, pad, targets, a.mixup, a.mixup_alpha, generator)
        x = spec_augment(x, pad, a.freq_mask, a.time_mask, generator, self.ctx.fbank.pad_value if ssast else None)
        if a.noise:
            x, pad = noise_roll(x, pad, 1.0 if self.ctx.fbank.norm_std is not None else None, generator)
        return x, pad, targets

    def logits(self, call: Callable, x, pad, generator=None) -> torch.Tensor:
        return call(x, pad, generator)  # fbank -> the classifier's logits

    def flops(self, item) -> int:
        """Training FLOPs of a micro-batch (maeast.model.flops), from its clips' frame counts on the CPU."""
        return classifier_flops(self.ctx.model_cfg, item.frames)

    def split(self, weights: dict) -> tuple[dict, dict]:
        return ({k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")},
                {k[len("head."):]: v for k, v in weights.items() if k.startswith("head.")})

    def plain(self, fold: int | None) -> torch.nn.Module:
        _, classifier = self.build(fold)
        return classifier.to(self.ctx.device)


def fold_schedule(cfg, total_steps: int, steps_per_epoch: int) -> ScheduleConfig | StepDecay:
    """The learning-rate schedule of a fold of total_steps optimizer steps (maeast.train.optim) as schedule.name
    asks: "linear" decays to final_lr_scale x the mode's peak, "step" is SSAST's per-epoch decay."""
    s, warmup = cfg.schedule, min(cfg.schedule.warmup_steps, total_steps - 1)
    if s.name == "step":
        return StepDecay(steps_per_epoch, s.decay_start, s.decay_every, s.decay_gamma, warmup)
    return ScheduleConfig(steps=total_steps, warmup_steps=warmup, power=1.0,
                          end_lr=mode_of(cfg).peak_lr(cfg) * s.final_lr_scale)


MODES = {True: FrozenHead, False: FullFinetune}
"""run.freeze_encoder -> the mode: the one place fine-tuning asks it."""


def mode_of(cfg) -> type[Mode]:
    return MODES[bool(cfg.run.freeze_encoder)]
