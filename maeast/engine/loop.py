"""The pretraining loop: `pretrain(cfg)` sets a run up, then steps; every entry point calls it.

    from maeast.engine import load_config, pretrain
    result = pretrain(load_config("pretrain_small", ["run.dir=runs/demo"]), deepspeed_config=None)

One optimizer step = `accumulation` micro-batches on each of the world's processes, so a step always
sees optim.global_batch clips. The micro-batch in slot (micro * world + rank) of step s gets its masks,
dropout and layerdrop from seeds derived from (run.seed, s, slot), and the loader's stream is a
function of its slots too: the same global batch, and the same loss curve to float tolerance, on 1
process with 2 workers as on 2 processes with 1 worker each. Resume is exact because every random
draw is a function of (seed, step, slot) and the loader restores its position.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from maeast.configio import load_yaml
from maeast.engine import distributed as dist
from maeast.artifacts import latest_checkpoint
from maeast.engine.checkpoint import clear_partial, load_train_state, model_meta, publish_encoder, save_checkpoint
from maeast.engine.config import TrainConfig, build_config, save_config
from maeast.engine.ds_config import deepspeed_config, read_zero_json, zero_stage
from maeast.engine.evaluate import eval_line, evaluate
from maeast.engine.logging import RunLogger, cut_log
from maeast.engine.trainer import Micro, Trainer, check_resume, check_world
from maeast.errors import MaeastError
from maeast.features import get_config as get_fbank
from maeast.features.stats import corpus_features
from maeast.loaders import StreamingLoader
from maeast.model import MAEAST
from maeast.files import write_json


@dataclass
class PretrainResult:
    run_dir: Path
    step: int  # the last completed step
    checkpoint: Path | None  # the last checkpoint written
    encoder: Path | None  # RUN/encoder
    losses: list[float] = field(default_factory=list)  # the training loss of every step of this session
    eval: dict | None = None  # the last held-out evaluation
    seconds: float = 0.0


def pretrain(cfg: TrainConfig, deepspeed_config_path: str | Path | dict | None = None, resume: bool = False,
             console=None) -> PretrainResult:
    """Train (or continue, with resume) the run in cfg.run.dir; every process of the world calls this."""
    from maeast.engine.engine import Engine, init_distributed  # deepspeed only from here on

    init_distributed()
    started = time.perf_counter()
    world, rank, device = dist.world_size(), dist.rank(), dist.device()
    threads = dist.set_threads(cfg.run.threads, cfg.data.num_workers * cfg.data.threads_per_worker)
    zero = deepspeed_config_path if isinstance(deepspeed_config_path, dict) else read_zero_json(deepspeed_config_path)
    ds_config = deepspeed_config(cfg.optim, cfg.data.batch_size, world, zero, device.type == "cuda",
                                 where=str(deepspeed_config_path or "default"))
    accum = ds_config["gradient_accumulation_steps"]
    cfg = layerdrop_for_stage(cfg, zero_stage(ds_config))

    features = corpus_features(cfg.data.shards, cfg.data.fbank)  # normalized when `maeast shard stats` ran
    loader = StreamingLoader(cfg.data, rank, world, features)  # bad shards are an error before anything is written
    eval_loader = (lambda: StreamingLoader(cfg.eval_loader_config(), 0, 1, features)) if cfg.eval.every else None
    if eval_loader is not None:
        eval_loader()  # a missing eval split is an error now, not at the first evaluation
    run_dir = Path(cfg.run.dir)
    checkpoint = _prepare_run_dir(cfg, run_dir, resume, ds_config)
    torch.manual_seed(cfg.run.seed)
    engine = Engine(MAEAST(cfg.model), cfg.optim, cfg.schedule, ds_config)

    step, samples = 0, 0
    if checkpoint is not None:
        engine.load(checkpoint.parent, checkpoint.name)
        state = load_train_state(checkpoint)
        check_world(state, world, checkpoint)
        loader.load_state_dict(state["loader"])
        step, samples = int(state["step"]), int(state["samples"])
    if dist.is_main():
        cut_log(run_dir, step)
    trace = trace_keys(run_dir, rank, step) if cfg.run.trace_keys else None

    last = cfg.last_step
    logger = RunLogger(run_dir, step, last, dist.is_main(), console)
    logger.event(f"{'resumed at' if checkpoint else 'started'} step {step} of {cfg.schedule.steps}: {world} process(es) "
                 f"x {accum} micro-batch(es) of {cfg.data.batch_size} = {cfg.optim.global_batch} clips per step "
                 f"(at most {cfg.global_batch_seconds:.0f} s of audio), ZeRO stage {zero_stage(ds_config)}, "
                 f"{'bf16' if ds_config['bf16']['enabled'] else 'fp32'} on {device.type}, {threads} thread(s)"
                 + (f", features normalized with the corpus's {features.name} statistics" if features.normalized
                    and features != get_fbank(cfg.data.fbank) else ""),
                 step=step, world_size=world, accumulation=accum, zero_stage=zero_stage(ds_config))
    trainer = Trainer(engine, Pretraining(device, features.frame_shift_ms / 1000.0), cfg.run.seed,
                      world, rank, accum, run_dir, logger, trace, checkpoint=lambda: latest_checkpoint(run_dir))
    stream = _endless(loader)
    result = PretrainResult(run_dir, step, checkpoint, None)
    try:
        while step < last:
            record = trainer.step(stream.__next__, number=step + 1, key=(step,))
            step = record["step"]
            samples += record["clips"]
            record["samples"] = samples
            result.losses.append(record["loss"])
            logger.train(record, log=step % cfg.run.log_every == 0 or step == last)
            if cfg.eval.every and (step % cfg.eval.every == 0 or step == last):
                result.eval = {"step": step, **evaluate(engine, cfg, eval_loader)}
                logger.eval(result.eval, eval_line(result.eval))
            if step % cfg.run.save_every == 0 or step == last:
                if trace is not None:
                    trace.flush()
                state = {"step": step, "samples": samples, "world_size": world, "loader": loader.state_dict()}
                extra = {"loss": record["loss"], **({"eval": result.eval} if result.eval else {})}
                result.checkpoint = save_checkpoint(engine, run_dir, step, state, model_meta(cfg, features, step, samples, extra),
                                                    cfg.run.keep)
                logger.event(f"checkpoint {result.checkpoint}", step=step)
            result.step = step
        if result.checkpoint is not None:
            result.encoder = publish_encoder(result.checkpoint, run_dir)
            logger.event(f"encoder exported to {result.encoder}", step=step)
    finally:
        logger.close()
        if trace is not None:
            trace.close()
    result.seconds = time.perf_counter() - started
    return result


@dataclass
class Pretraining:
    """Pretraining's use of the trainer: the model scores its own masked tokens."""

    device: torch.device
    hop_s: float  # seconds per fbank frame
    dropout_stream: str = "dropout"
    draw_stream: str = "masks"

    def __call__(self, engine, batch, generator: torch.Generator) -> Micro:
        pad = None if batch.padding_mask is None else batch.padding_mask.to(self.device)
        out = engine.forward(batch.features.to(self.device), pad, generator)
        frames = batch.features.shape[1] * len(batch) if pad is None else int((~batch.padding_mask).sum())
        return Micro(out.loss, len(batch), batch.keys, out.parts, frames * self.hop_s)


def _prepare_run_dir(cfg: TrainConfig, run_dir: Path, resume: bool, ds_config: dict) -> Path | None:
    """Check the run directory against --resume, save the resolved configs; returns the checkpoint to resume."""
    checkpoint = latest_checkpoint(run_dir)
    if resume:
        if checkpoint is None:
            raise MaeastError(f"nothing to resume in {run_dir}: it has no complete checkpoint; run without --resume")
        check_resume(build_config(load_yaml(run_dir / "config.yaml")), cfg, run_dir / "config.yaml")
    elif checkpoint is not None:
        raise MaeastError(f"{run_dir} already holds a run (checkpoint {checkpoint.name}); pass --resume to continue it "
                          f"or set run.dir to a new folder")
    dist.barrier()
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        clear_partial(run_dir)
        save_config(cfg, run_dir / "config.yaml")
        write_json(run_dir / "ds_config.json", ds_config)
    dist.barrier()
    return checkpoint if resume else None


def _endless(loader):
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise MaeastError("the training loader yielded no batch in a whole epoch; check data.shards")


def layerdrop_for_stage(cfg: TrainConfig, stage: int) -> TrainConfig:
    """ZeRO-3 gathers each layer's weights in a module order that must agree on every process, and
    DeepSpeed stops the run when it does not ("Detected a disagreement on list contents between rank0
    and rank1"). Layerdrop draws its skipped layers with the micro-batch's generator, which differs
    per process, so under ZeRO-3 it is turned off, with a warning."""
    if stage != 3 or (cfg.model.layerdrop == 0 and cfg.model.decoder_layerdrop == 0):
        return cfg
    if dist.is_main():
        warnings.warn(f"ZeRO-3: layerdrop {cfg.model.layerdrop} and decoder_layerdrop {cfg.model.decoder_layerdrop} "
                      f"turned off (ZeRO-3 needs every process to run the same layers); use ZeRO-1 or -2 to keep it",
                      stacklevel=2)
    model = dataclasses.replace(cfg.model, layerdrop=0.0, decoder_layerdrop=0.0)
    return dataclasses.replace(cfg, model=model)


def trace_keys(run_dir: Path, rank: int, step: int):
    """RUN/keys/rank{r}.tsv (step, slot, key per line), cut back to `step` on resume; an open file."""
    path = Path(run_dir) / "keys" / f"rank{rank}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        kept = [line for line in path.read_text().splitlines(keepends=True)
                if line.endswith("\n") and int(line.split("\t", 1)[0]) <= step]
        path.write_text("".join(kept))
    return open(path, "a")
