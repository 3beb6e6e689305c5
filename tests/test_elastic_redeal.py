"""The mid-epoch re-deal (maeast.loaders.elastic): a loader state saved mid-epoch on N processes x W workers,
resumed on M x V. Pure tests against a small simulation of how a run feeds its steps, then real loaders
(no engine) whose re-dealt batches must be the very batches, crops included, of the uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maeast.errors import MaeastError
from maeast.loaders import LoaderConfig, StreamingLoader
from maeast.loaders.elastic import deal, flat_order, loader_quotas, regroup, rest_line
from maeast.loaders.state import LoaderState
from tests.conftest import build, corpus_keys, make_corpus


def round_robin(lists: list[list]) -> list:
    """What a DataLoader hands out from workers holding these lists: turn by turn, a finished worker dropping out."""
    return [x[t] for t in range(max(map(len, lists), default=0)) for x in lists if t < len(x)]


def feed(ranks: list[list], step_batches: int, first_step: int = 0) -> dict[tuple[int, int], object]:
    """(step, micro-batch slot micro * world + rank) -> what fed it, from each rank's sequence of batches."""
    world = len(ranks)
    accum = step_batches // world
    return {(first_step + i // accum, (i % accum) * world + r): b
            for r, seq in enumerate(ranks) for i, b in enumerate(seq)}


def saved_run(quota: list[list[int]], steps: int, step_batches: int):
    """A run on len(quota) processes x len(quota[0]) workers: its loader states after `steps` steps, and its feed
    of the epoch's remaining steps (batch = (slot, position))."""
    n, w = len(quota), len(quota[0])
    accum = step_batches // n
    states, rest = [], []
    for r in range(n):
        plans = [[(r * w + j, p) for p in range(q)] for j, q in enumerate(quota[r])]
        taken = round_robin(plans)[:steps * accum]
        counts = [sum(1 for s, _ in taken if s == r * w + j) for j in range(w)]
        states.append(LoaderState(0, 0, n, w, r, counts, list(counts)).to_dict())
        rest.append(round_robin(plans)[steps * accum:])
    return states, feed(rest, step_batches, steps)


def resumed_feed(states, quota_fn, world, workers, step_batches, steps):
    new = [regroup(states, r, world, workers, quota_fn, step_batches) for r in range(world)]
    for r, state in enumerate(new):
        LoaderState.fresh(0, 0, world, workers, r).load(state)  # the loader accepts it
    lists = [deal(state["rest"], r, world, workers) for r, state in enumerate(new)]
    return new, feed([round_robin(per_worker) for per_worker in lists], step_batches, steps)


CASES = [  # old quotas [rank][worker], steps done, batches per step, new layout
    ([[5], [5]], 2, 4, (1, 1)),       # 2 x 1 -> 1 x 1
    ([[5], [5]], 2, 4, (1, 3)),       # 2 x 1 -> 1 x 3
    ([[12]], 2, 4, (2, 1)),           # 1 x 1 -> 2 x 1: 8 left, even
    ([[11]], 2, 4, (2, 1)),           # 1 x 1 -> 2 x 1: 7 left, one left out
    ([[7, 5]], 1, 2, (2, 2)),         # 1 x 2 -> 2 x 2, workers of unequal quotas
    ([[4, 4]], 1, 3, (3, 1)),         # 1 x 2 -> 3 x 1: the save falls at worker 1's turn
    ([[3, 2], [3, 2]], 1, 4, (1, 1)),  # 2 x 2 -> 1 x 1
    ([[3, 2], [2, 3]], 1, 4, (1, 4)),  # 2 x 2 -> 1 x 4 (as many slots, other trainer slots)
    ([[4, 4, 3]], 1, 6, (3, 1)),      # 1 x 3 -> 3 x 1: accumulation 6 -> 2, 5 left, 2 left out
    ([[6], [6], [6], [6]], 1, 8, (2, 2)),  # 4 x 1 -> 2 x 2
]


@pytest.mark.parametrize("quota,steps,step_batches,new", CASES)
def test_the_rest_is_fed_in_the_same_steps_and_slots(quota, steps, step_batches, new):
    states, before = saved_run(quota, steps, step_batches)
    quota_fn = lambda epoch, world, workers: quota  # noqa: E731 (only the saved layout's quotas are asked for)
    after_states, after = resumed_feed(states, quota_fn, *new, step_batches, steps)
    order = [before[k] for k in sorted(before)]
    assert flat_order(after_states[0]["rest"]) == order  # the rest in the uninterrupted run's order
    world = new[0]
    kept = len(order) - len(order) % world  # the remainder rule: the last (left mod M) batches wait
    assert sorted(after) == sorted(before)[:kept]
    assert all(after[k] == before[k] for k in after)  # every step and slot holds what it held before
    assert sorted(after.values()) == sorted(order[:kept])  # each once
    if len(quota) % world == 0:
        assert kept == len(order)  # M divides N: nothing is left out


def test_the_log_line_names_what_is_left_out():
    states, _ = saved_run([[11]], 2, 4)
    new = regroup(states, 0, 2, 1, lambda epoch, world, workers: [[11]], 4)
    assert rest_line(new) == ("the rest of epoch 0, 2 batch(es) of the 1 process(es) x 1 worker(s) that planned it, "
                              "re-dealt over 2 x 1 in the steps and micro-batch slots of the uninterrupted run; its "
                              "last 1 batch(es) do not divide over 2 processes and are left out")
    assert rest_line(states[0]) is None


def test_a_re_dealt_rest_re_deals_again():
    """2 x 1 -> 1 x 1 for a step, saved mid-rest, then -> 2 x 2: what is left of the same rest, each batch once."""
    quota, step_batches = [[8], [8]], 4
    states, before = saved_run(quota, 2, step_batches)
    quota_fn = lambda epoch, world, workers: quota  # noqa: E731
    one = regroup(states, 0, 1, 1, quota_fn, step_batches)
    loader = LoaderState.fresh(0, 0, 1, 1, 0)
    loader.load(one)
    items = deal(loader.rest, 0, 1, 1)[0]
    for position in range(step_batches):  # one step on 1 x 1
        loader.consume(0, position)
    saved = json.loads(json.dumps(loader.to_dict()))
    assert saved["rest"]["begin"] == 0 and saved["ranks"]["0"]["positions"] == [4]
    again, after = resumed_feed([saved], quota_fn, 2, 2, step_batches, 3)
    assert again[0]["rest"]["begin"] == 4 and again[0]["rest"]["end"] == 8
    assert after == {k: v for k, v in before.items() if k[0] >= 3}
    assert sorted(after.values()) == sorted(items[4:])
    # on its own layout a re-dealt state is taken as it is
    assert regroup([saved], 0, 1, 1, quota_fn, step_batches) == saved


def test_bad_data_counters_carry_over_once():
    states = []
    for rank, bad in enumerate([1, 2]):
        state = LoaderState(0, 0, 2, 2, rank, [1, 1], [1, 2])
        state.stats["bad_samples"] = bad
        states.append(state.to_dict())
    quota_fn = lambda epoch, world, workers: [[3, 3], [3, 3]]  # noqa: E731
    for world, workers in [(1, 1), (3, 1), (1, 4)]:
        new = [regroup(states, r, world, workers, quota_fn, 12) for r in range(world)]
        assert sum(s["ranks"][str(r)]["stats"]["bad_samples"] for r, s in enumerate(new)) == 3


def test_boundaries_and_one_line_refusals():
    quota_fn = lambda epoch, world, workers: [[3] * max(workers, 1) for _ in range(world)]  # noqa: E731
    boundary = [LoaderState(2, 0, 2, 1, r, [0], [0]).to_dict() for r in range(2)]
    new = regroup(boundary, 1, 3, 2, quota_fn, 6)
    assert new["epoch"] == 2 and "rest" not in new and new["ranks"]["1"]["positions"] == [0, 0]
    # one batch left on one rank, dealt over 2 processes: it waits, and the next epoch is the new layout's own
    last = [LoaderState(0, 0, 1, 1, 0, [2], [2]).to_dict()]
    nothing = regroup(last, 1, 2, 1, quota_fn, 2)
    assert nothing["epoch"] == 1 and "rest" not in nothing and nothing["ranks"]["1"]["positions"] == [0]
    mid = [LoaderState(0, 0, 2, 1, r, [1], [1]).to_dict() for r in range(2)]
    with pytest.raises(MaeastError, match=r"4 batches per step do not divide over 3 processes"):
        regroup(mid, 0, 3, 1, quota_fn, 4)
    rest = regroup(mid, 0, 1, 1, quota_fn, 2)
    uneven = [{**rest, "world_size": 2, "ranks": {"0": {"batches": [1], "positions": [1]}}},
              {**rest, "world_size": 2, "ranks": {"1": {"batches": [0], "positions": [0]}}}]
    with pytest.raises(MaeastError, match=r"ranks stopped at different points of a re-dealt epoch \(\[0, 1\]"):
        regroup(uneven, 0, 1, 2, quota_fn, 2)


# ---- real loaders, in this process and in worker processes --------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("redeal")
    build(make_corpus(root / "corpus", speech=6, music=6), root / "shards")
    return root / "shards"


def config(shards, workers) -> LoaderConfig:
    return LoaderConfig(shards=[str(shards)], batch_size=2, num_workers=workers, shuffle_buffer=4, bucket_batches=2,
                        min_seconds=0.0, prefetch=2, seed=11)


def batches(loader, n=None):
    out = []
    for batch in loader:
        out.append((tuple(batch.keys), batch.features))
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("k", [1, 3])
def test_a_resume_between_worker_turns_keeps_the_order(shards, k):
    """Saved after a number of batches that 2 workers' turns do not divide (accumulation 1 with 2 workers saves
    so at every other step), resumed on its layout: the batches come in the uninterrupted order, not only
    the same batches (a restarted DataLoader starts at worker 0; the loader starts it at the next turn)."""
    whole = [keys for keys, _ in batches(StreamingLoader(config(shards, 2)))]
    first = StreamingLoader(config(shards, 2))
    seen = [keys for keys, _ in batches(first, k)]
    again = StreamingLoader(config(shards, 2))
    again.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert seen + [keys for keys, _ in batches(again)] == whole


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 4 workers on a 2-core machine
@pytest.mark.parametrize("saved,now,step_batches", [((2, 1), (1, 1), 2), ((1, 1), (2, 1), 2), ((2, 2), (1, 1), 2),
                                                    ((1, 2), (3, 1), 3), ((2, 2), (1, 2), 2), ((2, 2), (1, 4), 2)])
def test_loaders_re_deal_the_very_batches(shards, saved, now, step_batches):
    (n, w), (m, v) = saved, now
    steps = 1
    accum = step_batches // n
    whole = [batches(StreamingLoader(config(shards, w), r, n)) for r in range(n)]  # the uninterrupted epoch
    before = feed(whole, step_batches)
    loaders = [StreamingLoader(config(shards, w), r, n) for r in range(n)]
    for loader in loaders:
        batches(loader, steps * accum)
    states = [json.loads(json.dumps(loader.state_dict())) for loader in loaders]
    rests = []
    for r in range(m):
        loader = StreamingLoader(config(shards, v), r, m)
        loader.load_state_dict(regroup(states, r, m, v, loader_quotas(loader), step_batches))
        rest = batches(loader, 1) if len(loader) > 1 else []  # stopped again within the rest, resumed as it is
        again = StreamingLoader(config(shards, v), r, m)
        again.load_state_dict(json.loads(json.dumps(loader.state_dict())))
        rests.append(rest + batches(again, len(again)))  # its len: what is left
        assert again.epoch == 1  # the rest ended the epoch
    after = feed(rests, step_batches, steps)
    kept = [k for k in sorted(before) if k[0] >= steps][:len(after)]
    assert sorted(after) == kept
    for k in kept:
        assert after[k][0] == before[k][0] and torch.equal(after[k][1], before[k][1]), k  # same clips, same crops
    seen = [key for k in sorted(before) if k[0] < steps for key in before[k][0]]
    seen += [key for b in after.values() for key in b[0]]
    left_out = [key for k in sorted(before) if k[0] >= steps and k not in after for key in before[k][0]]
    assert len(left_out) < 2 * m and sorted(seen + left_out) == sorted(
        key for b in before.values() for key in b[0])  # each clip once, but a remainder under M batches
    assert len(seen) == len(set(seen))
    assert set(seen + left_out) <= set(corpus_keys(shards))


def test_a_re_dealt_batch_that_does_not_decode_is_replaced(shards, monkeypatch):
    """The ranks of a re-dealt rest stay in step: a batch that does not decode gives way to its old slot's
    spare (the rest's length further in that slot's stream), as a normal epoch reads past its quota."""
    import maeast.loaders.worker as worker
    saved = [StreamingLoader(config(shards, 1), r, 2) for r in range(2)]
    for loader in saved:
        batches(loader, 1)
    states = [json.loads(json.dumps(loader.state_dict())) for loader in saved]
    loader = StreamingLoader(config(shards, 0), 0, 1)  # 1 process, reading in this one
    loader.load_state_dict(regroup(states, 0, 1, 0, loader_quotas(loader), 2))
    first = deal(loader.state.rest, 0, 1, 0)[0][0]  # (old slot, position) of the rest's first batch
    real, calls = worker.materialize, []

    def broken(samples, plan, slot_worker, position, errors):
        calls.append((plan.rank * plan.workers + slot_worker, position))
        return None if calls[-1] == first else real(samples, plan, slot_worker, position, errors)

    monkeypatch.setattr(worker, "materialize", broken)
    left = dict(loader.state.rest)["left"]
    rest = batches(loader, len(loader))
    spare = (first[0], first[1] + left[first[0]])
    assert calls[:2] == [first, spare] and len(rest) == len(calls) - 1  # every item gives a batch
    assert loader.epoch == 1



def test_loaders_re_deal_a_re_dealt_rest(shards):
    """2 x 1 -> 1 x 1 for a step, saved, then -> 2 x 1 again: the uninterrupted run's batches, step by step."""
    step_batches = 2
    before = feed([batches(StreamingLoader(config(shards, 1), r, 2)) for r in range(2)], step_batches)
    saved = [StreamingLoader(config(shards, 1), r, 2) for r in range(2)]
    for loader in saved:
        batches(loader, 1)
    one = StreamingLoader(config(shards, 0), 0, 1)
    one.load_state_dict(regroup([loader.state_dict() for loader in saved], 0, 1, 0, loader_quotas(one), step_batches))
    middle = feed([batches(one, 2)], step_batches, 1)
    state = json.loads(json.dumps(one.state_dict()))
    rests = []
    for r in range(2):
        loader = StreamingLoader(config(shards, 1), r, 2)
        loader.load_state_dict(regroup([state], r, 2, 1, loader_quotas(loader), step_batches))
        rests.append(batches(loader, len(loader)))
    after = feed(rests, step_batches, 2)
    assert after and sorted(middle) + sorted(after) == [k for k in sorted(before) if k[0] >= 1]
    for k, b in {**middle, **after}.items():
        assert b[0] == before[k][0] and torch.equal(b[1], before[k][1]), k
