"""Small pieces of run setup that the pretraining loop uses: stage-specific model changes, key audits."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

from maeast.engine import distributed as dist
from maeast.engine.config import TrainConfig


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
