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

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, TextIO

import torch

from maeast.configio import load_yaml
from maeast.engine import distributed as dist
from maeast.engine.checkpoint import (clear_partial, latest_checkpoint, load_train_state, model_meta,
                                      publish_encoder, save_checkpoint)
from maeast.engine.config import TrainConfig, build_config, diff_configs, save_config
from maeast.engine.ds_config import deepspeed_config, read_zero_json, zero_stage
from maeast.engine.evaluate import evaluate
from maeast.engine.logging import RunLogger, cut_log
from maeast.engine.optim import lr_at
from maeast.engine.setup import check_resumable, layerdrop_for_stage, sync_buffers, trace_keys, write_json
from maeast.errors import MaeastError
from maeast.features import get_config as get_fbank
from maeast.loaders import StreamingLoader
from maeast.loaders.sources import derive_seed
from maeast.model import MAEAST

TRAIN_STREAM, DROPOUT_STREAM = 1, 2


@dataclass
class PretrainResult:
    run_dir: Path
    step: int  # the last completed step
    checkpoint: Path | None  # the last checkpoint written
    encoder: Path | None  # RUN/encoder
    losses: list[float] = field(default_factory=list)  # the training loss of every step of this session
    eval: dict | None = None  # the last held-out evaluation
    seconds: float = 0.0


class NonFiniteLoss(MaeastError):
    """The loss became NaN or infinite; the run stopped before the bad step touched the weights."""


def pretrain(cfg: TrainConfig, deepspeed_config_path: str | Path | dict | None = None, resume: bool = False,
             console=None) -> PretrainResult:
    """Train (or continue, with resume) the run in cfg.run.dir; every process of the world calls this."""
    from maeast.engine.engine import Engine, init_distributed  # deepspeed only from here on

    init_distributed()
    started = time.perf_counter()
    world, rank, device = dist.world_size(), dist.rank(), dist.device()
    threads = dist.set_threads(cfg.run.threads, cfg.data.num_workers * cfg.data.threads_per_worker)
    zero = deepspeed_config_path if isinstance(deepspeed_config_path, dict) else read_zero_json(deepspeed_config_path)
    ds_config = deepspeed_config(cfg, world, zero, device.type == "cuda", where=str(deepspeed_config_path or "default"))
    accum = ds_config["gradient_accumulation_steps"]
    cfg = layerdrop_for_stage(cfg, zero_stage(ds_config))

    loader = StreamingLoader(cfg.data, rank, world)  # bad shards are an error before anything is written
    eval_loader = (lambda: StreamingLoader(cfg.eval_loader_config(), 0, 1)) if cfg.eval.every else None
    if eval_loader is not None:
        eval_loader()  # a missing eval split is an error now, not at the first evaluation
    run_dir = Path(cfg.run.dir)
    checkpoint = _prepare_run_dir(cfg, run_dir, resume, ds_config)
    torch.manual_seed(cfg.run.seed)
    engine = Engine(MAEAST(cfg.model), cfg, ds_config)

    step, samples = 0, 0
    if checkpoint is not None:
        engine.load(checkpoint.parent, checkpoint.name)
        state = load_train_state(checkpoint)
        check_resumable(state, world, checkpoint)
        loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        step, samples = int(state["step"]), int(state["samples"])
    if dist.is_main():
        cut_log(run_dir, step)
    trace = trace_keys(run_dir, rank, step) if cfg.run.trace_keys else None

    last = cfg.last_step
    logger = RunLogger(run_dir, step, last, dist.is_main(), console)
    logger.event(f"{'resumed at' if checkpoint else 'started'} step {step} of {cfg.schedule.steps}: {world} process(es) "
                 f"x {accum} micro-batch(es) of {cfg.data.batch_size} = {cfg.optim.global_batch} clips per step "
                 f"(at most {cfg.global_batch_seconds:.0f} s of audio), ZeRO stage {zero_stage(ds_config)}, "
                 f"{'bf16' if ds_config['bf16']['enabled'] else 'fp32'} on {device.type}, {threads} thread(s)",
                 step=step, world_size=world, accumulation=accum, zero_stage=zero_stage(ds_config))
    run = Session(cfg, engine, _endless(loader), logger, trace, run_dir, world, rank, device, accum,
                  get_fbank(cfg.data.fbank).frame_shift_ms / 1000.0)
    result = PretrainResult(run_dir, step, checkpoint, None)
    try:
        while step < last:
            record = train_step(run, step)
            step = record["step"]
            samples += record["clips"]
            record["samples"] = samples
            result.losses.append(record["loss"])
            logger.train(record, log=step % cfg.run.log_every == 0 or step == last)
            if cfg.eval.every and (step % cfg.eval.every == 0 or step == last):
                result.eval = {"step": step, **evaluate(engine, cfg, eval_loader)}
                logger.eval(result.eval)
            if step % cfg.run.save_every == 0 or step == last:
                if trace is not None:
                    trace.flush()
                state = {"step": step, "samples": samples, "world_size": world, "loader": loader.state_dict(),
                         "rng": _rng_state()}
                extra = {"loss": record["loss"], **({"eval": result.eval} if result.eval else {})}
                result.checkpoint = save_checkpoint(engine, run_dir, step, state, model_meta(cfg, step, samples, extra),
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
class Session:
    """What one optimizer step needs."""

    cfg: TrainConfig
    engine: object
    stream: Iterator
    logger: RunLogger
    trace: TextIO | None
    run_dir: Path
    world: int
    rank: int
    device: torch.device
    accum: int
    hop_s: float


def train_step(run: Session, step: int) -> dict:
    """One optimizer step (accum micro-batches on every process) after `step` done -> the step's record."""
    cfg, engine = run.cfg, run.engine
    t0 = time.perf_counter()
    wait, sums = 0.0, torch.zeros(5, dtype=torch.float64)  # loss, mse, infonce, clips, audio seconds
    for micro in range(run.accum):
        tw = time.perf_counter()
        batch = next(run.stream)
        wait += time.perf_counter() - tw
        slot = micro * run.world + run.rank
        torch.manual_seed(derive_seed(cfg.run.seed, DROPOUT_STREAM, step, slot))
        generator = torch.Generator().manual_seed(derive_seed(cfg.run.seed, TRAIN_STREAM, step, slot))
        out = engine.forward(batch.features.to(run.device), _to(batch.padding_mask, run.device), generator)
        _check_finite(out, step + 1, micro, run.run_dir, run.logger)
        engine.backward(out.loss)
        engine.step()
        frames = batch.features.shape[1] * len(batch) if batch.padding_mask is None else int((~batch.padding_mask).sum())
        sums += torch.tensor([float(out.loss.detach()), float(out.parts.get("mse", math.nan)),
                              float(out.parts.get("infonce", math.nan)), len(batch), frames * run.hop_s],
                             dtype=torch.float64)
        if run.trace is not None:
            run.trace.write("".join(f"{step + 1}\t{slot}\t{key}\n" for key in batch.keys))
    sync_buffers(engine.module)
    total = dist.all_reduce_sum(sums)
    seconds = time.perf_counter() - t0
    micro_batches = run.accum * run.world
    record = {"step": step + 1, "loss": total[0].item() / micro_batches, "lr": lr_at(step, cfg.optim.lr, cfg.schedule),
              "grad_norm": engine.grad_norm(), "clips": int(total[3]), "clips_per_s": total[3].item() / seconds,
              "audio_s_per_s": total[4].item() / seconds, "data_wait": wait / seconds, "step_s": seconds}
    for i, part in ((1, "mse"), (2, "infonce")):
        if not math.isnan(total[i].item()):
            record[part] = total[i].item() / micro_batches
    return record


def _prepare_run_dir(cfg: TrainConfig, run_dir: Path, resume: bool, ds_config: dict) -> Path | None:
    """Check the run directory against --resume, save the resolved configs; returns the checkpoint to resume."""
    checkpoint = latest_checkpoint(run_dir)
    if resume:
        if checkpoint is None:
            raise MaeastError(f"nothing to resume in {run_dir}: it has no complete checkpoint; run without --resume")
        saved = build_config(load_yaml(run_dir / "config.yaml"))
        changed = [k for k in diff_configs(saved, cfg) if k not in RESUME_FREE]
        if changed:
            raise MaeastError(f"--resume with a different config: {changed[0]} is {_get(cfg, changed[0])!r}, the run "
                              f"has {_get(saved, changed[0])!r}; resume with the run's config ({run_dir / 'config.yaml'})")
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


RESUME_FREE = ("run.stop_at", "run.log_every", "run.threads", "run.keep", "run.trace_keys", "eval.every",
               "eval.batches")
"""Keys a resumed run may change: they do not touch the loss curve."""


def _get(cfg, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _endless(loader):
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise MaeastError("the training loader yielded no batch in a whole epoch; check data.shards")


def _to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _check_finite(out, step: int, micro: int, run_dir: Path, logger: RunLogger) -> None:
    """Every process learns whether any process's loss is non-finite; all stop before the update."""
    bad = dist.all_reduce_sum(torch.tensor([0.0 if torch.isfinite(out.loss.detach()).item() else 1.0],
                                           dtype=torch.float64))
    if bad.item() == 0:
        return
    good = latest_checkpoint(run_dir)
    parts = ", ".join(f"{k} {float(v):.4g}" for k, v in out.parts.items())
    message = (f"non-finite loss at step {step} (micro-batch {micro}; this process: loss {float(out.loss.detach()):.4g}, "
               f"{parts}); stopped before updating the weights. The last good checkpoint is "
               f"{good if good else 'none (no checkpoint yet)'}: lower optim.lr or raise schedule.warmup_steps, "
               f"then --resume")
    logger.event(message, step=step)
    raise NonFiniteLoss(message)
