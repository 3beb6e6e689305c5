"""Feature caching for a frozen encoder: encode every clip once, then train the head on the cache.

A frozen encoder runs in eval mode without gradients, so each clip's pooled per-layer features
[L, D] are a fixed function of the clip (crops from its start). `encode` computes them for a split
once; every epoch, and every fold of a cross-validation task, then costs only the head. Under
several processes every process encodes the whole split (so no clip can be lost to the loader's
per-rank trimming) and trains on its share of each epoch. Memory: clips x L x D floats (ESC-50, base
model, last layer: 2000 x 768 x 4 B = 6 MB; the SUPERB protocol keeps every layer: VoxCeleb1's
138k training clips x 12 x 768 x 4 B = 5.1 GB, so --run.cache_features false encodes on the fly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from maeast.batch import Batch
from maeast.model.heads import pooled_layers
from maeast.model import Encoder


@dataclass
class Pooled:
    """Pooled encoder features of a set of clips."""

    keys: list[str]
    x: torch.Tensor  # [N, L, D]
    labels: torch.Tensor  # [N] int64 or [N, C] multi-hot

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, rows: list[int]) -> "Pooled":
        index = torch.tensor(rows, dtype=torch.long)
        return Pooled([self.keys[i] for i in rows], self.x[index], self.labels[index])


def unique_rows(keys: list[str]) -> list[int]:
    """Rows of the first occurrence of each key (a loader that wrapped around repeats clips)."""
    seen: set[str] = set()
    rows = []
    for i, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            rows.append(i)
    return rows


@torch.no_grad()
def encode(encoder: Encoder, batches: Iterable[Batch], weighted: bool, device: torch.device,
           stats: bool = False) -> Pooled:
    """Pooled features [N, L, D] ([N, L, 2D] with stats: mean, then std) of every clip the batches hold, once
    per key, on the CPU."""
    encoder.eval()
    keys, xs, labels = [], [], []
    for batch in batches:
        if not len(batch):
            continue
        pad = None if batch.padding_mask is None else batch.padding_mask.to(device)
        xs.append(pooled_layers(encoder, batch.features.to(device), pad, weighted, stats=stats).float().cpu())
        labels.append(batch.labels)
        keys += batch.keys
    if not keys:
        return Pooled([], torch.zeros(0), torch.zeros(0))
    pooled = Pooled(keys, torch.cat(xs), torch.cat(labels))
    return pooled.take(unique_rows(keys))


def epoch_rows(n: int, micro: int, world: int, rank: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch over n cached clips: a permutation cut into micro-batches dealt round-robin to the
    processes; every process gets ceil(n / (micro x world)) batches (the last ones wrap around)."""
    perm = torch.randperm(n, generator=generator)  # [n]
    per_rank = -(-n // (micro * world))
    out = []
    for b in range(per_rank):
        start = (b * world + rank) * micro
        out.append(perm[torch.arange(start, start + micro) % n])
    return out
