"""The pretraining loop: `pretrain(cfg)` sets a run up, then steps; every entry point calls it.

    from maeast.pretrain import load_config, pretrain
    result = pretrain(load_config("pretrain_small", ["run.dir=runs/demo"]), deepspeed_config=None)

One optimizer step = `accumulation` micro-batches on each of the world's processes, so a step always
sees optim.global_batch clips (masked views: with model.views V, each micro-batch is data.batch_size / V
clips seen V times). The micro-batch at place (micro * world + rank) of step s gets its masks (every view's),
dropout and layerdrop from seeds derived from (run.seed, s, place), and the loader's stream is a
function of its slots ((rank, worker) pairs) too: the same global batch, and the same loss curve to
float tolerance, on 1 process with 2 workers as on 2 processes with 1 worker each. Resume is exact because every random
draw is a function of (seed, step, place) and the loader restores its position. The run folder, its
logger, cadence, stop (run.stop_at, or SIGTERM / SIGUSR1: a checkpoint at the step every process stops
after, then exit code 75), key trace and the one line of a dead process are maeast.train.run's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from maeast.features import get_config as get_fbank
from maeast.features.stats import corpus_features
from maeast.loaders import StreamingLoader, build_loader
from maeast.model import MAEAST
from maeast.model.flops import pretrain_flops
from maeast.pretrain.config import PretrainConfig
from maeast.pretrain.evaluate import eval_line, evaluate
from maeast.pretrain.export import model_meta, publish_encoder
from maeast.pretrain.probe import open_probe, probe_line
from maeast.pretrain.resume import Resumed, layerdrop_for_stage, resume_point
from maeast.train import distributed as dist
from maeast.train.checkpoint import universal_copy
from maeast.train.ds_config import deepspeed_config, read_zero_json, zero_stage
from maeast.train.layout import Layout
from maeast.train.mfu import peak_flops
from maeast.train.preempt import stop_requests
from maeast.train.run import Run, start
from maeast.train.trainer import Micro, Trainer
from maeast.errors import MaeastError


@dataclass
class PretrainResult:
    run_dir: Path
    step: int  # the last completed step
    checkpoint: Path | None  # the last checkpoint written
    encoder: Path | None  # RUN/encoder
    losses: list[float] = field(default_factory=list)  # the training loss of every step of this session
    eval: dict | None = None  # the last held-out evaluation
    seconds: float = 0.0


@dataclass
class Session:
    """What a pretraining session built before its first step."""

    cfg: PretrainConfig
    run: Run
    engine: object
    trainer: Trainer
    loader: object  # the data.backend's loader (maeast.loaders.build_loader)
    eval_loader: object  # a factory of fresh held-out loaders, or None
    probe: object  # maeast.pretrain.probe.OnlineProbe, or None
    features: object  # the fbank recipe the run trains on
    layout: Layout
    resumed: Resumed | None
    ds_config: dict = field(default_factory=dict)
    threads: int = 1
    step: int = 0
    samples: int = 0


def pretrain(cfg: PretrainConfig, deepspeed_config_path: str | Path | dict | None = None, resume: bool = False,
             console=None) -> PretrainResult:
    """Train (or continue, with resume: the --resume flag, else run.resume) the run in cfg.run.dir; every process
    of the world calls this. A SIGTERM or SIGUSR1 from here on stops every process after the same step, with a
    checkpoint there, and raises Preempted (maeast.train.preempt)."""
    start(cfg.run)
    started = time.perf_counter()
    with stop_requests(cfg.run.preempt_grace):  # a signal while the session opens: the first step stops
        s = open_session(cfg, deepspeed_config_path, resume, console)
        result = PretrainResult(s.run.dir, s.step, s.resumed.checkpoint if s.resumed else None, None)
        with s.run.session(s.step, cfg.last_step):
            announce(s, s.trainer.accum)
            steps(s, result)
            if result.checkpoint is not None and not s.run.preempted:  # preempted: the next session exports
                result.encoder = publish_encoder(result.checkpoint, s.run.dir)
                s.run.event(f"encoder exported to {result.encoder}", step=result.step)
    result.seconds = time.perf_counter() - started
    return result


def open_session(cfg: PretrainConfig, deepspeed_config_path, resume: bool, console) -> Session:
    """The engine, loaders, probe and run folder of a session, every input checked before anything is written."""
    from maeast.train.engine import Engine, to_universal  # deepspeed

    world, rank, device = dist.world_size(), dist.rank(), dist.device()
    threads = dist.set_threads(cfg.run.threads, cfg.data.num_workers * cfg.data.threads_per_worker)
    zero = deepspeed_config_path if isinstance(deepspeed_config_path, dict) else read_zero_json(deepspeed_config_path)
    ds_config = deepspeed_config(cfg.optim, cfg.data.batch_size, world, zero, device.type == "cuda",
                                 where=str(deepspeed_config_path or "default"))
    cfg = layerdrop_for_stage(cfg, zero_stage(ds_config))
    features = corpus_features(cfg.data.shards, cfg.data.fbank)  # normalized when `maeast shard stats` ran
    loader = build_loader(cfg.loader_config(), rank, world, features, device=device.type)  # bad shards: an error now
    eval_loader = (lambda: StreamingLoader(cfg.eval_loader_config(), 0, 1, features)) if cfg.eval.every else None
    if eval_loader is not None:
        eval_loader()  # a missing eval split is an error now, not at the first evaluation
    probe = open_probe(cfg.eval, features, zero_stage(ds_config), dist.is_main())  # its shards checked now
    run = Run(cfg.run, Path(cfg.run.dir), console, label="pretrain")
    layout = Layout.of(ds_config, world)
    resumed = resume_point(cfg, run, resume, ds_config, layout, loader)
    run.prepare({"config.yaml": cfg, "ds_config.json": ds_config})
    load_from = resumed.checkpoint if resumed else None
    if resumed and resumed.route == "universal":  # another layout: through DeepSpeed's universal checkpoint
        load_from = universal_copy(resumed.checkpoint, to_universal)
        ds_config = {**ds_config, "checkpoint": {"load_universal": True}}
    torch.manual_seed(cfg.run.seed)
    model = MAEAST(cfg.model)
    if cfg.model.compile:
        model.compile_blocks()
    engine = Engine(model, cfg.optim, cfg.schedule, ds_config)
    s = Session(cfg, run, engine, None, loader, eval_loader, probe, features, layout, resumed, ds_config, threads)
    if resumed:
        engine.load(load_from.parent, load_from.name)
        loader.load_state_dict(resumed.loader)
        s.step, s.samples = resumed.step, resumed.samples
    use = Pretraining(device, features.frame_shift_ms / 1000.0, cfg.model)
    s.trainer = Trainer(engine, use, cfg.run.seed, world, rank, ds_config["gradient_accumulation_steps"], run,
                        peak_flops=peak_flops(device))
    return s


def announce(s: Session, accum: int) -> None:
    """The session's first lines: where it starts, its batch, ZeRO stage, precision and threads, and how a
    resume on another layout continues."""
    cfg, ds_config, step, resumed = s.cfg, s.ds_config, s.step, s.resumed
    normalized = s.features.normalized and s.features != get_fbank(cfg.data.fbank)
    views = cfg.model.views
    batch = (f"{cfg.data.batch_size} = {cfg.optim.global_batch} clips" if views == 1 else
             f"{cfg.data.batch_size // views} clips x {views} masked views = {cfg.optim.global_batch} views "
             f"({cfg.clips_per_step} clips)")
    audio = (f"fairseq's max_tokens counts {cfg.global_batch_seconds:.0f} s of audio" if cfg.data.max_tokens else
             f"at most {cfg.global_batch_seconds:.0f} s of audio")
    if cfg.data.max_tokens:
        batch = f"up to {cfg.data.batch_size} clips (max_tokens {cfg.data.max_tokens}), {cfg.optim.global_batch} at the cap"
    s.run.event(f"{'resumed at' if resumed else 'started'} step {step} of {cfg.schedule.steps}: {s.layout.world_size} "
                f"process(es) x {accum} micro-batch(es) of {batch} per "
                f"step ({audio}), ZeRO stage {zero_stage(ds_config)}, "
                f"{'bf16' if ds_config['bf16']['enabled'] else 'fp32'} on {s.engine.device.type}, {s.threads} thread(s)"
                + (f", features normalized with the corpus's {s.features.name} statistics" if normalized else ""),
                step=step, world_size=s.layout.world_size, accumulation=accum, zero_stage=zero_stage(ds_config))
    if resumed and resumed.saved != s.layout:
        s.run.event(f"{resumed.checkpoint.name} was saved with {resumed.saved}; continued with {s.layout}"
                    + (" through DeepSpeed's universal checkpoint" if resumed.route == "universal" else ""), step=step)
    if resumed and resumed.redealt:
        s.run.event(resumed.redealt, step=step)


def steps(s: Session, result: PretrainResult) -> None:
    """Optimizer steps to cfg.last_step, with the evaluations, probes and checkpoints they are due for; a stop
    signal on any process ends them all after the same step, with a checkpoint there (the loader's state in it:
    the resume is exact)."""
    cfg, run, engine = s.cfg, s.run, s.engine
    stream = endless(s.loader)
    while s.step < cfg.last_step:
        record = s.trainer.step(stream.__next__, number=s.step + 1, key=(s.step,))
        s.step = record["step"]
        s.samples += record["clips"]
        record["samples"] = s.samples
        result.losses.append(record["loss"])
        run.log(record)
        if run.due(s.step, cfg.eval.every):
            result.eval = {"step": s.step, **evaluate(engine, cfg, s.eval_loader)}
            run.eval(result.eval, eval_line(result.eval))
        if s.probe is not None and run.due(s.step, cfg.eval.probe_every):
            probed = {"step": s.step, **s.probe.score(engine.module.encoder)}
            run.eval(probed, probe_line(probed), kind="probe")
        if run.due(s.step, cfg.run.save_every_steps) or run.stopping(s.step):
            state = {"step": s.step, "samples": s.samples, "world_size": s.layout.world_size,
                     "layout": s.layout.to_dict(), "loader": s.loader.state_dict()}
            extra = {"loss": record["loss"], **({"eval": result.eval} if result.eval else {})}
            result.checkpoint = run.save(engine, s.step, state, model_meta(cfg, s.features, s.step, s.samples, extra))
        result.step = s.step
        if run.stopping(s.step):  # run.stop_at (the last step anyway), or a stop signal: the run leaves Preempted
            break


@dataclass
class Pretraining:
    """Pretraining's use of the trainer: the model scores its own masked tokens."""

    device: torch.device
    hop_s: float  # seconds per fbank frame
    model: object  # the ModelConfig, for the FLOP count
    dropout_stream: str = "dropout"
    draw_stream: str = "masks"

    def __call__(self, engine, batch, generator: torch.Generator) -> Micro:
        frames = batch.frames()  # [B] on the CPU, before the batch moves
        batch = batch.to(self.device)  # a batch of waveforms (loader.fbank_on: device) gets its features here
        out = engine.forward(batch.features, batch.padding_mask, generator)  # model.views masks of each clip
        views = self.model.views
        return Micro(out.loss, len(batch), batch.keys, out.parts, int(frames.sum()) * self.hop_s,
                     pretrain_flops(self.model, frames), views=None if views == 1 else len(batch) * views)


def endless(loader):
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise MaeastError("the training loader yielded no batch in a whole epoch; check data.shards")
