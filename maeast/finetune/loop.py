"""The fine-tuning run: `finetune(cfg)` prepares the run, then trains and scores every fold.

    from maeast.finetune import load_finetune_config, finetune
    cfg = load_finetune_config("finetune_small", task="esc50", checkpoint="runs/pretrain_small/encoder")
    result = finetune(cfg)            # result.summary == {"mean": ..., "std": ...} of the test metric

Every fold runs on maeast.train's Engine (the same DeepSpeed setup, ZeRO JSONs, checkpoints and logs), its one
Trainer and a Run (maeast.train.run: folder, log, stop, key trace, collective timeout), in the mode chosen
once (maeast.finetune.modes: a head on frozen features, or full fine-tuning), with schedule.name's schedule (maeast.train.optim: "linear", warmup then linear
decay to final_lr_scale x lr over the run's steps, or "step", SSAST's per-epoch decay); layer-wise lr
decay and head_lr are the optim section's group scales. With run.select "fold_mean" every fold is
reported at the epoch whose test metric averaged over the folds is best (maeast.finetune.select).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from maeast.artifacts import features_of, initial_encoder
from maeast.configio import from_dict, load_yaml, merge, to_dict
from maeast.train import distributed as dist
from maeast.train.config import accumulation, renamed
from maeast.train.ds_config import read_zero_json
from maeast.train.mfu import peak_flops
from maeast.train.preempt import stop_requests
from maeast.train.run import RESUME_FREE, check_resume, continues, resume_mode, start
from maeast.errors import MaeastError
from maeast.files import write_json
from maeast.features import FbankConfig
from maeast.features.stats import corpus_features
from maeast.finetune.cache import Pooled, encode
from maeast.finetune.config import RENAMED, FinetuneConfig, save_finetune_config
from maeast.finetune.custom import describe
from maeast.finetune.data import Corpus, Selection, open_corpus
from maeast.finetune.fold import is_finished, part_name, train_fold
from maeast.finetune.inputs import apply_input
from maeast.finetune.metrics import summarize
from maeast.finetune.select import select_over_folds
from maeast.finetune.tasks import Task, get_task
from maeast.finetune.utterances import evaluation_loader, whole_clips
from maeast.model import Encoder, ModelConfig
from maeast.finetune.modes import fold_schedule, mode_of  # noqa: F401 (fold_schedule: the fold's schedule)

RATES = ("dropout", "attn_dropout", "act_dropout", "layerdrop")

FINETUNE_FREE = ("run.save_every_epochs", "run.eval_every_epochs", "run.folds")
"""Fine-tuning's keys a resume may change (beside maeast.train.run.RESUME_FREE): when it saves and evaluates,
and which folds it runs."""


@dataclass
class RunContext:
    """What every fold of a run shares."""

    cfg: FinetuneConfig
    task: Task
    corpus: Corpus
    device: torch.device
    world: int
    rank: int
    model_cfg: object
    encoder_state: dict
    encoder_info: dict
    fbank: FbankConfig
    micro: int
    accum: int
    zero: dict
    resume: bool
    """Whether this session continues the run in the folder (run.resume and --resume, decided once)."""
    clip_seconds: float
    """Every clip is cropped or padded to this (data.clip_seconds, else the task's or the custom corpus's)."""
    folds: list[int | None] = field(default_factory=lambda: [None])
    """The folds this run trains, in order (None: the task's fixed splits)."""
    select: str = "last"
    """How the reported epoch is chosen: run.select, else "valid" where the task has a valid split, else "last"."""
    console: object = None
    caches: dict[str, Pooled] = field(default_factory=dict)
    mode: object = None
    """The mode (maeast.finetune.modes): a head on frozen features, or full fine-tuning."""
    peak_flops: float | None = None
    """The device's measured matmul FLOP/s (maeast.train.mfu), for the MFU figure of the training log."""

    def cached(self, split: str) -> Pooled:
        """The frozen encoder's pooled features of every clip of a split, computed once per run."""
        if split not in self.caches:
            encoder = Encoder(self.model_cfg)
            encoder.load_state_dict(self.encoder_state)
            encoder.requires_grad_(False)
            cfg = self.cfg
            loader = evaluation_loader(self.corpus, Selection(split), whole=whole_clips(self.corpus, split, False),
                                       batch_size=cfg.data.eval_batch_size, max_seconds=cfg.data.eval_max_seconds,
                                       clip_seconds=self.clip_seconds, fbank=self.fbank,
                                       stream=cfg.data)
            started = time.perf_counter()
            spec = self.mode.spec
            self.caches[split] = encode(encoder.to(self.device), loader, spec.weighted, self.device, spec.stats)
            if dist.is_main() and self.console is not None:
                self.console.print(f"cached the frozen encoder's features of {len(self.caches[split])} clips of split "
                                   f"{split} in {time.perf_counter() - started:.1f} s", highlight=False)
        return self.caches[split]


@dataclass
class FinetuneResult:
    run_dir: Path
    task: str
    metric: str
    folds: list[dict]
    seconds: float = 0.0
    stopped: bool = False
    """run.stop_at ended the session inside a fold: `folds` holds the folds finished before it."""

    @property
    def values(self) -> list[float]:
        return [f["test"][self.metric] for f in self.folds]

    @property
    def summary(self) -> dict[str, float]:
        return summarize(self.values)


def finetune(cfg: FinetuneConfig, deepspeed_config_path: str | Path | dict | None = None, resume: bool = False,
             console=None) -> FinetuneResult:
    """Fine-tune (or continue, with resume: the --resume flag, else run.resume) the run in cfg.run_dir; every
    process of the world calls this. With run.stop_at the session stops inside a fold (result.stopped;
    --resume continues it); a SIGTERM or SIGUSR1 stops it there too, after a checkpoint, raising Preempted."""
    start(cfg.run)
    started = time.perf_counter()
    with stop_requests(cfg.run.preempt_grace):  # between folds too: the next fold's first step stops
        ctx = open_context(cfg, deepspeed_config_path, resume, console)
        run_dir, task, results = cfg.run_dir, ctx.task, []
        for fold in ctx.folds:
            done = (is_finished(run_dir / part_name(fold)) if ctx.resume else None) or train_fold(ctx, fold)
            if done is None:  # run.stop_at: the session ends inside this fold
                return FinetuneResult(run_dir, task.name, task.metric, results, time.perf_counter() - started, True)
            results.append(done)
    if ctx.select == "fold_mean" and cfg.run.average_epochs is None:
        results = select_over_folds(results, task.metric)
        if dist.is_main():
            for r in results:  # a fold whose report did not move is left as it was (its file untouched)
                if json.loads(json.dumps(r)) != is_finished(run_dir / part_name(r["fold"])):
                    write_json(run_dir / part_name(r["fold"]) / "result.json", r)
    result = FinetuneResult(run_dir, task.name, task.metric, results, time.perf_counter() - started)
    if dist.is_main():
        write_json(run_dir / "results.json", {
            "task": task.name, "metric": task.metric, "frozen": cfg.run.freeze_encoder, "protocol": cfg.protocol,
            "checkpoint": cfg.checkpoint,
            **data_report(cfg, ctx.corpus, ctx.clip_seconds),
            "folds": [{"fold": r["fold"], task.metric: r["test"][task.metric], "epoch": r["epoch"],
                       "selected_by": r["selected_by"], "seconds": r["seconds"]} for r in results],
            **result.summary, "seconds": result.seconds})
    return result


def open_context(cfg: FinetuneConfig, deepspeed_config_path, resume: bool, console) -> RunContext:
    """The corpus, the initial encoder, its features, the batch and the mode every fold shares; the run folder
    checked against run.resume (and --resume) and its config written."""
    world, rank, device = dist.world_size(), dist.rank(), dist.device()
    dist.set_threads(cfg.run.threads, loader_threads=cfg.data.num_workers)  # an oversubscribed core stalls OpenMP
    corpus = open_corpus(get_task(cfg.task), cfg.shards, cfg.data.train_split, cfg.seeded_split,
                         cfg.data.balanced)
    task = corpus.task  # custom: resolved on the corpus (loss, metric, splits, clip length)
    clip_seconds = cfg.data.clip_seconds or task.clip_seconds or corpus.longest  # longest: no crop (whole clips)
    if corpus.plan is not None and dist.is_main() and console is not None:
        console.print(f"{describe(task, corpus.plan, len(corpus.labels))}; clips of {clip_seconds:g} s "
                      f"({'data.clip_seconds' if cfg.data.clip_seconds else corpus.clip_rule})", highlight=False,
                      soft_wrap=True)
    folds = choose_folds(cfg, corpus)
    rates = {name: getattr(cfg.model, name) for name in RATES}
    if cfg.model.input_norm is not None:  # the s3prl protocol's BatchNorm over padded frames, or ours
        rates["input_norm"] = cfg.model.input_norm
    state, model_cfg, info = initial_encoder(cfg.checkpoint, ModelConfig.from_dict({**cfg.model.random_init(), **rates}),
                                             cfg.run.seed)
    if cfg.model.input_norm is not None and model_cfg.input_norm == "none":
        raise MaeastError(f"model.input_norm {cfg.model.input_norm}: this encoder has no input BatchNorm (input_norm "
                          f"none, its features come normalized); drop model.input_norm")
    model_cfg = dataclasses.replace(model_cfg, **rates)
    fbank = run_features(cfg, corpus, info)
    model_cfg, state, fbank = apply_input(cfg.data.input, task, model_cfg, state, fbank, cfg.data.fbank)
    check_features(clip_seconds, model_cfg, fbank)
    micro = cfg.data.batch_size or max(cfg.optim.global_batch // world, 1)
    accum = accumulation(cfg.optim.global_batch, micro, world)
    zero = deepspeed_config_path if isinstance(deepspeed_config_path, dict) else read_zero_json(deepspeed_config_path)
    continuing = prepare_run_dir(cfg, cfg.run_dir, folds, resume, {
        "model": model_cfg.to_dict(), "fbank": fbank.name, "checkpoint": cfg.checkpoint, "micro_batch": micro,
        "accumulation": accum, "world_size": world})
    ctx = RunContext(cfg, task, corpus, device, world, rank, model_cfg, state, info, fbank, micro, accum, zero,
                     continuing, clip_seconds, folds, choose_select(cfg, task), console)
    ctx.mode = mode_of(cfg)(ctx)  # frozen or full: chosen here, once
    ctx.peak_flops = peak_flops(device)
    return ctx


def run_features(cfg: FinetuneConfig, corpus: Corpus, info: dict) -> FbankConfig:
    """The fbank recipe of the run: data.fbank's preset with the fine-tuning corpus's statistics, else the
    checkpoint's own (its statistics included), else mae_ast's with the corpus's."""
    if cfg.data.fbank:
        return corpus_features(corpus.dir, cfg.data.fbank)
    if cfg.checkpoint is not None:
        return features_of(info)
    return corpus_features(corpus.dir, "mae_ast")


def choose_select(cfg: FinetuneConfig, task: Task) -> str:
    """run.select, checked against the (resolved) task; None: "valid" where the task has a valid split, else "last"."""
    if cfg.run.select == "valid" and not task.valid_split:
        raise MaeastError(f"run.select valid: task {task.name} has no valid split here; use last"
                          + (" or fold_mean" if task.cross_validation else ""))
    return cfg.run.select or ("valid" if task.valid_split else "last")


def choose_folds(cfg: FinetuneConfig, corpus: Corpus) -> list[int | None]:
    task = corpus.task
    if not task.cross_validation:
        if cfg.run.folds is not None:
            raise MaeastError(f"task {task.name} has fixed train/test splits, no folds; drop --fold")
        return [None]
    present = corpus.folds
    if len(present) < 2:
        raise MaeastError(f"{corpus.dir} has clips of {len(present)} fold(s) {present}; cross-validation needs two or more")
    chosen = list(cfg.run.folds) if cfg.run.folds is not None else present
    missing = [f for f in chosen if f not in present]
    if missing:
        raise MaeastError(f"fold {missing[0]} is not in {corpus.dir} (its folds: {', '.join(map(str, present))})")
    return chosen


def data_report(cfg: FinetuneConfig, corpus: Corpus, clip_seconds: float) -> dict:
    """What results.json says of the data: the corpus, the loss, the clip length and why, and (custom) the splits."""
    out = {"corpus": corpus.index["corpus"], "shards": str(corpus.dir), "loss": corpus.task.loss,
           "clip_seconds": clip_seconds,
           "clip_seconds_from": "data.clip_seconds" if cfg.data.clip_seconds else corpus.clip_rule,
           "eval_whole": corpus.task.eval_whole}
    if corpus.plan is not None:
        out.update(splits=corpus.plan.splits,
                   seeded_split=dataclasses.asdict(corpus.plan.seeded) if corpus.plan.seeded else None)
    return out


def check_features(clip_seconds: float, model_cfg, features: FbankConfig) -> None:
    if features.n_mels != model_cfg.n_mels:
        raise MaeastError(f"data.fbank {features.name!r} gives {features.n_mels} mel bins but the encoder takes "
                          f"{model_cfg.n_mels}; use the checkpoint's own preset (leave data.fbank unset)")
    frames = features.num_frames(round(clip_seconds * 16000))
    if frames < model_cfg.patch_time:
        raise MaeastError(f"data.clip_seconds {clip_seconds} gives {frames} frames, fewer than one token "
                          f"({model_cfg.patch_time} frames)")


def prepare_run_dir(cfg: FinetuneConfig, run_dir: Path, folds: list, resume: bool, model: dict) -> bool:
    """Check the run folder against run.resume (and the --resume flag: maeast.train.run.continues, the rules of
    every recipe; a fold that has begun is what a folder holds, its config.yaml what --resume needs); save the
    resolved config and the encoder's description. Whether this session continues the run there."""
    started = [part_name(f) for f in folds if (run_dir / part_name(f) / "checkpoints").is_dir()
               or (run_dir / part_name(f) / "result.json").is_file()]
    has_config = (run_dir / "config.yaml").is_file()
    continuing = continues(resume_mode(cfg.run, resume), run_dir, started[0] if started else None,
                           "a fine-tuning run", "no config.yaml there", resumable=has_config)
    if continuing:
        if not has_config:
            raise MaeastError(f"nothing to resume in {run_dir}: no config.yaml there; run without --resume")
        check_resume(saved_config(run_dir), cfg, run_dir / "config.yaml", RESUME_FREE + FINETUNE_FREE)
    dist.barrier()
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_finetune_config(cfg, run_dir / "config.yaml")
        (run_dir / "model.json").write_text(json.dumps(model, indent=2) + "\n")
    dist.barrier()
    return continuing


def saved_config(run_dir: Path) -> FinetuneConfig:
    """The config a fine-tuning run folder was started with: dataclass defaults <- its config.yaml, which
    holds the whole resolved config of its day, so a key it lacks is younger than the run and takes the
    default, the behaviour before it (not today's task recipe). A frozen run saved before head.frozen
    existed trained MAE's linear probe, so that is what it says (a resume under today's default is refused)."""
    data = renamed(load_yaml(Path(run_dir) / "config.yaml"), RENAMED, saved=True)
    if (data.get("run") or {}).get("freeze_encoder") and "frozen" not in (data.get("head") or {}):
        data = merge(data, {"head": {"frozen": "linear_probe"}})
    return from_dict(FinetuneConfig, merge(to_dict(FinetuneConfig()), data))
