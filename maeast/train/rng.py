"""Named random streams: every random draw of a run is a function of (run.seed, stream, key ...).

    generator("masks", cfg.run.seed, step, place)          # an explicit torch.Generator
    with scoped("dropout", cfg.run.seed, step, place, device=device): ...   # dropout's global RNG, restored after

Stream ids are fixed forever (changing one changes every run's numbers); the loaders' shuffling and
crops draw from their own seeds (data.seed), not from these: their stream ids are named in
maeast.loaders.sources.LOADER_STREAMS (there the id is the last part of the key, here the second).
A place is a micro-batch's position in its step's global batch (micro * world + rank, maeast.train.trainer),
not a process (a loader's *slot* is a (rank, worker) pair that reads shards, maeast.loaders.sources): a
resume on another layout gives every place the batch it had (maeast.loaders.elastic), so its masks and
dropout stay the same.
"""

from __future__ import annotations

import contextlib

import torch

from maeast.loaders.sources import derive_seed

STREAMS = {
    "masks": 1,             # pretraining: masks and layerdrop of a micro-batch, by (step, place)
    "dropout": 2,           # pretraining: dropout of a micro-batch (the global RNG), by (step, place)
    "eval_masks": 0x5EED,   # pretraining: the masks of held-out batch i, the same at every evaluation
    "head_init": 11,        # fine-tuning: a fold's fresh head, by fold
    "finetune_dropout": 12,  # fine-tuning: dropout of a micro-batch, by (fold, step, place)
    "augment": 13,          # fine-tuning: SpecAugment and mixup of a micro-batch, by (fold, step, place)
    "data_order": 14,       # fine-tuning: the order of a fold's training clips, by fold
}


def seed(stream: str, run_seed: int, *key: int) -> int:
    """The seed of one stream at one key."""
    return derive_seed(run_seed, STREAMS[stream], *key)


def generator(stream: str, run_seed: int, *key: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed(stream, run_seed, *key))


@contextlib.contextmanager
def scoped(stream: str, run_seed: int, *key: int, device: torch.device | None = None):
    """The global RNG (which dropout draws from) seeded for one stream and key, and restored on exit."""
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed(stream, run_seed, *key))
        yield
