"""Loader positions across a change of processes x workers: the rest of the epoch re-dealt over new slots.

The data unit of an epoch is the *slot* (sources.py: slot = rank * workers + worker): its shards, its
shuffle, its batches and its quota are functions of (seed, epoch, slot, number of slots), and a
loader's state is, per slot, how many batches the caller took and where that slot's plan stands.
Processes and workers are only how slots are grouped, so a run saved with N processes x W workers
resumes on M processes x V workers as follows:

  - at an epoch boundary (no slot started): any M x V; the next epochs are those of a run that always
    had M x V;
  - mid-epoch with the same number of slots (N*W == M*V): slot s keeps its plan, its position and the
    saved epoch's quota, and moves to rank s // V, worker s % V; no clip of the epoch is taken twice or
    skipped, except that when the new ranks would have different numbers of batches left, the slots
    with most are trimmed to the rank with fewest (as sources.quotas trims an epoch), so that the
    ranks end the epoch at the same step;
  - mid-epoch with another number of slots: refused in one line (resume with data.num_workers such that
    processes x workers equals the saved slots, or from a checkpoint at an epoch boundary).

All functions here are pure: states in, a state out.

Not done: a mid-epoch resume on another number of slots. It needs the rest of each old slot's pass as
(shard, from-sample) pieces plus the clips its shuffle buffer and length buckets held, which only the
worker's reader knows (stream.planned_batches would have to report them), and quotas for pieces of
shards, whose usable-clip counts index.json does not give.
"""

from __future__ import annotations

from typing import Callable

from maeast.errors import MaeastError
from maeast.loaders.sources import quotas
from maeast.loaders.state import FORMAT, merge_states, new_stats

Quotas = Callable[[int, int, int], list[list[int]]]
"""(epoch, world_size, num_workers) -> batches per [rank][worker] of that epoch (sources.quotas)."""


def loader_quotas(loader) -> Quotas:
    """A StreamingLoader's epoch quotas as a function of the layout (its own config and sources)."""
    c = loader.config
    return lambda epoch, world_size, num_workers: quotas(
        loader.sources, c.seed, epoch, world_size, num_workers, c.batch_size, c.drop_last, c.epoch_batches,
        0.0 if c.finetune else c.min_seconds)


def slots(world_size: int, num_workers: int) -> int:
    return world_size * max(num_workers, 1)


def slot_progress(state: dict) -> list[tuple[int, int]]:
    """A merged loader state -> (batches taken, plan position) of every slot, in slot order."""
    workers = max(int(state["num_workers"]), 1)
    out = []
    for rank in range(int(state["world_size"])):
        entry = state["ranks"].get(str(rank))
        if entry is None:
            raise MaeastError(f"loader state has ranks {sorted(state['ranks'])} but not rank {rank}; "
                              f"the checkpoint is missing a state_rank{rank}.pt")
        if len(entry["batches"]) != workers:
            raise MaeastError(f"loader state of rank {rank} has {len(entry['batches'])} workers, expected {workers}")
        out += [(int(b), int(p)) for b, p in zip(entry["batches"], entry["positions"])]
    return out


def regroup(states: list[dict], rank: int, world_size: int, num_workers: int, quotas: Quotas,
            where: str = "the checkpoint") -> dict:
    """Every old rank's loader state -> the state that rank `rank` of a world_size x num_workers run loads."""
    old = merge_states(states)
    n, w = int(old["world_size"]), int(old["num_workers"])
    if (n, w) == (world_size, num_workers):
        return old
    epoch = int(old["epoch"])
    progress = slot_progress(old)
    stats = _stats_for(old, rank, world_size)
    new = {"format": FORMAT, "epoch": epoch, "seed": old["seed"], "world_size": world_size, "num_workers": num_workers}
    v = max(num_workers, 1)
    if not any(position for _, position in progress):  # an epoch boundary: the new layout's own epoch
        return {**new, "ranks": {str(rank): {"batches": [0] * v, "positions": [0] * v, "stats": stats}}}
    layout = f"{n} process(es) x {w} worker(s) ({len(progress)} slots)"
    here = f"{world_size} x {num_workers} ({slots(world_size, num_workers)} slots)"
    if len(progress) != slots(world_size, num_workers):
        fits = len(progress) // world_size if len(progress) % world_size == 0 else None
        raise MaeastError(f"{where} was saved in the middle of epoch {epoch} with {layout}, this run has {here}: "
                          f"mid-epoch the slots must stay; resume with "
                          + (f"data.num_workers={fits}" if fits else f"a process count that divides {len(progress)}")
                          + " or from a checkpoint at an epoch boundary")
    left = [q - taken for q, (taken, _) in zip(_flat(quotas(epoch, n, w)), progress)]  # the saved plan's rest
    counts = _flat(quotas(epoch, world_size, num_workers))
    left = _even_out(left, world_size, v)
    mine = range(rank * v, (rank + 1) * v)
    # `batches` counts toward the slot's quota in this layout: shifted so that the slot stops where the
    # saved epoch's plan (less the trim) stops it.
    return {**new, "ranks": {str(rank): {"batches": [counts[s] - left[s] for s in mine],
                                         "positions": [progress[s][1] for s in mine], "stats": stats}}}


def _flat(table: list[list[int]]) -> list[int]:
    return [x for row in table for x in row]


def _even_out(left: list[int], world_size: int, workers: int) -> list[int]:
    """Batches left per slot, trimmed (largest slot first, as sources.quotas trims) so that every rank has
    as many left as the rank with fewest: the ranks step together to the end of the epoch. Trimmed
    batches are clips this epoch does not show, as a trimmed quota's are; none is shown twice."""
    left = list(left)
    per_rank = [sum(left[r * workers:(r + 1) * workers]) for r in range(world_size)]
    target = min(per_rank)
    for r in range(world_size):
        for _ in range(per_rank[r] - target):
            k = max(range(r * workers, (r + 1) * workers), key=lambda j: (left[j], j))
            left[k] -= 1
    return left


def _stats_for(old: dict, rank: int, world_size: int) -> dict[str, int]:
    """The bad-data counters of the old ranks whose first slot falls in the new rank's share of the slots."""
    w = max(int(old["num_workers"]), 1)
    old_slots = slots(int(old["world_size"]), w)
    out = new_stats()
    for old_rank, entry in old["ranks"].items():
        if int(old_rank) * w * world_size // old_slots == rank:
            for k, value in entry.get("stats", {}).items():
                out[k] = out.get(k, 0) + int(value)
    return out
