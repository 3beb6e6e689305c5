"""A fold's resumable checkpoints: the engine's (maeast.engine.checkpoint) plus best/, the best classifier so far.

    RUN/fold{k}/classifier/          the selected model (best valid epoch, else the last): maeast.artifacts' files
    RUN/fold{k}/checkpoints/step_N/  DeepSpeed state, state_rank{r}.pt, best/; renamed into place only once whole
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from maeast import artifacts
from maeast.artifacts import initial_encoder  # noqa: F401  until finetune.loop imports it from maeast.artifacts
from maeast.engine.checkpoint import save_checkpoint
from maeast.features import get_config
from maeast.model import ModelConfig


def with_rates(cfg: ModelConfig, rates: dict) -> ModelConfig:
    """The encoder config with fine-tuning's dropout and layerdrop rates."""
    return dataclasses.replace(cfg, **rates)


def write_classifier(folder, encoder_weights, head_weights, model_cfg, fbank, pretraining, info) -> Path:
    """artifacts.write_classifier for a preset name, until finetune.loop passes an FbankConfig."""
    return artifacts.write_classifier(folder, encoder_weights, head_weights, model_cfg, get_config(fbank),
                                      pretraining, info)


def save_fold_checkpoint(engine, part_dir: Path, step: int, state: dict, best_dir: Path | None, keep: int) -> Path:
    """Every process calls this at the same step: the engine's checkpoint (DeepSpeed state, this
    process's state) plus best/, a copy of the best classifier so far."""
    def copy_best(folder: Path) -> None:
        if best_dir is not None and best_dir.is_dir():
            shutil.copytree(best_dir, folder / "best")
    return save_checkpoint(engine, part_dir, step, state, None, keep, extra=copy_best)
