"""Named random streams: every random draw of a run is a function of (run.seed, stream, key ...).

    generator("masks", cfg.run.seed, step, place)          # an explicit torch.Generator (model.views: it also
                                                           # seeds each view's mask generator, mae_ast.view_generators)
    with scoped("dropout", cfg.run.seed, step, place, device=device): ...   # dropout's global RNG, restored after

The streams' ids are named in maeast.streams (RUN_STREAMS; the loaders' shuffling and crops draw from their
own seed, data.seed, by LOADER_STREAMS beside them) and are fixed forever.
A place is a micro-batch's position in its step's global batch (micro * world + rank, maeast.train.trainer),
not a process (a loader's *slot* is a (rank, worker) pair that reads shards, maeast.loaders.sources): a
resume on another layout gives every place the batch it had (maeast.loaders.elastic), so its masks and
dropout stay the same.
"""

from __future__ import annotations

import contextlib

import torch

from maeast.streams import RUN_STREAMS, derive_seed


def seed(stream: str, run_seed: int, *key: int) -> int:
    """The seed of one stream at one key."""
    return derive_seed(run_seed, RUN_STREAMS[stream], *key)


def generator(stream: str, run_seed: int, *key: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed(stream, run_seed, *key))


@contextlib.contextmanager
def scoped(stream: str, run_seed: int, *key: int, device: torch.device | None = None):
    """The global RNG (which dropout draws from) seeded for one stream and key, and restored on exit."""
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed(stream, run_seed, *key))
        yield
