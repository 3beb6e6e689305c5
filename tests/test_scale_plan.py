"""The epoch plan at scale: the one-deal quotas equal the per-slot ones they replaced, the re-deal's kept
flat order equals a fresh one, and a plan from index metadata alone shows every clip once (the
invariants benchmarks/scale.py checks at AudioSet size, here on small synthetic indexes)."""

from __future__ import annotations

import io
import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from maeast.errors import MaeastError
from maeast.loaders import elastic
from maeast.loaders.baddata import Errors
from maeast.loaders.config import LoaderConfig
from maeast.loaders.keep import Keep
from maeast.loaders.sources import Shard, Source, _even, quotas, slot_shards
from maeast.loaders.stream import Plan, Sample, planned_batches

RATE = 16000


def per_slot_quotas(sources, seed, epoch, world_size, workers, batch_size, drop_last, epoch_batches, min_seconds=0.0,
                    keep=None):
    """sources.quotas as it was before the one-deal rewrite: every slot's shards dealt on their own."""
    w = max(workers, 1)
    slots = world_size * w
    count = (lambda shard: shard.usable(min_seconds)) if keep is None else keep.count
    per_slot = np.zeros(slots, dtype=np.int64)
    for i, source in enumerate(sources):
        for slot in range(slots):
            per_slot[slot] += sum(count(s) for s in slot_shards(source, i, seed, epoch, slot, slots))
    batches = per_slot // batch_size if drop_last else -(-per_slot // batch_size)
    table = batches.reshape(world_size, w)
    if epoch_batches is not None:
        return [_even(epoch_batches, [int(x) for x in row]) for row in table]
    total = int(table.sum(axis=1).min())
    out = []
    for row in table:
        row = [int(x) for x in row]
        for _ in range(sum(row) - total):
            k = max(range(w), key=lambda j: (row[j], j))
            row[k] -= 1
        out.append(row)
    return out


def synthetic(shards: int, rng: random.Random, name: str = "s") -> tuple[Source, dict[str, list[int]]]:
    """A Source of `shards` shards of 3-40 clips of 0.1-10 s (index metadata only) and each shard's lengths."""
    lengths = {f"{name}-{i:06d}.tar": [round(rng.uniform(0.1, 10.0) * RATE) for _ in range(rng.randint(3, 40))]
               for i in range(shards)}
    table = tuple(Shard(Path(f"{name}/{n}"), len(ls), "", 0, tuple(sum(x < round(k * 0.5 * RATE) for x in ls)
                                                                   for k in range(1, 21)), n, 2)
                  for n, ls in lengths.items())
    return Source(Path(name), name, "train", table, (), False, RATE, float(sum(map(len, lengths.values())))), lengths


@pytest.mark.parametrize("case", range(12))
def test_quotas_equal_the_per_slot_deal(case):
    rng = random.Random(case)
    sources = [synthetic(rng.randint(8, 90), rng, f"s{k}")[0] for k in range(rng.randint(1, 3))]
    world_size, workers = rng.randint(1, 4), rng.choice([0, 1, 2, 3])
    if min(len(s.shards) for s in sources) < world_size * max(workers, 1):
        world_size = 1
    keep = None
    if case % 4 == 3:
        sources = sources[:1]
        keys = {s.name: [f"{s.name}/{j}" for j in range(s.samples)] for s in sources[0].shards}
        keep = Keep.of(keys, lambda key: int(key.rsplit('/', 1)[1]) % 3 != 0)
    args = (sources, rng.randint(0, 9), rng.randint(0, 5), world_size, workers, rng.randint(1, 9),
            bool(case % 2), 7 if case % 5 == 4 else None, rng.choice([0.0, 1.0, 2.0, 2.3]), keep)
    assert _outcome(quotas, args) == _outcome(per_slot_quotas, args)


def _outcome(fn, args):
    try:
        return fn(*args)
    except MaeastError as e:
        return str(e)


def test_deal_keeps_the_flat_order_of_each_rest():
    rest = {"world_size": 2, "num_workers": 2, "step_batches": 4, "taken": [1, 0, 2, 1], "from": [1, 0, 3, 1],
            "left": [3, 4, 2, 3], "begin": 0, "end": 12}
    other = {**rest, "from": [2, 0, 3, 1]}
    for r in (rest, other, rest):
        flat = elastic.flat_order(r)[0:12]
        for rank in range(2):
            mine = flat[rank::2]
            assert elastic.deal(r, rank, 2, 3) == [mine[j::3] for j in range(3)]
    assert elastic.deal(rest, 1, 2, 3, dealt=2) == [elastic.flat_order(rest)[1::2][2:][j::3] for j in range(3)]


@pytest.mark.parametrize("world_size,workers", [(1, 1), (2, 2), (3, 2)])
def test_a_plan_from_metadata_shows_each_clip_once(world_size, workers):
    """Every slot yields its quota of batches; over all slots no clip comes twice and none under
    min_seconds; what is not seen is only what the trim to the smallest rank leaves out."""
    rng = random.Random(world_size * 10 + workers)
    source, lengths = synthetic(23, rng)
    row = {name: i for i, name in enumerate(lengths)}

    def read(shard):
        for j, n in enumerate(lengths[shard.name]):
            yield Sample(f"{row[shard.name]}/{j}", b"", {"num_samples": n}, "flac", shard.name)

    cfg = LoaderConfig(shards=["s"], mode="pretrain", batch_size=4, shuffle_buffer=16, num_workers=workers)
    table = quotas([source], cfg.seed, 1, world_size, workers, cfg.batch_size, False, None, cfg.min_seconds)
    seen = []
    for rank in range(world_size):
        plan = Plan(cfg, [source], rank, world_size, 1, table[rank], [0] * workers, [0] * workers, None)
        for worker in range(workers):
            batches = list(itertools.islice(planned_batches(plan, worker, Errors("skip"), read), table[rank][worker]))
            assert len(batches) == table[rank][worker]
            seen += [s.key for b in batches for s in b]
    assert len(seen) == len(set(seen))
    long_enough = {f"{row[n]}/{j}" for n, ls in lengths.items() for j, x in enumerate(ls) if x >= 2 * RATE}
    assert set(seen) <= long_enough
    full = sum(-(-sum(s.usable(2.0) for s in slot_shards(source, 0, 0, 1, k, world_size * workers)) // 4)
               for k in range(world_size * workers))
    assert full - sum(map(sum, table)) >= 0
    if full == sum(map(sum, table)):  # nothing trimmed: every clip of at least min_seconds is seen
        assert set(seen) == long_enough


def test_a_remote_read_starts_small_and_doubles(tmp_path, monkeypatch):
    """The first ranged read is FIRST_CHUNK bytes, each next one twice the last up to CHUNK, and the object
    comes back byte for byte."""
    from maeast.shards import storage

    data = np.random.default_rng(0).integers(0, 256, 3_500_000, dtype=np.uint8).tobytes()
    (tmp_path / "object.tar").write_bytes(data)
    monkeypatch.setattr(storage, "CHUNK", 1 << 20)
    ranges = []
    original = storage.RangeReader._range

    def spy(self, start, end):
        ranges.append((start, end))
        return original(self, start, end)

    monkeypatch.setattr(storage.RangeReader, "_range", spy)
    with io.BufferedReader(storage.RangeReader(f"file://{tmp_path}/object.tar", len(data)), 1 << 20) as f:
        assert f.read() == data  # open_stream reads a local file plainly; the reader is the remote one
    sizes = [end - start for start, end in ranges]
    assert sizes == [256 << 10, 512 << 10, 1 << 20, 1 << 20, len(data) - (2816 << 10)]
    assert [start for start, _ in ranges] == [0] + list(itertools.accumulate(sizes))[:-1]
