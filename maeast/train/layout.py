"""A checkpoint's process layout (processes, ZeRO stage, precision) and how a run with another one resumes it.

    saved = saved_layout(checkpoint)                 # before anything loads
    how = resume_route(saved, Layout(world, stage, bf16), checkpoint)   # "native" or "universal", or one line

Routes, found by experiment with DeepSpeed 0.19.8 on CPU over gloo (tests/test_engine_elastic.py):
  - the same layout: DeepSpeed's own load, bitwise;
  - ZeRO stage 0 on any number of processes: its one full copy of weights and optimizer loads as is;
  - ZeRO stage 1 or 2 to stage 1 or 2, and stage 3 to stage 3, on any number of processes: DeepSpeed's
    Universal Checkpointing (deepspeed.checkpoint.ds_to_universal, then "checkpoint": {"load_universal":
    true}; engine.Engine.load mends two faults of its ZeRO-3 load); the loss continues the uninterrupted
    curve to float tolerance;
  - anything else is refused in one line that names both layouts, before the engine is built: stage 0
    to or from a ZeRO stage (a stage-0 checkpoint has no ZeRO files to convert); stage 3 to or from 1-2
    (0.19.8's universal load looks for the other stage's model file name and fails); bf16 to or from
    fp32 (not tried: bf16 needs CUDA).
A checkpoint written before layouts were recorded is read from the files DeepSpeed wrote and the run's
ds_config.json (read before this session replaces it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from maeast.train.ds_config import zero_stage
from maeast.errors import MaeastError


@dataclass(frozen=True)
class Layout:
    """How a run's model and optimizer state are laid out over its processes."""

    world_size: int
    zero_stage: int
    bf16: bool

    @classmethod
    def of(cls, ds_config: dict, world_size: int) -> "Layout":
        return cls(world_size, zero_stage(ds_config), bool(ds_config.get("bf16", {}).get("enabled", False)))

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.world_size} process(es), ZeRO stage {self.zero_stage}, {'bf16' if self.bf16 else 'fp32'}"


def saved_layout(checkpoint: Path, run_ds_config: dict | None = None) -> Layout:
    """The layout that wrote `checkpoint`: its recorded one, or else inferred from DeepSpeed's files
    (stage 3: zero_pp_rank_*_model_states.pt; 1 or 2: *optim_states.pt, the stage from the run's
    ds_config.json; none of them: 0) and the run's ds_config.json (precision)."""
    checkpoint = Path(checkpoint)
    state = _rank0_state(checkpoint)
    if "layout" in state:
        return Layout(**state["layout"])
    world = int(state.get("world_size", len(list(checkpoint.glob("state_rank*.pt")))))
    ds = run_ds_config or {}
    if list(checkpoint.glob("*zero_pp_rank_*_model_states.pt")):
        stage = 3
    elif list(checkpoint.glob("*optim_states.pt")):
        stage = zero_stage(ds) if zero_stage(ds) in (1, 2) else 1
    else:
        stage = 0
    return Layout(world, stage, bool(ds.get("bf16", {}).get("enabled", False)))


def read_run_ds_config(run_dir: Path) -> dict | None:
    """RUN/ds_config.json as the last session wrote it (None when absent or unreadable)."""
    try:
        return json.loads((Path(run_dir) / "ds_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def resume_route(saved: Layout, now: Layout, checkpoint: Path) -> str:
    """"native" (DeepSpeed loads the checkpoint as it is) or "universal" (convert it first); anything
    else is a MaeastError naming both layouts."""
    if saved == now or saved.zero_stage == now.zero_stage == 0 and saved.bf16 == now.bf16:
        return "native"
    flag = (f"--deepspeed_config launch/ds_zero{saved.zero_stage}.json" if saved.zero_stage else
            "no --deepspeed_config")
    fix = f"resume with {flag} (on any number of processes)"
    if saved.bf16 != now.bf16:
        raise MaeastError(f"{checkpoint} was saved with {saved}, this run has {now}: a change of precision is not "
                          f"converted; resume on {'CUDA' if saved.bf16 else 'CPU'} with {flag}")
    if 0 in (saved.zero_stage, now.zero_stage) or (saved.zero_stage == 3) != (now.zero_stage == 3):
        raise MaeastError(f"{checkpoint} was saved with {saved}, this run has {now}: DeepSpeed's universal checkpoint "
                          f"converts between ZeRO stages 1 and 2, or 3 and 3, only; {fix}")
    return "universal"


def _rank0_state(checkpoint: Path) -> dict:
    file = checkpoint / "state_rank0.pt"
    if not file.is_file():
        raise MaeastError(f"{checkpoint} has no state_rank0.pt: not a complete checkpoint; resume from another one")
    return torch.load(file, map_location="cpu", weights_only=True)
