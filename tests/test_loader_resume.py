"""Resuming mid-epoch: a run stopped after k batches and resumed from its state_dict sees every clip
of the epoch exactly once, in the same batches as a run that was never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maeast.errors import MaeastError
from maeast.loaders import LoaderConfig, StreamingLoader, merge_states
from tests.conftest import build, corpus_keys, make_corpus


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    build(make_corpus(root / "corpus", speech=6, music=6), root / "shards")
    return root / "shards"


def config(shards, **kw) -> LoaderConfig:
    return LoaderConfig(**{**dict(shards=[str(shards)], batch_size=2, num_workers=2, shuffle_buffer=4,
                                  bucket_batches=2, min_seconds=0.0, prefetch=2, seed=11), **kw})


def batches_of(loader) -> list[tuple[tuple[str, ...], float]]:
    return [(tuple(b.keys), round(b.features.double().sum().item(), 3)) for b in loader]


@pytest.mark.parametrize("k", [1, 3, 4])
def test_killed_run_resumes_without_repeats_or_gaps(shards, k):
    reference = batches_of(StreamingLoader(config(shards)))
    assert sorted(key for keys, _ in reference for key in keys) == corpus_keys(shards)

    first = StreamingLoader(config(shards))
    seen = []
    for batch in first:  # the workers have prefetched more than k batches by now
        seen.append((tuple(batch.keys), round(batch.features.double().sum().item(), 3)))
        if len(seen) == k:
            break
    state = json.loads(json.dumps(first.state_dict()))  # as saved in a checkpoint
    assert sum(state["ranks"]["0"]["batches"]) == k
    del first

    resumed = StreamingLoader(config(shards))
    resumed.load_state_dict(state)
    assert resumed.epoch == 0
    rest = batches_of(resumed)
    unseen = set(corpus_keys(shards)) - {key for keys, _ in seen for key in keys}
    assert unseen and sorted(key for keys, _ in rest for key in keys) == sorted(unseen)  # exactly the rest
    seen += rest
    keys = [key for keys, _ in seen for key in keys]
    assert sorted(keys) == corpus_keys(shards)  # every clip of the epoch, each once
    assert sorted(seen) == sorted(reference)  # the same batches, same crops, as an unbroken run
    assert resumed.epoch == 1 and resumed.state_dict()["ranks"]["0"]["batches"] == [0, 0]


def test_resume_in_process_and_next_epoch(shards):
    loader = StreamingLoader(config(shards))
    it = iter(loader)
    head = [next(it) for _ in range(2)]
    del it
    rest = list(loader)  # the same loader object carries on where the caller stopped
    unseen = set(corpus_keys(shards)) - {k for b in head for k in b.keys}
    assert unseen and sorted(k for b in rest for k in b.keys) == sorted(unseen)  # exactly the rest of the epoch
    assert sorted(k for b in head + rest for k in b.keys) == corpus_keys(shards)
    assert loader.epoch == 1 and len(list(loader)) == len(loader)


def test_two_ranks_merge_and_resume(shards):
    def rank_loader(r):
        return StreamingLoader(config(shards, num_workers=1), rank=r, world_size=2)

    reference = [batches_of(rank_loader(r)) for r in range(2)]
    loaders = [rank_loader(r) for r in range(2)]
    heads = []
    for loader in loaders:
        it = iter(loader)
        b = next(it)
        heads.append([(tuple(b.keys), round(b.features.double().sum().item(), 3))])
        del it
    merged = merge_states([loader.state_dict() for loader in loaders])
    assert sorted(merged["ranks"]) == ["0", "1"]
    for r in range(2):
        fresh = rank_loader(r)
        fresh.load_state_dict(merged)
        assert heads[r] + batches_of(fresh) == reference[r]


def test_state_from_another_layout_is_refused(shards):
    loader = StreamingLoader(config(shards))
    it = iter(loader)
    next(it)
    del it
    state = loader.state_dict()
    with pytest.raises(MaeastError, match="resume with the same layout"):
        StreamingLoader(config(shards, num_workers=1)).load_state_dict(state)
    with pytest.raises(MaeastError, match="same loader.seed"):
        StreamingLoader(config(shards, seed=12)).load_state_dict(state)
    with pytest.raises(MaeastError, match="not rank 1"):
        StreamingLoader(config(shards, num_workers=1), rank=1, world_size=2).load_state_dict(
            StreamingLoader(config(shards, num_workers=1), rank=0, world_size=2).state_dict())
    fresh = StreamingLoader(config(shards))
    fresh.set_epoch(4)
    StreamingLoader(config(shards, num_workers=1)).load_state_dict(fresh.state_dict())  # epoch boundary: fine


def test_batch_features_do_not_depend_on_resume_point(shards):
    """Crop offsets come from (seed, epoch, rank, worker, position), not from how many batches ran."""
    a = {tuple(b.keys): b.features for b in StreamingLoader(config(shards))}
    loader = StreamingLoader(config(shards))
    it = iter(loader)
    head = [next(it), next(it)]
    del it
    rest = []
    for b in loader:
        assert torch.equal(a[tuple(b.keys)], b.features)
        rest += b.keys
    unseen = set(corpus_keys(shards)) - {k for b in head for k in b.keys}
    assert unseen and sorted(rest) == sorted(unseen)  # the resumed loop yielded exactly the rest of the epoch
