"""Checkpoints: atomic saves, the latest good one, exact resume; the model files are maeast.artifacts'.

    RUN/checkpoints/step_00001000/     one complete checkpoint, renamed into place only once whole:
        mp_rank_00_model_states.pt, *optim_states.pt   DeepSpeed: weights, optimizer, schedule, step
        state_rank{r}.pt                per process: step, loader position, RNG state
        model.*, encoder.*              the whole MAE-AST (`maeast visualize`) and its encoder, in fp32
    RUN/checkpoints/latest             the newest complete tag (written atomically)
    RUN/encoder/                       the final export: encoder.safetensors + encoder.json

Every process writes into `checkpoints/.tmp-step_N`; after a barrier rank 0 renames it to `step_N`
and then replaces `latest`. A process killed at any point leaves the previous checkpoint and
`latest` untouched; the half-written .tmp folder is cleared by the next save or run start.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch

from maeast.artifacts import PREFIX, checkpoints_dir, complete_checkpoints, features_record, write_encoder, write_model
from maeast.engine import distributed as dist
from maeast.errors import MaeastError
from maeast.files import write_text


def tag_of(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def clear_partial(run_dir: Path) -> None:
    """Rank 0: remove folders of saves that a kill interrupted."""
    root = checkpoints_dir(run_dir)
    if dist.is_main() and root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-") or p.name.startswith(".old-"):
                shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(engine, run_dir: Path, step: int, train_state: dict, model_meta: dict | None, keep: int,
                    extra: Callable[[Path], None] | None = None) -> Path:
    """Every process calls this at the same step; returns the checkpoint folder.

    Writes DeepSpeed's state, this process's train_state, the model and encoder files (when model_meta
    is given) and whatever `extra(folder)` adds (rank 0 calls it: fine-tuning copies its best classifier)
    into a hidden folder, which is renamed into place only once whole; then `latest`, then pruning."""
    root = checkpoints_dir(run_dir)
    tag = tag_of(step)
    tmp = root / f".tmp-{tag}"
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    engine.save(root, tmp.name, client_state={"step": step})
    torch.save(train_state, tmp / f"state_rank{dist.rank()}.pt")
    if model_meta is not None:
        weights = engine.full_state_dict()  # a collective under ZeRO
        if dist.is_main():
            write_model(weights, model_meta, tmp)
            write_encoder(weights, model_meta, tmp)
    if extra is not None and dist.is_main():
        extra(tmp)
    dist.barrier()
    final = root / tag
    if dist.is_main():
        if final.exists():  # the same step saved before: move it aside first, so a kill leaves one of the two
            aside = root / f".old-{tag}"
            shutil.rmtree(aside, ignore_errors=True)
            final.rename(aside)
            tmp.rename(final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            tmp.rename(final)
        write_text(root / "latest", tag)
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_train_state(path: Path) -> dict:
    """This process's state file of a checkpoint."""
    file = Path(path) / f"state_rank{dist.rank()}.pt"
    if not file.is_file():
        raise MaeastError(f"{path} has no {file.name}: it was written by fewer processes than this run has "
                          f"({dist.world_size()}); resume with the process count that wrote it")
    return torch.load(file, map_location="cpu", weights_only=True)


def publish_encoder(checkpoint: Path, run_dir: Path) -> Path:
    """Rank 0: copy a checkpoint's encoder files to RUN/encoder, swapping the folder in whole."""
    out = Path(run_dir) / "encoder"
    if not dist.is_main():
        return out
    tmp, old = out.with_name(".encoder-tmp"), out.with_name(".encoder-old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in ("encoder.safetensors", "encoder.json"):
        shutil.copy2(Path(checkpoint) / name, tmp / name)
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def model_meta(cfg, features, step: int, samples: int, extra: dict | None = None) -> dict:
    """What the JSON files record: model config, the features the run trained on, the run's provenance."""
    return {"model": cfg.model.to_dict(), "features": features_record(features),
            "pretraining": {"step": step, "samples": samples, "run_dir": str(cfg.run.dir),
                            "shards": list(cfg.data.shards), "max_seconds": cfg.data.max_seconds, **(extra or {})}}
