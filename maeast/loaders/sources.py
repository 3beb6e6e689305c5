"""Shard lists from index.json files, and the epoch plan: which worker of which rank reads what.

A *slot* is one (rank, worker) pair: slot = rank * workers + worker. Each epoch, every source's
shards are shuffled with (seed, epoch) and dealt to the slots round-robin, so each slot reads a
disjoint set of shards and, in a pass, every shard is read exactly once by exactly one slot.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maeast.errors import MaeastError
from maeast.loaders.keep import Keep
from maeast.shards.format import SHORT_STEP_SECONDS, index_format, read_index, shard_paths
from maeast.shards.storage import Location, exists, is_url, list_names, redact
from maeast.streams import LOADER_STREAMS, derive_seed


@dataclass(frozen=True)
class Shard:
    path: Location
    """A local Path, or a URL (maeast.shards.storage)."""
    samples: int
    sha256: str
    bytes: int
    shorter_than: tuple[int, ...] = ()
    """index.json's count of clips under 0.5, 1.0, ... 10 s (format.shorter_than); () in older folders."""
    name: str = ""
    """The shard's file name in index.json (what log lines name)."""
    format: int = 1
    """The folder's format.index_format: 2 checks every sample's members as it is read, 1 the whole shard."""

    def usable(self, min_seconds: float) -> int:
        """Clips of at least min_seconds: exact when min_seconds is a multiple of 0.5 s up to 10 s and
        the index has the counts; otherwise an upper bound (the next lower multiple's count)."""
        steps = min(int(min_seconds / SHORT_STEP_SECONDS + 1e-9), len(self.shorter_than))
        return self.samples - (self.shorter_than[steps - 1] if steps else 0)


@dataclass(frozen=True)
class Source:
    """One corpus split: its shards and its label vocabulary."""

    dir: Location
    corpus: str
    split: str
    shards: tuple[Shard, ...]
    labels: tuple[str, ...]
    multi_label: bool
    sample_rate: int
    weight: float

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


def load_sources(dirs: list[str], split: str, weights: list[float] | None = None) -> list[Source]:
    """Read each folder's index.json (a local folder or a URL); weights default to the folders' sample
    counts. A shard missing from its folder, an unreachable bucket or refused access fails here, at start."""
    sources = []
    for i, folder in enumerate(dirs):
        folder = folder if is_url(folder) else Path(folder)
        index = read_index(folder)
        paths = shard_paths(folder, split, index)
        entries = index["splits"][split]["shards"]
        shards = tuple(Shard(p, int(e["samples"]), e["sha256"], int(e["bytes"]), tuple(e.get("shorter_than", ())),
                             e["name"], index_format(index)) for p, e in zip(paths, entries))
        missing = _missing(folder, shards)
        if missing:
            raise MaeastError(f"{redact(folder)}: {len(missing)} shard(s) listed in index.json are missing "
                              f"(first: {missing[0]}); rebuild with `maeast shard build`")
        if not shards or not sum(s.samples for s in shards):
            raise MaeastError(f"{folder}: split {split!r} has no samples")
        sources.append(Source(folder, index["corpus"], split, shards, tuple(index["labels"]),
                              bool(index["multi_label"]), int(index["sample_rate"]),
                              weights[i] if weights else float(sum(s.samples for s in shards))))
    rates = {s.sample_rate for s in sources}
    if len(rates) > 1:
        raise MaeastError(f"shard folders have different sample rates {sorted(rates)}; rebuild them at one rate")
    return sources


def _missing(folder: Location, shards: tuple[Shard, ...]) -> list[str]:
    """Names of the shards not in their folder: one listing, or where a folder cannot be listed (http) a
    HEAD request per shard, 16 at a time; pipe: commands can only be tried."""
    present = list_names(folder)
    if present is not None:
        return [s.name for s in shards if s.name not in present]
    if str(folder).startswith("pipe:"):
        return []
    with ThreadPoolExecutor(16) as pool:
        found = list(pool.map(lambda s: exists(s.path), shards))
    return [s.name for s, ok in zip(shards, found) if not ok]


def check_labels(sources: list[Source]) -> None:
    """Fine-tuning mixes folders only if they share one label vocabulary."""
    first = sources[0]
    for other in sources[1:]:
        if other.labels != first.labels or other.multi_label != first.multi_label:
            raise MaeastError(f"{other.dir} and {first.dir} have different label vocabularies; "
                              f"fine-tune on folders built with the same labels")


def check_slots(sources: list[Source], world_size: int, workers: int) -> None:
    slots = world_size * max(workers, 1)
    for s in sources:
        if len(s.shards) < slots:
            raise MaeastError(
                f"{s.dir} split {s.split!r} has {len(s.shards)} shard(s) but {world_size} rank(s) x "
                f"{max(workers, 1)} worker(s) need at least {slots}; rebuild with a smaller --shard-size "
                f"or use fewer workers")


def deal_order(source: Source, source_id: int, seed: int, epoch: int) -> list[Shard]:
    """A source's shards in this epoch's deal order: slot k of n slots reads order[k::n] (slot_shards)."""
    order = list(source.shards)
    random.Random(derive_seed(seed, epoch, source_id, LOADER_STREAMS["shard_deal"])).shuffle(order)
    return order


def slot_shards(source: Source, source_id: int, seed: int, epoch: int, slot: int, slots: int) -> list[Shard]:
    """The shards one slot reads in this epoch's first pass, in reading order."""
    return deal_order(source, source_id, seed, epoch)[slot::slots]


def pass_order(shards: list[Shard], seed: int, epoch: int, source_id: int, slot: int, pass_no: int) -> list[Shard]:
    """A slot's shards for pass `pass_no` (0: as dealt; later passes reshuffled)."""
    if pass_no == 0:
        return list(shards)
    order = list(shards)
    random.Random(derive_seed(seed, epoch, source_id, slot, pass_no, LOADER_STREAMS["pass_order"])).shuffle(order)
    return order


def quotas(sources: list[Source], seed: int, epoch: int, world_size: int, workers: int, batch_size: int,
           drop_last: bool, epoch_batches: int | None, min_seconds: float = 0.0,
           keep: Keep | None = None) -> list[list[int]]:
    """Batches each worker of each rank yields this epoch: [rank][worker]; every rank sums to the same.

    Without epoch_batches, a worker's quota is one pass over its shards' clips of at least
    min_seconds (from index.json's counts), or over their kept clips given a keep-rule (keep.Keep's
    counts), and ranks with more are trimmed, largest worker first, to the smallest rank's total.
    With epoch_batches, a rank's batches are shared evenly by its workers whose shards make a batch.
    """
    w = max(workers, 1)
    slots = world_size * w
    count = (lambda shard: shard.usable(min_seconds)) if keep is None else keep.count
    per_slot = np.zeros(slots, dtype=np.int64)
    for i, source in enumerate(sources):  # one deal per source, its counts summed per slot: O(shards + slots)
        counts = np.array([count(s) for s in deal_order(source, i, seed, epoch)], dtype=np.int64)
        counts = np.concatenate([counts, np.zeros(-len(counts) % slots, dtype=np.int64)])
        per_slot += counts.reshape(-1, slots).sum(axis=0)  # column k: order[k::slots], slot k's shards
    batches = per_slot // batch_size if drop_last else -(-per_slot // batch_size)
    table = batches.reshape(world_size, w)
    if epoch_batches is not None:
        return [_even(epoch_batches, [int(x) for x in row]) for row in table]
    total = int(table.sum(axis=1).min())
    if total == 0:
        raise MaeastError(f"a rank has no batch of batch_size={batch_size} usable clips this epoch (pretraining "
                          f"skips clips under min_seconds={min_seconds:g}; a keep-rule, the clips it leaves out); "
                          f"lower batch_size or min_seconds, or set drop_last false")
    out = []
    for row in table:
        row = [int(x) for x in row]
        for _ in range(sum(row) - total):
            k = max(range(w), key=lambda j: (row[j], j))
            row[k] -= 1
        out.append(row)
    return out


def _even(epoch_batches: int, row: list[int]) -> list[int]:
    """A rank's epoch_batches over its workers, evenly, leaving out a worker whose shards make no batch (it would
    find none to yield: every clip of its shards left out by a keep-rule or under min_seconds); every worker if
    none does (its worker then says so)."""
    readers = [k for k, n in enumerate(row) if n] or list(range(len(row)))
    out = [0] * len(row)
    for j, k in enumerate(readers):
        out[k] = epoch_batches // len(readers) + (j < epoch_batches % len(readers))
    return out
