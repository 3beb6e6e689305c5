"""Loader positions across a change of processes x workers: the rest of the epoch re-dealt over new slots.

The data unit of an epoch is the *slot* (sources.py: slot = rank * workers + worker): its shards, its
shuffle, its batches and its quota are functions of (seed, epoch, slot, number of slots), and a
loader's state is, per slot, how many batches the caller took and where that slot's plan stands.
A run saved with N processes x W workers resumes on M processes x V workers as follows:

  - at an epoch boundary (no slot started): any M x V; the next epochs are those of a run that always
    had M x V;
  - mid-epoch, any M x V: the *rest* of the epoch is the batches every old slot's plan still had to
    yield (from its saved position up to its quota), each named by (old slot, plan position). They
    are put in the order the uninterrupted run would have fed them (`flat_order`: step after step,
    within a step the micro-batch places micro * N + rank of maeast.train.trainer), and dealt over the
    new layout so that every step's micro-batch place k gets the batch it had in that order: flat item
    j goes to new rank j % M (trainer slot k = micro * M + rank), the rank's i-th item to its worker
    i % V (the DataLoader takes workers round-robin). A worker walks each old slot's plan it has items
    of without decoding (as a resumed worker walks its own) and crops a batch with its old slot's
    seeds, so every step of the rest holds the very batches, in the very slots, of the uninterrupted
    run: the loss curve continues within float tolerance (the masks and dropout are seeded by step and
    trainer slot). Then the epoch ends and the next ones are those of a run that always had M x V.

Every clip of the rest is shown once, except a remainder: when the rest's batch count is not a
multiple of M, its last (count mod M) batches in flat order are left out this epoch, so that every new
rank has as many and they step into the next epoch together (as sources.quotas trims ranks to the
rank with fewest). None is left out when M divides N (e.g. 2 -> 1). If the rest is not a whole number
of steps, the last step of the epoch takes its missing micro-batches from the next epoch, as the
uninterrupted run does. A re-dealt state saved mid-rest records its rest (`rest` of state.py), so it
resumes on the same layout as it is and on another by re-dealing what is left of the same rest.

Costs and limits: a worker with items of several old slots reads their shards (1 x 1 -> 2 x 1 reads
the old slot's shards on both ranks) and holds a shuffle buffer of undecoded clips for each (8 x 4 ->
1 x 4: 8 buffers per worker), for the rest of this epoch only. A re-dealt batch none of whose
clips decodes gives way to a spare of its old slot (worker.spare_batch: further in that slot's stream,
as a normal epoch reads past its quota), so the ranks stay in step; only if the spare fails too is it
skipped, and that rank starts the next epoch a micro-batch early. Bad-data counters of the replayed
plans are approximate.

All functions here are pure: states in, a state out.
"""

from __future__ import annotations

import functools
from typing import Callable

from maeast.errors import MaeastError
from maeast.loaders.sources import quotas
from maeast.loaders.state import FORMAT, merge_states, new_stats, turns

Quotas = Callable[[int, int, int], list[list[int]]]
"""(epoch, world_size, num_workers) -> batches per [rank][worker] of that epoch (sources.quotas)."""

Item = tuple[int, int]
"""A batch of another layout's plan: (its slot, its position in that slot's planned stream)."""


def loader_quotas(loader) -> Quotas:
    """A StreamingLoader's epoch quotas as a function of the layout (its own config, sources and keep-rule)."""
    c = loader.config
    return lambda epoch, world_size, num_workers: quotas(
        loader.sources, c.seed, epoch, world_size, num_workers, c.batch_size, c.drop_last, c.epoch_batches,
        0.0 if c.finetune else c.min_seconds, getattr(loader, "keep", None))


def slots(world_size: int, num_workers: int) -> int:
    return world_size * max(num_workers, 1)


def slot_progress(state: dict) -> list[tuple[int, int]]:
    """A merged loader state -> (batches taken, plan position) of every slot, in slot order."""
    workers = max(int(state["num_workers"]), 1)
    out = []
    for rank in range(int(state["world_size"])):
        entry = _entry(state, rank)
        if len(entry["batches"]) != workers:
            raise MaeastError(f"loader state of rank {rank} has {len(entry['batches'])} workers, expected {workers}")
        out += [(int(b), int(p)) for b, p in zip(entry["batches"], entry["positions"])]
    return out


def rest_of_epoch(state: dict, quotas: Quotas, step_batches: int) -> dict:
    """A merged mid-epoch state (not itself re-dealt) -> its rest: per old slot the batches it gave, the plan
    position it goes on from and the batches its quota still holds; dealt whole (begin 0, end its length)."""
    n, w = int(state["world_size"]), int(state["num_workers"])
    progress = slot_progress(state)
    counts = [q for row in quotas(int(state["epoch"]), n, w) for q in row]
    rest = {"world_size": n, "num_workers": w, "step_batches": step_batches, "taken": [b for b, _ in progress],
            "from": [p for _, p in progress], "left": [max(q - b, 0) for q, (b, _) in zip(counts, progress)]}
    return {**rest, "begin": 0, "end": sum(rest["left"])}


def flat_order(rest: dict) -> list[Item]:
    """The rest as the uninterrupted run feeds it: step after step, each step's micro-batch places
    (micro * N + rank) in order. An old rank's workers take turns through the epoch (DataLoader
    round-robin, a worker leaving the turn when its quota is done), and the rank's i-th batch after the
    save is micro i % accum of step i // accum after it."""
    n, w, g = int(rest["world_size"]), max(int(rest["num_workers"]), 1), int(rest["step_batches"])
    taken, start, left = rest["taken"], rest["from"], rest["left"]
    accum = g // n
    placed = []
    for rank in range(n):
        mine = range(rank * w, (rank + 1) * w)
        given = [0] * w
        seq = []
        for j in turns([taken[s] + left[s] for s in mine]):  # the rank's whole epoch
            s, k = mine[j], given[j]
            given[j] += 1
            if k >= taken[s]:
                seq.append((s, start[s] + k - taken[s]))
        placed += [((i // accum) * g + (i % accum) * n + rank, item) for i, item in enumerate(seq)]
    return [item for _, item in sorted(placed)]


def deal(rest: dict, rank: int, world_size: int, num_workers: int, dealt: int = 0) -> list[list[Item]]:
    """This rank's share of the rest's items begin..end, less the first `dealt` it took, per worker: flat item
    j to rank j % world_size, the rank's i-th item left to worker i % workers."""
    mine = _flat_order(_key(rest))[int(rest["begin"]):int(rest["end"])][rank::world_size][dealt:]
    v = max(num_workers, 1)
    return [list(mine[j::v]) for j in range(v)]


def _key(rest: dict) -> tuple:
    """What flat_order reads of a rest, hashable."""
    return (int(rest["world_size"]), int(rest["num_workers"]), int(rest["step_batches"]),
            *(tuple(int(x) for x in rest[k]) for k in ("taken", "from", "left")))


@functools.lru_cache(maxsize=2)
def _flat_order(key: tuple) -> tuple[Item, ...]:
    """flat_order of a rest, kept for the next deal of the same rest: the loader deals it for len(), quotas()
    and iter(), and a walk of a 1,024 x 8 AudioSet epoch's rest takes tenths of a second (benchmarks/scale.py)."""
    n, w, g, taken, start, left = key
    rest = {"world_size": n, "num_workers": w, "step_batches": g, "taken": taken, "from": start, "left": left}
    return tuple(flat_order(rest))


def regroup(states: list[dict], rank: int, world_size: int, num_workers: int, quotas: Quotas,
            step_batches: int, where: str = "the checkpoint") -> dict:
    """Every old rank's loader state -> the state that rank `rank` of a world_size x num_workers run loads.
    step_batches: batches per optimizer step over all processes (optim.global_batch // data.batch_size)."""
    old = merge_states(states)
    n, w = int(old["world_size"]), int(old["num_workers"])
    if (n, w) == (world_size, num_workers):
        return old
    epoch = int(old["epoch"])
    stats = _stats_for(old, rank, world_size)
    v = max(num_workers, 1)
    new = {"format": FORMAT, "epoch": epoch, "seed": old["seed"], "world_size": world_size, "num_workers": num_workers}
    fresh = {str(rank): {"batches": [0] * v, "positions": [0] * v, "stats": stats}}
    if step_batches % world_size:
        raise MaeastError(f"{where}: {step_batches} batches per step do not divide over {world_size} processes; "
                          f"resume on a process count that divides optim.global_batch / data.batch_size")
    if old.get("rest") is not None:  # saved while a re-dealt rest was under way: re-deal what is left of it
        rest = {**old["rest"], "begin": _taken(old, where)}
        if int(rest["step_batches"]) != step_batches:
            raise MaeastError(f"{where} was saved with {rest['step_batches']} batches per step, this run has "
                              f"{step_batches}; resume with the run's optim.global_batch and data.batch_size")
    elif any(position for _, position in slot_progress(old)):
        rest = rest_of_epoch(old, quotas, step_batches)
    else:  # an epoch boundary: the new layout's own epoch
        return {**new, "ranks": fresh}
    left = int(rest["end"]) - int(rest["begin"])
    rest["end"] = int(rest["begin"]) + left - left % world_size  # the remainder rule (module docstring)
    if rest["end"] == rest["begin"]:  # nothing of the epoch is left to deal: the next one, the new layout's own
        return {**new, "epoch": epoch + 1, "ranks": fresh}
    return {**new, "rest": rest, "ranks": fresh}


def rest_line(state: dict) -> str | None:
    """One line for the run's log on the rest a regrouped state deals (None without one)."""
    rest = state.get("rest")
    if rest is None:
        return None
    dealt, out = int(rest["end"]) - int(rest["begin"]), sum(rest["left"]) - int(rest["end"])
    return (f"the rest of epoch {state['epoch']}, {dealt} batch(es) of the {rest['world_size']} process(es) x "
            f"{rest['num_workers']} worker(s) that planned it, re-dealt over {state['world_size']} x "
            f"{state['num_workers']} in the steps and micro-batch slots of the uninterrupted run"
            + (f"; its last {out} batch(es) do not divide over {state['world_size']} processes and are left out"
               if out else ""))


def _entry(state: dict, rank: int) -> dict:
    entry = state["ranks"].get(str(rank))
    if entry is None:
        raise MaeastError(f"loader state has ranks {sorted(state['ranks'])} but not rank {rank}; "
                          f"the checkpoint is missing a state_rank{rank}.pt")
    return entry


def _taken(state: dict, where: str) -> int:
    """Where the rest goes on from, in flat order: begin plus what the saved layout's ranks consumed.
    Ranks step together, so each consumed its first c items and items begin..begin + c * ranks are done."""
    n = int(state["world_size"])
    consumed = {int(_entry(state, rank).get("dealt", 0)) + sum(int(p) for p in _entry(state, rank)["positions"])
                for rank in range(n)}
    if len(consumed) != 1:
        raise MaeastError(f"{where}: its ranks stopped at different points of a re-dealt epoch ({sorted(consumed)} "
                          f"batches); resume on its layout ({n} process(es) x {state['num_workers']} worker(s))")
    return int(state["rest"]["begin"]) + n * consumed.pop()


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
