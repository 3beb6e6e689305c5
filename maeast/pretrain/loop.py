"""The pretraining loop: `pretrain(cfg)` sets a run up, then steps; every entry point calls it.

    from maeast.pretrain import load_config, pretrain
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
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from maeast.configio import load_yaml
from maeast.train import distributed as dist
from maeast.artifacts import latest_checkpoint
from maeast.train.checkpoint import (clear_partial, load_train_states, model_meta, publish_encoder, save_checkpoint,
                                     universal_copy)
from maeast.pretrain.config import PretrainConfig, build_config, save_config
from maeast.train.ds_config import deepspeed_config, read_zero_json, zero_stage
from maeast.pretrain.evaluate import eval_line, evaluate
from maeast.train.layout import Layout, read_run_ds_config, resume_route, saved_layout
from maeast.train.logging import RunLogger, cut_log
from maeast.pretrain.probe import open_probe, probe_line
from maeast.train.trainer import RESUME_FREE, Micro, Trainer, check_resume
from maeast.errors import MaeastError
from maeast.features import get_config as get_fbank
from maeast.features.stats import corpus_features
from maeast.loaders import StreamingLoader
from maeast.loaders.elastic import loader_quotas, regroup, rest_line
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


def pretrain(cfg: PretrainConfig, deepspeed_config_path: str | Path | dict | None = None, resume: bool = False,
             console=None) -> PretrainResult:
    """Train (or continue, with resume) the run in cfg.run.dir; every process of the world calls this."""
    from maeast.train.engine import Engine, init_distributed, to_universal  # deepspeed only from here on

    init_distributed(cfg.run.collective_timeout)
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
    probe = open_probe(cfg.eval, features, zero_stage(ds_config), dist.is_main())  # its shards checked now
    run_dir = Path(cfg.run.dir)
    layout = Layout.of(ds_config, world)
    resumed = _prepare_run_dir(cfg, run_dir, resume, ds_config, layout, loader)
    checkpoint = resumed.checkpoint if resumed else None
    load_from = checkpoint
    if resumed and resumed.route == "universal":  # another layout: through DeepSpeed's universal checkpoint
        load_from = universal_copy(checkpoint, to_universal)
        ds_config = {**ds_config, "checkpoint": {"load_universal": True}}
    torch.manual_seed(cfg.run.seed)
    engine = Engine(MAEAST(cfg.model), cfg.optim, cfg.schedule, ds_config)

    step, samples = 0, 0
    if resumed:
        engine.load(load_from.parent, load_from.name)
        loader.load_state_dict(resumed.loader)
        step, samples = resumed.step, resumed.samples
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
    if resumed and resumed.saved != layout:
        logger.event(f"{checkpoint.name} was saved with {resumed.saved}; continued with {layout}"
                     + (" through DeepSpeed's universal checkpoint" if resumed.route == "universal" else ""), step=step)
    if resumed and resumed.redealt:
        logger.event(resumed.redealt, step=step)
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
            if probe is not None and (step % cfg.eval.probe_every == 0 or step == last):
                probed = {"step": step, **probe.score(engine.module.encoder)}
                logger.eval(probed, probe_line(probed), kind="probe")
            if step % cfg.run.save_every == 0 or step == last:
                if trace is not None:
                    trace.flush()
                state = {"step": step, "samples": samples, "world_size": world, "layout": layout.to_dict(),
                         "loader": loader.state_dict()}
                extra = {"loss": record["loss"], **({"eval": result.eval} if result.eval else {})}
                result.checkpoint = save_checkpoint(engine, run_dir, step, state, model_meta(cfg, features, step, samples, extra),
                                                    cfg.run.keep)
                logger.event(f"checkpoint {result.checkpoint}", step=step)
            result.step = step
        if result.checkpoint is not None:
            result.encoder = publish_encoder(result.checkpoint, run_dir)
            logger.event(f"encoder exported to {result.encoder}", step=step)
    except RuntimeError as e:  # a collective failed: another process died or stalled past run.collective_timeout
        if not dist.is_peer_failure(e):
            raise
        message = peer_failure(run_dir, result.step, e)
        logger.write({"kind": "event", "message": message, "step": result.step})  # the console gets the error line
        raise MaeastError(message) from None
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
        batch = batch.to(self.device)  # a batch of waveforms (loader.fbank_on: device) gets its features here
        out = engine.forward(batch.features, batch.padding_mask, generator)
        pad = batch.padding_mask
        frames = batch.features.shape[1] * len(batch) if pad is None else int((~pad).sum())
        return Micro(out.loss, len(batch), batch.keys, out.parts, frames * self.hop_s)


@dataclass
class Resumed:
    """What a resume continues from, all read and checked before anything is loaded or written."""

    checkpoint: Path
    saved: Layout  # the layout that wrote it
    route: str  # maeast.train.layout.resume_route: "native" or "universal"
    step: int
    samples: int
    loader: dict  # this process's loader state, regrouped for this run's processes x workers
    redealt: str | None = None  # a line on the rest of the epoch re-dealt over this layout (elastic.rest_line)


LAYOUT_KEYS = ("data.num_workers",)
"""Config keys of the process layout: a resume may change them (with the process count), and
maeast.loaders.elastic re-deals the rest of the epoch it is in over the new layout."""


def _prepare_run_dir(cfg: PretrainConfig, run_dir: Path, resume: bool, ds_config: dict, layout: Layout,
                     loader: StreamingLoader) -> Resumed | None:
    """Check the run directory against --resume and the checkpoint's layout against this run's, then save
    the resolved configs; returns what to resume (None: a new run)."""
    checkpoint = latest_checkpoint(run_dir)
    resumed = None
    if resume:
        if checkpoint is None:
            raise MaeastError(f"nothing to resume in {run_dir}: it has no complete checkpoint; run without --resume")
        check_resume(build_config(load_yaml(run_dir / "config.yaml")), cfg, run_dir / "config.yaml",
                     RESUME_FREE + LAYOUT_KEYS)
        saved = saved_layout(checkpoint, read_run_ds_config(run_dir))  # before this session rewrites ds_config.json
        route = resume_route(saved, layout, checkpoint)
        states = load_train_states(checkpoint)
        mine = regroup([s["loader"] for s in states], dist.rank(), layout.world_size, cfg.data.num_workers,
                       loader_quotas(loader), cfg.optim.global_batch // cfg.data.batch_size, where=str(checkpoint))
        saved_slots = (states[0]["loader"]["world_size"], states[0]["loader"]["num_workers"])
        redealt = rest_line(mine) if saved_slots != (layout.world_size, cfg.data.num_workers) else None
        resumed = Resumed(checkpoint, saved, route, int(states[0]["step"]), int(states[0]["samples"]), mine, redealt)
    elif checkpoint is not None:
        raise MaeastError(f"{run_dir} already holds a run (checkpoint {checkpoint.name}); pass --resume to continue it "
                          f"or set run.dir to a new folder")
    dist.barrier()
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        clear_partial(run_dir)
        dist.clear_roll_call(run_dir)
        save_config(cfg, run_dir / "config.yaml")
        write_json(run_dir / "ds_config.json", ds_config)
    dist.barrier()
    return resumed


def peer_failure(run_dir: Path, step: int, error: RuntimeError) -> str:
    """The one line every surviving process stops with when a collective failed."""
    gone = dist.missing_ranks(run_dir)
    who = (f"rank(s) {', '.join(map(str, gone))} of {dist.world_size()} stopped answering" if gone else
           f"a collective failed on all {dist.world_size()} processes")
    good = latest_checkpoint(run_dir)
    lines = str(error).strip().splitlines()
    first = re.sub(r"\[[^\]]*\]:?\d*", "", lines[0]).split(". ")[0] if lines else type(error).__name__  # no [file:line]
    first = " ".join(first.split())
    return (f"{who} (rank {dist.rank()}: {first[:160]}); the last completed step is {step}, the last good checkpoint "
            f"{good if good else 'none (no checkpoint yet)'}: --resume continues from it, on any number of processes")


def _endless(loader):
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise MaeastError("the training loader yielded no batch in a whole epoch; check data.shards")


def layerdrop_for_stage(cfg: PretrainConfig, stage: int) -> PretrainConfig:
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
    """RUN/keys/rank{r}.tsv (step, slot, key per line), every rank's file cut back to `step` by rank 0 on
    resume (a resume on fewer processes leaves files no process appends to); an open file."""
    folder = Path(run_dir) / "keys"
    folder.mkdir(parents=True, exist_ok=True)
    if dist.is_main():
        for path in folder.glob("rank*.tsv"):
            kept = [line for line in path.read_text().splitlines(keepends=True)
                    if line.endswith("\n") and int(line.split("\t", 1)[0]) <= step]
            path.write_text("".join(kept))
    dist.barrier()
    return open(folder / f"rank{rank}.tsv", "a")
