"""What a pretraining resume continues from: the checkpoint, its layout, and the loader's place in the epoch.

A resume keeps the run's config, less the keys that touch neither the weights nor the loss curve
(maeast.train.run.RESUME_FREE and pretraining's PRETRAIN_FREE) and the process layout (LAYOUT_KEYS): on
another number of processes or loader workers, maeast.train.layout picks how the engine's state loads and
maeast.loaders.elastic re-deals the rest of the epoch over the new layout.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

from maeast.configio import load_yaml
from maeast.loaders import StreamingLoader, merge_states
from maeast.loaders.elastic import loader_quotas, regroup, rest_line
from maeast.pretrain.config import PretrainConfig, build_config
from maeast.train import distributed as dist
from maeast.train.checkpoint import load_train_states
from maeast.train.layout import Layout, read_run_ds_config, resume_route, saved_layout
from maeast.train.run import RESUME_FREE, Run, check_resume

PRETRAIN_FREE = ("run.save_every_steps", "eval.every", "eval.batches")
"""Pretraining's keys a resume may change: when it saves and evaluates (saving and evaluating draw nothing)."""

LAYOUT_KEYS = ("data.num_workers",)
"""Config keys of the process layout: a resume may change them (with the process count), and
maeast.loaders.elastic re-deals the rest of the epoch it is in over the new layout."""


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


def resume_point(cfg: PretrainConfig, run: Run, resume: bool, ds_config: dict, layout: Layout,
                 loader: StreamingLoader) -> Resumed | None:
    """Check the run folder against run.resume (and the --resume flag), its config against this one and its
    checkpoint's layout against this run's (before this session rewrites ds_config.json); returns what to resume
    (None: a new run)."""
    checkpoint = run.resumable(resume)
    if checkpoint is None:
        return None
    check_resume(build_config(load_yaml(run.dir / "config.yaml"), saved=True), cfg, run.dir / "config.yaml",
                 RESUME_FREE + PRETRAIN_FREE + LAYOUT_KEYS)
    saved = saved_layout(checkpoint, read_run_ds_config(run.dir))
    route = resume_route(saved, layout, checkpoint)
    states = load_train_states(checkpoint)
    if hasattr(loader, "adopt"):  # DALI: its own checkpoint on the same layout, else the next epoch boundary
        mine, redealt = loader.adopt(merge_states([s["loader"] for s in states]))
        return Resumed(checkpoint, saved, route, int(states[0]["step"]), int(states[0]["samples"]), mine, redealt)
    mine = regroup([s["loader"] for s in states], dist.rank(), layout.world_size, cfg.data.num_workers,
                   loader_quotas(loader), cfg.optim.global_batch // cfg.data.batch_size, where=str(checkpoint))
    saved_slots = (states[0]["loader"]["world_size"], states[0]["loader"]["num_workers"])
    redealt = rest_line(mine) if saved_slots != (layout.world_size, cfg.data.num_workers) else None
    return Resumed(checkpoint, saved, route, int(states[0]["step"]), int(states[0]["samples"]), mine, redealt)


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
