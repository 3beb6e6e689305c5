"""Elastic resume: a run saved with N processes x W workers continues on M x V. Unit tests of the loader
re-deal (maeast.loaders.elastic) and the checkpoint layout routes (maeast.engine.layout); end-to-end
runs of 2 -> 1 and 1 -> 2 processes (ZeRO-2, ZeRO-3), a refused layout, and a rank killed mid-run."""

from __future__ import annotations

import re

import pytest
import torch

from maeast.engine.layout import Layout, resume_route, saved_layout
from maeast.errors import MaeastError
from maeast.loaders.elastic import regroup, slot_progress
from maeast.loaders.state import LoaderState


def rank_state(rank, world, workers, batches, positions, epoch=0, bad=0):
    s = LoaderState(epoch, 0, world, workers, rank, list(batches), list(positions))
    s.stats["bad_samples"] = bad
    return s.to_dict()


def even(epoch, world, workers):
    """Every slot of 4 gets 3 batches, however they are grouped."""
    return [[3] * max(workers, 1) for _ in range(world)]


def test_same_layout_is_the_merged_state():
    states = [rank_state(0, 2, 1, [1], [1]), rank_state(1, 2, 1, [1], [2])]
    assert regroup(states, 1, 2, 1, even) == {**states[0], "ranks": {**states[0]["ranks"], **states[1]["ranks"]}}


@pytest.mark.parametrize("world,workers", [(1, 4), (4, 1), (2, 2)])
def test_slots_keep_their_positions_when_regrouped(world, workers):
    # 2 processes x 2 workers, 1 batch taken from each slot (slot 1 skipped a bad batch: position 2)
    states = [rank_state(0, 2, 2, [1, 1], [1, 2], bad=1), rank_state(1, 2, 2, [1, 1], [1, 1], bad=2)]
    before = slot_progress({**states[0], "ranks": {**states[0]["ranks"], **states[1]["ranks"]}})
    after = []
    for rank in range(world):
        new = regroup(states, rank, world, workers, even)
        assert (new["world_size"], new["num_workers"]) == (world, workers)
        LoaderState.fresh(0, 0, world, workers, rank).load(new)  # the loader accepts it
        after += slot_progress({**new, "world_size": 1, "ranks": {"0": new["ranks"][str(rank)]}})
    assert after == before == [(1, 1), (1, 2), (1, 1), (1, 1)]
    assert sum(regroup(states, r, world, workers, even)["ranks"][str(r)]["stats"]["bad_samples"]
               for r in range(world)) == 3  # the counters carry over, none twice


def test_epoch_boundary_takes_any_layout():
    states = [rank_state(0, 2, 1, [0], [0], epoch=2), rank_state(1, 2, 1, [0], [0], epoch=2)]
    new = regroup(states, 2, 3, 2, even)
    assert new["epoch"] == 2 and new["ranks"]["2"]["positions"] == [0, 0]


def test_mid_epoch_with_other_slots_is_one_line():
    states = [rank_state(0, 2, 1, [1], [1]), rank_state(1, 2, 1, [1], [1])]
    with pytest.raises(MaeastError, match=r"middle of epoch 0 with 2 process\(es\) x 1 worker\(s\) \(2 slots\), "
                                          r"this run has 1 x 1 \(1 slots\).*data.num_workers=2"):
        regroup(states, 0, 1, 1, even)


def test_uneven_quotas_are_refused():
    states = [rank_state(0, 1, 2, [1, 1], [1, 1])]
    uneven = lambda epoch, world, workers: [[3, 2]] if world == 1 else [[3], [2]]  # noqa: E731
    with pytest.raises(MaeastError, match=r"would not end the epoch together"):
        regroup(states, 0, 2, 1, uneven)


def test_layout_routes():
    z = lambda world, stage, bf16=False: Layout(world, stage, bf16)  # noqa: E731
    assert resume_route(z(2, 2), z(2, 2), "ck") == "native"
    assert resume_route(z(2, 0), z(1, 0), "ck") == "native"
    assert resume_route(z(2, 2), z(1, 2), "ck") == "universal"
    assert resume_route(z(2, 1), z(4, 2), "ck") == "universal"
    assert resume_route(z(2, 3), z(1, 3), "ck") == "universal"
    for saved, now in [(z(2, 0), z(2, 2)), (z(2, 2), z(1, 3)), (z(1, 3), z(2, 1)), (z(1, 2, True), z(1, 2))]:
        with pytest.raises(MaeastError, match=re.escape(f"saved with {saved}, this run has {now}")):
            resume_route(saved, now, "ck")


def test_saved_layout_recorded_or_inferred(tmp_path):
    torch.save({"step": 1, "world_size": 2, "layout": Layout(2, 3, False).to_dict()}, tmp_path / "state_rank0.pt")
    assert saved_layout(tmp_path) == Layout(2, 3, False)
    torch.save({"step": 1, "world_size": 2}, tmp_path / "state_rank0.pt")  # written before layouts were recorded
    assert saved_layout(tmp_path) == Layout(2, 0, False)
    for r in range(2):
        (tmp_path / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").touch()
    assert saved_layout(tmp_path, {"zero_optimization": {"stage": 2}}) == Layout(2, 2, False)
    (tmp_path / "zero_pp_rank_0_mp_rank_00_model_states.pt").touch()
    assert saved_layout(tmp_path, {"bf16": {"enabled": True}}) == Layout(2, 3, True)
