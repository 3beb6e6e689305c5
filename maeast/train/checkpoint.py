"""Checkpoints: atomic saves, the latest good one, exact resume; the model files are maeast.artifacts'.

    RUN/checkpoints/step_00001000/     one complete checkpoint, renamed into place only once whole:
        mp_rank_00_model_states.pt, *optim_states.pt   DeepSpeed: weights, optimizer, schedule, step
        state_rank{r}.pt                per process: step, loader position, RNG state
        model.*, encoder.*              the whole MAE-AST (`maeast visualize`) and its encoder, in fp32
    RUN/checkpoints/latest             the newest complete tag (written atomically)
    RUN/checkpoints/universal/step_N   DeepSpeed's universal form of step_N, made (once, atomically) when
                                       a run resumes it with another layout (maeast.train.layout)

Every process writes into `checkpoints/.tmp-step_N`; after a barrier rank 0 renames it to `step_N`
and then replaces `latest`. A process killed at any point leaves the previous checkpoint and
`latest` untouched; the half-written .tmp folder is cleared by the next save or run start.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch

from maeast.artifacts import PREFIX, checkpoints_dir, complete_checkpoints, write_encoder, write_model
from maeast.train import distributed as dist
from maeast.errors import MaeastError
from maeast.files import write_text

UNIVERSAL = "universal"


def tag_of(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def clear_partial(run_dir: Path) -> None:
    """Rank 0: remove folders of saves and conversions that a kill interrupted."""
    root = checkpoints_dir(run_dir)
    if dist.is_main() and root.is_dir():
        for p in [*root.iterdir(), *(root / UNIVERSAL).glob(".tmp-*")]:
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
            shutil.rmtree(root / UNIVERSAL / old.name, ignore_errors=True)
    dist.barrier()
    return final


def load_train_state(path: Path, rank: int | None = None) -> dict:
    """One process's state file of a checkpoint (this process's by default)."""
    rank = dist.rank() if rank is None else rank
    file = Path(path) / f"state_rank{rank}.pt"
    if not file.is_file():
        raise MaeastError(f"{path} has no {file.name}: it is incomplete or was written by fewer processes than "
                          f"rank {rank} needs; resume with the process count that wrote it")
    return torch.load(file, map_location="cpu", weights_only=True)


def load_train_states(path: Path) -> list[dict]:
    """Every process's state file of a checkpoint, in rank order (a resume on another layout reads them all)."""
    first = load_train_state(path, 0)
    return [first] + [load_train_state(path, r) for r in range(1, int(first["world_size"]))]


def universal_copy(checkpoint: Path, convert: Callable[[Path, Path], None]) -> Path:
    """RUN/checkpoints/universal/step_N, DeepSpeed's universal form of `checkpoint`, made by convert(checkpoint,
    out) (engine.to_universal) on rank 0 while the others wait, into a hidden folder renamed into place once
    whole, and reused by later resumes; the checkpoint itself is only read. Every process calls this."""
    root = Path(checkpoint).parent / UNIVERSAL
    out = root / Path(checkpoint).name
    failure = None
    if dist.is_main() and not out.is_dir():
        tmp = root / f".tmp-{out.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            convert(Path(checkpoint), tmp / out.name)  # DeepSpeed also writes tmp/latest_universal
            (tmp / out.name).rename(out)
        except MaeastError as e:
            failure = e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    failed = dist.all_reduce_sum(torch.tensor([0.0 if failure is None else 1.0], dtype=torch.float64))
    if failure is not None:
        raise failure
    if failed.item():
        raise MaeastError(f"rank 0 could not convert {checkpoint} to a universal checkpoint (its line says why); "
                          f"resume with the process count and ZeRO JSON that saved it")
    return out
