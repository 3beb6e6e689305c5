"""What a fold's training and evaluation passes iterate: MicroBatch(x, padding_mask, labels, keys, frames).

    LoaderSource: shards -> loader (only the selection's clips, chosen before batching) -> fbank [B, T, F]
                  (full fine-tuning), or the frozen encoder's pooled features [B, L, D] computed on the
                  fly (no cache);
    CacheSource:  cached pooled features [N, L, D] of a frozen encoder, in a fresh order every epoch
                  (class-balanced draws with replacement when given weights; a fixed number of
                  micro-batches per epoch when given batches, the draws running on across epochs).

Both have len() (micro-batches per epoch and process), epoch(e) (that epoch's micro-batches, or its rest
after a stop inside it) and state_dict() (what that rest needs).
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import torch

from maeast.finetune.cache import Pooled, epoch_rows
from maeast.finetune.data import Corpus, Selection
from maeast.streams import LOADER_STREAMS, derive_seed


class MicroBatch(NamedTuple):
    x: torch.Tensor  # fbank [B, T, F] or pooled features [B, L, D], on the device
    padding_mask: torch.Tensor | None  # [B, T] True = padding, on the device
    labels: torch.Tensor  # [B] or [B, C]
    keys: list[str]
    frames: torch.Tensor | None = None  # [B] real fbank frames of each clip, on the CPU (FLOP counts); None: pooled


class LoaderSource:
    """A loader's batches of the selection's clips; `encode` (frozen, uncached) maps a Batch to pooled features."""

    def __init__(self, loader, selection: Selection, corpus: Corpus, device: torch.device,
                 encode: Callable | None = None):
        self.loader, self.selection, self.corpus, self.device, self.encode = loader, selection, corpus, device, encode

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict:
        """Where the loader is in its epoch (exactly: a resume from it neither repeats nor skips a clip)."""
        return self.loader.state_dict()

    def epoch(self, epoch: int, skip: int = 0, state: dict | None = None) -> Iterator[MicroBatch]:
        """The epoch's micro-batches; inside an epoch, from the loader's saved `state` (which knows the
        `skip` micro-batches already taken)."""
        if state is not None:
            self.loader.load_state_dict(state)
        else:
            self.loader.set_epoch(epoch)
        for batch in self.loader:
            frames = batch.frames()  # on the CPU, before the batch moves
            batch = batch.to(self.device)
            if self.encode is None:
                yield MicroBatch(batch.features, batch.padding_mask, batch.labels, batch.keys, frames)
            else:
                yield MicroBatch(self.encode(batch), None, batch.labels, batch.keys)


class CacheSource:
    """Cached pooled features: each epoch a permutation (seeded by seed and epoch) cut into micro-batches;
    with `weights` (per clip) or `batches` (micro-batches per epoch and process), an endless sequence of
    passes instead (pass p: a permutation, or len(pooled) draws with replacement by weight, seeded by
    seed and p), of which epoch e takes the next len(self) x micro x world draws."""

    def __init__(self, pooled: Pooled, micro: int, world: int, rank: int, seed: int, device: torch.device,
                 shuffle: bool = True, weights: torch.Tensor | None = None, batches: int | None = None):
        self.pooled, self.micro, self.world, self.rank, self.seed = pooled, micro, world, rank, seed
        self.device, self.shuffle, self.weights, self.batches = device, shuffle, weights, batches

    def __len__(self) -> int:
        if not self.shuffle:
            return -(-len(self.pooled) // self.micro)
        return self.batches or -(-len(self.pooled) // (self.micro * self.world))

    def draws(self, start: int, count: int) -> torch.Tensor:
        """Rows [start, start + count) of the endless sequence of passes."""
        n, out = len(self.pooled), []
        for p in range(start // n, (start + count - 1) // n + 1):
            generator = torch.Generator().manual_seed(derive_seed(self.seed, p, LOADER_STREAMS["cache_draws"]))
            out.append(torch.randperm(n, generator=generator) if self.weights is None
                       else torch.multinomial(self.weights, n, replacement=True, generator=generator))
        return torch.cat(out)[start - (start // n) * n:][:count]

    def state_dict(self) -> None:
        return None  # an epoch is a function of (seed, epoch): a resume skips the micro-batches taken

    def epoch(self, epoch: int, skip: int = 0, state: dict | None = None) -> Iterator[MicroBatch]:
        """The epoch's micro-batches, less the first `skip` (taken before a stop inside the epoch)."""
        if self.shuffle and self.weights is None and self.batches is None:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, LOADER_STREAMS["cache_order"]))
            batches = epoch_rows(len(self.pooled), self.micro, self.world, self.rank, generator)
        elif self.shuffle:
            step = self.micro * self.world
            rows = self.draws(epoch * len(self) * step, len(self) * step)  # [len x micro x world]
            batches = [rows[(b * self.world + self.rank) * self.micro:][:self.micro] for b in range(len(self))]
        else:  # evaluation: every clip once, in order, on every process
            batches = list(torch.arange(len(self.pooled)).split(self.micro))
        for rows in batches[skip:]:
            part = self.pooled.take(rows.tolist())
            yield MicroBatch(part.x.to(self.device), None, part.labels.to(self.device), part.keys)
