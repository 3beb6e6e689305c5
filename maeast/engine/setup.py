"""Small pieces of run setup that the loop uses: stage-specific model changes, buffer sync, audits."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from maeast.engine import distributed as dist
from maeast.engine.config import TrainConfig
from maeast.errors import MaeastError


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


def sync_buffers(module: nn.Module) -> None:
    """Average floating-point buffers (the input BatchNorm's running statistics) over all processes,
    so that every process evaluates and exports the same normalization."""
    if dist.world_size() == 1:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.detach().double().reshape(-1) for b in buffers])
    flat = dist.all_reduce_sum(flat) / dist.world_size()
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b).to(b.dtype))
        offset += b.numel()


def check_resumable(state: dict, world_size: int, checkpoint: Path) -> None:
    if int(state["world_size"]) != world_size:
        raise MaeastError(f"{checkpoint} was written by {state['world_size']} process(es), this run has {world_size}; "
                          f"resume with {state['world_size']} (ZeRO partitions and loader positions are per process)")


def trace_keys(run_dir: Path, rank: int, step: int):
    """RUN/keys/rank{r}.tsv (step, slot, key per line), cut back to `step` on resume; an open file."""
    path = Path(run_dir) / "keys" / f"rank{rank}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        kept = [line for line in path.read_text().splitlines(keepends=True)
                if line.endswith("\n") and int(line.split("\t", 1)[0]) <= step]
        path.write_text("".join(kept))
    return open(path, "a")


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
