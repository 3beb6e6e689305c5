"""A loader's resume state: the epoch, and per rank and worker how far the caller has consumed.

The plan of an epoch (which shards each worker reads, the shuffle, the batches) is a pure function
of (seed, epoch, rank, worker), decided from sample metadata before any audio is decoded. So the
state is small: per worker, `batches` it has handed to the caller and `position`, the index of the
next batch in its planned stream (larger than `batches` when a whole batch was bad and skipped).
Batches a worker prefetched but the caller never took are not counted: a resumed worker replays
its plan without decoding up to `position` and carries on from there.

state_dict() format (JSON-serializable):
    {"format": "maeast-loader/1", "epoch": 3, "seed": 0, "world_size": 2, "num_workers": 2,
     "ranks": {"0": {"batches": [5, 4], "positions": [5, 4], "stats": {"bad_samples": 1, ...}}}}
A rank's own state holds only its rank; `merge_states` combines the states of all ranks into one
(for a single checkpoint file), and any rank loads its own entry from it.

A run resumed mid-epoch on another layout (maeast.loaders.elastic) finishes that epoch on a *rest*:
the batches another layout's slots still had to yield, dealt over this layout's workers. Its state
then also holds
    "rest": {"world_size": 2, "num_workers": 1, "step_batches": 4, "taken": [3, 2], "from": [3, 2],
             "left": [4, 5], "begin": 0, "end": 9}
(the old layout, batches per step, per old slot the batches it gave, the plan position it goes on
from and the batches left, and which of the rest's items in elastic.flat_order this layout deals).
A rank's entry then adds "dealt", its items of the rest taken before its workers were last dealt
their shares, and a worker's `batches` / `positions` count its share since. Loading folds the
positions into "dealt" and deals what is left afresh from worker 0, as a restarted DataLoader takes
its workers; the next epoch drops the rest. States without it (every state of a run that never
changed layout mid-epoch) are read as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from maeast.errors import MaeastError

FORMAT = "maeast-loader/1"
STATS = ("bad_samples", "bad_shards", "short", "wrapped_passes", "cache_refetched")


def new_stats() -> dict[str, int]:
    return {name: 0 for name in STATS}


@dataclass
class LoaderState:
    epoch: int
    seed: int
    world_size: int
    num_workers: int
    rank: int
    batches: list[int]
    positions: list[int]
    stats: dict[str, int] = field(default_factory=new_stats)
    rest: dict | None = None  # a re-dealt rest of the epoch (above), or None
    dealt: int = 0  # with a rest: this rank's items of it taken before the workers' current share

    @classmethod
    def fresh(cls, epoch: int, seed: int, world_size: int, num_workers: int, rank: int) -> "LoaderState":
        n = max(num_workers, 1)
        return cls(epoch, seed, world_size, num_workers, rank, [0] * n, [0] * n)

    @property
    def started(self) -> bool:
        return any(self.positions) or self.rest is not None

    def first_worker(self, quotas: list[int]) -> int:
        """The worker whose batch the uninterrupted DataLoader hands out next: a loader resumed after a
        number of batches that its workers' turns do not divide starts its round-robin there."""
        order, taken = turns(quotas), sum(self.batches)
        return order[taken] if taken < len(order) else 0

    def consume(self, worker: int, position: int) -> None:
        """The caller took the batch at `position` of `worker`'s plan."""
        self.batches[worker] += 1
        self.positions[worker] = position + 1

    def next_epoch(self) -> None:
        self.epoch += 1
        self.rest, self.dealt = None, 0
        self.batches = [0] * len(self.batches)
        self.positions = [0] * len(self.positions)

    def to_dict(self) -> dict:
        out = {"format": FORMAT, "epoch": self.epoch, "seed": self.seed, "world_size": self.world_size,
               "num_workers": self.num_workers,
               "ranks": {str(self.rank): {"batches": list(self.batches), "positions": list(self.positions),
                                          "stats": dict(self.stats)}}}
        if self.rest is not None:
            out["rest"] = dict(self.rest)
            out["ranks"][str(self.rank)]["dealt"] = self.dealt
        return out

    def load(self, state: dict) -> None:
        """Take this rank's progress from a state_dict (one rank's, or merged)."""
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise MaeastError(f"loader state is not a {FORMAT} state_dict; pass what loader.state_dict() returned")
        ranks = state.get("ranks", {})
        mine = ranks.get(str(self.rank))
        if mine is None:
            raise MaeastError(f"loader state has ranks {sorted(ranks)} but not rank {self.rank}; "
                              f"merge every rank's state with merge_states before saving")
        started = any(mine["positions"]) or state.get("rest") is not None
        if state["seed"] != self.seed and started:
            raise MaeastError(f"loader state was saved with seed {state['seed']}, this run has seed {self.seed}; "
                              f"resume with the same loader.seed")
        if started and (state["world_size"], state["num_workers"]) != (self.world_size, self.num_workers):
            raise MaeastError(
                f"loader state was saved mid-epoch with {state['world_size']} rank(s) x {state['num_workers']} "
                f"worker(s), this run has {self.world_size} x {self.num_workers}; resume with the same layout "
                f"(or re-deal the state with maeast.loaders.elastic.regroup, as --resume does)")
        self.epoch = int(state["epoch"])
        n = len(self.batches)
        self.batches = [int(x) for x in mine["batches"]] if started else [0] * n
        self.positions = [int(x) for x in mine["positions"]] if started else [0] * n
        self.rest = state.get("rest")
        if self.rest is not None:  # what the workers took becomes the rank's; the rest is dealt again from worker 0
            self.dealt = int(mine.get("dealt", 0)) + sum(self.positions)
            self.batches, self.positions = [0] * n, [0] * n
        self.stats = {**new_stats(), **{k: int(v) for k, v in mine.get("stats", {}).items()}}


def turns(counts: list[int]) -> list[int]:
    """Which worker gives each batch when worker j has counts[j] to give, as a DataLoader takes them: turn by
    turn from worker 0, a worker leaving the turn when it has given its count."""
    return [j for t in range(max(counts, default=0)) for j, n in enumerate(counts) if t < n]


def merge_states(states: list[dict]) -> dict:
    """Every rank's state_dict -> one state_dict holding all ranks (all must be at one epoch)."""
    if not states:
        raise MaeastError("merge_states needs at least one loader state")
    merged = {k: v for k, v in states[0].items() if k != "ranks"}
    merged["ranks"] = {}
    for state in states:
        if state["epoch"] != merged["epoch"]:
            raise MaeastError(f"loader states are at different epochs ({merged['epoch']} and {state['epoch']}); "
                              f"take them at the same step on every rank")
        merged["ranks"].update(state["ranks"])
    return merged


class SingleStreamState:
    """Epoch and resume bookkeeping for loaders without worker slots of their own (DALI, FFCV).

    The class sets `self.state = LoaderState.fresh(0, seed, world_size, 0, rank)` and `self.config`,
    `self.rank`, `self.world_size`; this mixin gives the loader contract over it.
    """

    epoch = property(lambda self: self.state.epoch)
    stats = property(lambda self: dict(self.state.stats))

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.state.epoch:
            stats = self.state.stats
            self.state = LoaderState.fresh(epoch, self.config.seed, self.world_size, 0, self.rank)
            self.state.stats = stats

    def state_dict(self) -> dict:
        return self.state.to_dict()

    def load_state_dict(self, state: dict) -> None:
        self.state.load(state)

    def _counted(self, batches: Iterator[tuple[int, object]]) -> Iterator:
        """The epoch's batches from (position, batch) pairs, each recorded as consumed; ends after len(self)."""
        state, total = self.state, len(self)
        done = state.batches[0]
        if done >= total:
            return
        for position, batch in batches:
            state.consume(0, position)
            done += 1
            if done == total:
                state.next_epoch()
            yield batch
            if done == total:
                return
