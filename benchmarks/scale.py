"""The data plane at AudioSet scale, metadata only: planning an epoch, the re-deal, shuffle quality.

No audio is read. A synthetic index stands in for AudioSet-2M packed by `maeast shard build`: --clips
clips (2,000,000) in --shards shards (20,000) at 16 kHz with AudioSet-like lengths (an assumption, not
a measurement of AudioSet: 90% of clips 10 s, the rest uniform in 0.2-10 s, so that min_seconds 2
leaves some out). Each shard's samples are made from that metadata (key = the clip's id, JSON
num_samples) and fed to the loader's own planner (stream.planned_batches with a `read` of its own),
with the default pretraining LoaderConfig (batch 8, shuffle buffer 1000, 8 batches a length pool,
min_seconds 2). For each layout (ranks x workers) the table gives:

  up-front s / MB   what every rank computes before its first batch: the epoch's quotas for all slots
                    (sources.quotas; time, and tracemalloc's peak in a second, untimed-for-speed run)
  walk s / MB       one worker's whole-epoch plan from metadata (the median and slowest worker; a real
                    worker does this interleaved with reading its shards), and the peak of rank 0's workers
  batches/slot      min-max of the slots' quotas; every rank yields the same number
  exactly once      checked: every slot yields its quota, no clip twice over all slots, and the clips
                    left out (under min_seconds, or trimmed to the smallest rank) counted
  shuffle quality   mosaicml/streaming's figure (simulation/core/shuffle_quality.py, get_entropy and
                    get_entropy_shuffle_quality): in the global order the trainer consumes (step by step,
                    rank by rank, each rank's workers in DataLoader turns), the entropy in bits of the
                    |difference| of consecutive clip ids plus that of consecutive shard ids, ids numbered
                    in shard order. Beside ours: webdataset's pipeline (split by node and worker, a
                    100-shard shuffle, a 1000-clip buffer; webdataset 1.0.2's WebDataset order), a full
                    global shuffle, and no shuffle.

Then the elastic re-deal of a 1,024 x 8 epoch stopped halfway (maeast.loaders.elastic.regroup, deal,
worker.redealt_batches) onto 1,000 x 8 and 512 x 8: time and memory for one new rank (regroup, its
deal, its workers' walks of the old slots' plans, which are checked against those plans), the batches
left out, and every item and clip of the rest checked to be dealt exactly once over all new ranks.
Timings are single runs on a shared 2-core machine: noisy, say so when quoting them.

    python benchmarks/scale.py [--clips 2000000] [--shards 20000] [--layouts 1x1,8x4,128x8,1024x8]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import math
import random
import time
import tracemalloc
from pathlib import Path

import numpy as np
import webdataset as wds
from harness import Bench, Stats

from maeast.loaders.baddata import Errors
from maeast.loaders.config import LoaderConfig
from maeast.loaders.elastic import deal, flat_order, regroup
from maeast.loaders import elastic
from maeast.loaders.sources import Shard, Source, deal_order, quotas
from maeast.loaders.state import FORMAT, new_stats, turns
from maeast.loaders.stream import Plan, Sample, planned_batches
from maeast.loaders.worker import redealt_batches
from maeast.shards.format import SHORT_STEP_SECONDS, SHORT_STEPS

RATE = 16000


@dataclasses.dataclass
class Corpus:
    """The synthetic index: the Source the loader plans from, and every clip's length [shards, per shard]."""

    source: Source
    lengths: np.ndarray

    def read(self, shard: Shard):
        """A shard's samples from metadata: key = the clip's id (shard number * per shard + place)."""
        row = int(shard.name[6:12])
        base = row * self.lengths.shape[1]
        for j, n in enumerate(self.lengths[row].tolist()):
            yield Sample(str(base + j), b"", {"num_samples": n}, "flac", shard.name)

    def shard_of(self, ids: np.ndarray) -> np.ndarray:
        return ids // self.lengths.shape[1]


def make_corpus(clips: int, shards: int, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    per = clips // shards
    lengths = np.full((shards, per), 10 * RATE, dtype=np.int64)
    short = rng.random((shards, per)) < 0.1
    lengths[short] = (rng.uniform(0.2, 10.0, int(short.sum())) * RATE).astype(np.int64)
    limits = np.array([round(k * SHORT_STEP_SECONDS * RATE) for k in range(1, SHORT_STEPS + 1)])
    shorter = np.stack([(lengths < limit).sum(axis=1) for limit in limits], axis=1)  # format.shorter_than's
    table = tuple(Shard(Path(f"audioset/shard-{i:06d}.tar"), per, "", 0, tuple(int(x) for x in shorter[i]),
                        f"shard-{i:06d}.tar", 2) for i in range(shards))
    return Corpus(Source(Path("audioset"), "audioset", "train", table, (), False, RATE, float(clips)), lengths)


def config() -> LoaderConfig:
    return LoaderConfig(shards=["audioset"], mode="pretrain")


def epoch_quotas(corpus: Corpus, cfg: LoaderConfig, ranks: int, workers: int) -> list[list[int]]:
    return quotas([corpus.source], cfg.seed, 0, ranks, workers, cfg.batch_size, cfg.drop_last, cfg.epoch_batches,
                  cfg.min_seconds)


def plan_of(corpus: Corpus, cfg: LoaderConfig, rank: int, ranks: int, table: list[list[int]]) -> Plan:
    w = max(cfg.num_workers, 1)
    return Plan(cfg, [corpus.source], rank, ranks, 0, table[rank], [0] * w, [0] * w, None)


def walk(plan: Plan, worker: int, corpus: Corpus) -> list[list[int]]:
    """A worker's planned batches of the epoch, as clip ids."""
    batches = planned_batches(plan, worker, Errors("skip"), read=corpus.read)
    return [[int(s.key) for s in b] for b in itertools.islice(batches, plan.quotas[worker])]


def peak_mb(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def consumed(per_rank: list[list[list[int]]]) -> np.ndarray:
    """The global order the trainer consumes: the i-th batch of every rank, rank by rank, for i = 0, 1, ..."""
    out = []
    for i in range(max(len(r) for r in per_rank)):
        for batches in per_rank:
            if i < len(batches):
                out += batches[i]
    return np.array(out, dtype=np.int64)


def in_turns(slot_batches: list[list[list[int]]]) -> list[list[int]]:
    """A rank's batches as its DataLoader hands them out (state.turns over its workers)."""
    taken = [0] * len(slot_batches)
    out = []
    for j in turns([len(b) for b in slot_batches]):
        out.append(slot_batches[j][taken[j]])
        taken[j] += 1
    return out


def entropy(ordering: np.ndarray) -> float:
    """mosaicml/streaming's get_entropy: bits of the distribution of |consecutive differences|."""
    freqs = np.bincount(np.abs(np.diff(ordering)))
    probs = freqs[freqs != 0] / (len(ordering) - 1)
    return float(-np.sum(probs * np.log2(probs)))


def shuffle_quality(order: np.ndarray, corpus: Corpus) -> float:
    """mosaicml/streaming's get_entropy_shuffle_quality: clip-id entropy plus shard-id entropy."""
    return entropy(order) + entropy(corpus.shard_of(order))


def layout(bench: Bench, corpus: Corpus, ranks: int, workers: int) -> dict:
    """Plan one epoch on every slot of a layout; figures, checks and the per-slot batches."""
    cfg = dataclasses.replace(config(), num_workers=workers)
    start = time.perf_counter()
    table = epoch_quotas(corpus, cfg, ranks, workers)
    upfront_s = time.perf_counter() - start
    upfront_mb = peak_mb(lambda: epoch_quotas(corpus, cfg, ranks, workers))
    walk_s, slots = [], []
    with bench.status(f"{ranks} x {workers}: planning {ranks * workers} slots"):
        for rank in range(ranks):
            if rank % 64 == 0:
                gc.freeze()  # the slots planned so far: not the walks' garbage to scan (a worker holds only its own)
            plan = plan_of(corpus, cfg, rank, ranks, table)
            for worker in range(workers):
                start = time.perf_counter()
                slots.append(walk(plan, worker, corpus))
                walk_s.append(time.perf_counter() - start)
    plan0 = plan_of(corpus, cfg, 0, ranks, table)
    walk_mb = max(peak_mb(lambda w=w: walk(plan0, w, corpus)) for w in range(workers))
    flat = [q for row in table for q in row]
    short_ok = (corpus.lengths >= round(cfg.min_seconds * RATE)).ravel()
    per_rank = [in_turns(slots[r * workers:(r + 1) * workers]) for r in range(ranks)]
    order = consumed(per_rank)
    seen = np.bincount(order, minlength=corpus.lengths.size)
    quota_met = all(len(b) == q for b, q in zip(slots, flat))
    once = bool(seen.max() <= 1) and not bool(seen[~short_ok].any())
    return {"ranks": ranks, "workers": workers, "upfront_s": upfront_s, "upfront_mb": upfront_mb,
            "walk_s": Stats.of(walk_s), "walk_mb": walk_mb, "batches_min": min(flat), "batches_max": max(flat),
            "rank_batches": sum(table[0]), "exactly_once": once and quota_met, "seen": int(seen.sum()),
            "left_out_short": int((~short_ok).sum()), "left_out_trimmed": int(short_ok.sum() - seen.sum()),
            "quality": shuffle_quality(order, corpus), "slots": slots, "table": table,
            "trimmed_batches": trimmed_batches(corpus, cfg, ranks, workers, False),
            "trimmed_batches_balanced": trimmed_batches(corpus, cfg, ranks, workers, True)}


def trimmed_batches(corpus: Corpus, cfg: LoaderConfig, ranks: int, workers: int, balanced: bool) -> int:
    """Batches the quota trim leaves out (sources.quotas: every rank cut to the smallest rank's total) under the
    loader's deal (slot k reads order[k::slots]) or, for comparison only, a deal whose last, partial round of
    shards goes to the ranks in turn (slot (j % ranks) * workers + j // ranks) instead of to slots 0, 1, ..."""
    slots = ranks * workers
    order = deal_order(corpus.source, 0, cfg.seed, 0)
    usable = np.array([s.usable(cfg.min_seconds) for s in order], dtype=np.int64)
    owner = np.arange(len(order)) % slots
    full = len(order) - len(order) % slots
    if balanced:
        j = np.arange(len(order) - full)
        owner[full:] = (j % ranks) * workers + (j // ranks) % workers
    batches = -(-np.bincount(owner, usable, minlength=slots).astype(np.int64) // cfg.batch_size)
    per_rank = batches.reshape(ranks, workers).sum(axis=1)
    return int((per_rank - per_rank.min()).sum())


def webdataset_order(corpus: Corpus, cfg: LoaderConfig, ranks: int, workers: int, seed: int = 0) -> np.ndarray:
    """webdataset 1.0.2's WebDataset(urls, shardshuffle=100, nodesplitter=split_by_node).shuffle(1000)
    .select(min_seconds).batched(batch): shards split by node then worker, a 100-shard buffer shuffle, a
    1000-clip buffer shuffle (initial 100); ranks consume their batches in step, workers in turns."""
    min_samples = round(cfg.min_seconds * RATE)
    shards = list(corpus.source.shards)
    per_rank = []
    for rank in range(ranks):
        slot_batches = []
        for worker in range(workers):
            rng = random.Random(f"{seed}-{rank}-{worker}")
            mine = wds.filters._shuffle(iter(shards[rank::ranks][worker::workers]), 100, 100, rng=rng)
            clips = (s for shard in mine for s in corpus.read(shard) if s.meta["num_samples"] >= min_samples)
            ids = [int(s.key) for s in wds.filters._shuffle(clips, cfg.shuffle_buffer, 100, rng=rng)]
            slot_batches.append([ids[i:i + cfg.batch_size] for i in range(0, len(ids), cfg.batch_size)])
        per_rank.append(in_turns(slot_batches))
    return consumed(per_rank)


def halfway_state(table: list[list[int]], workers: int) -> dict:
    """The merged loader state of an epoch stopped halfway: every rank took half its batches, in turns."""
    ranks = {}
    for rank, row in enumerate(table):
        taken = [0] * workers
        for j in turns(row)[:sum(row) // 2]:
            taken[j] += 1
        ranks[str(rank)] = {"batches": taken, "positions": list(taken), "stats": new_stats()}
    return {"format": FORMAT, "epoch": 0, "seed": 0, "world_size": len(table), "num_workers": workers,
            "ranks": ranks}


def redeal(corpus: Corpus, old: dict, ranks: int, workers: int, step_batches: int) -> dict:
    """Re-deal a halfway 1,024 x 8 epoch (`old`: its layout() result) onto ranks x workers."""
    cfg = dataclasses.replace(config(), num_workers=workers)
    n, w = old["ranks"], old["workers"]
    state = halfway_state(old["table"], w)
    fn = lambda epoch, r, k: epoch_quotas(corpus, cfg, r, k)  # noqa: E731

    def new_rank0():
        new = regroup([state], 0, ranks, workers, fn, step_batches)
        items = deal(new["rest"], 0, ranks, workers)
        return new, items

    elastic._flat_order.cache_clear()  # a new rank deals its rest for the first time
    start = time.perf_counter()
    new, items = new_rank0()
    regroup_s = time.perf_counter() - start
    elastic._flat_order.cache_clear()
    regroup_mb = peak_mb(new_rank0)
    rest = new["rest"]
    plan = Plan(cfg, [corpus.source], 0, ranks, 0, [len(i) for i in items], [0] * workers, [0] * workers, None,
                {**rest, "items": items})
    walk_s, walk_ok = [], True
    for worker in range(workers):
        start = time.perf_counter()
        got = [(o.rank * w + ow, p, [int(s.key) for s in b])
               for o, ow, p, b in redealt_batches(plan, worker, Errors("skip"), 0, corpus.read)]
        walk_s.append(time.perf_counter() - start)
        walk_ok &= all(old["slots"][slot][p] == ids for slot, p, ids in got)
    walk_mb = max(peak_mb(lambda k=k: list(redealt_batches(plan, k, Errors("skip"), 0, corpus.read)))
                  for k in range(workers))
    flat = flat_order(rest)[int(rest["begin"]):int(rest["end"])]
    dealt = [it for r in range(ranks) for share in deal(rest, r, ranks, workers) for it in share]
    items_once = sorted(dealt) == sorted(flat) and len(set(dealt)) == len(dealt)
    taken = [old["slots"][s][:p] for s, p in enumerate(rest["from"])]
    clips = [c for batches in taken for b in batches for c in b] + [c for s, p in dealt for c in old["slots"][s][p]]
    clips_once = len(set(clips)) == len(clips)
    return {"ranks": ranks, "workers": workers, "step_batches": step_batches, "rest_batches": sum(rest["left"]),
            "left_out": sum(rest["left"]) - int(rest["end"]), "regroup_s": regroup_s, "regroup_mb": regroup_mb,
            "walk_s": Stats.of(walk_s), "walk_mb": walk_mb, "old_slots_walked": len({s for s, _ in items[0]}),
            "exactly_once": items_once and clips_once and walk_ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2_000_000)
    parser.add_argument("--shards", type=int, default=20_000)
    parser.add_argument("--layouts", default="1x1,8x4,128x8,1024x8", help="ranks x workers, comma-separated")
    parser.add_argument("--redeal", default="1000x8,512x8", help="layouts the last one is re-dealt onto ('' skips)")
    args = parser.parse_args()
    bench = Bench("scale", repeats=1, warmup=0)
    with bench.status("the synthetic index"):
        corpus = make_corpus(args.clips, args.shards)
    index_mb = peak_mb(lambda: make_corpus(args.clips, args.shards).source)
    bench.update({"clips": args.clips, "shards": args.shards, "index_mb": round(index_mb, 1)})
    cfg = config()
    rows, quality_rows, last = [], [], None
    for text in args.layouts.split(","):
        ranks, workers = (int(x) for x in text.split("x"))
        r = layout(bench, corpus, ranks, workers)
        wds_q = shuffle_quality(webdataset_order(corpus, cfg, ranks, workers), corpus)
        usable = np.flatnonzero((corpus.lengths >= round(cfg.min_seconds * RATE)).ravel())
        full_q = shuffle_quality(np.random.default_rng(0).permutation(usable), corpus)
        none_q = shuffle_quality(usable, corpus)
        key = f"l{ranks}x{workers}"
        for name in ("upfront_s", "upfront_mb", "walk_s", "walk_mb", "batches_min", "batches_max", "rank_batches",
                     "exactly_once", "seen", "left_out_short", "left_out_trimmed", "quality", "trimmed_batches",
                     "trimmed_batches_balanced"):
            bench.record(f"{key}.{name}", r[name], digits=4)
        bench.update({f"{key}.quality_webdataset": wds_q, f"{key}.quality_global": full_q,
                      f"{key}.quality_none": none_q})
        rows.append([f"{ranks}x{workers}", f"{r['upfront_s']:.3f}", f"{r['upfront_mb']:.1f}",
                     f"{r['walk_s'].median:.3f} / {r['walk_s'].max:.3f}", f"{r['walk_mb']:.1f}",
                     f"{r['batches_min']}-{r['batches_max']}", r["rank_batches"], "yes" if r["exactly_once"] else "NO",
                     f"{r['seen']:,}", f"{r['left_out_short']:,}", f"{r['left_out_trimmed']:,}",
                     f"{r['trimmed_batches']:,} / {r['trimmed_batches_balanced']:,}"])
        quality_rows.append([f"{ranks} x {workers}", f"{r['quality']:.2f}", f"{wds_q:.2f}", f"{full_q:.2f}",
                             f"{none_q:.2f}"])
        last = r
    bench.table(f"planning one epoch of {args.clips:,} clips in {args.shards:,} shards (metadata only; one run "
                f"each, on shared cores: noisy)",
                ["layout", "up-front s", "up-front MB", "walk s med / max", "walk MB", "batches/slot", "batches/rank",
                 "exactly once", "clips seen", "short", "trimmed", "trimmed batches: deal / balanced"], rows)
    bench.table("shuffle quality (mosaicml/streaming's entropy: clip ids + shard ids, bits; higher is better)",
                ["ranks x workers", "maeast", "webdataset", "global shuffle", "none"], quality_rows)
    if args.redeal and last is not None:
        redeal_table(bench, corpus, last, args.redeal)
    bench.finish()


def redeal_table(bench: Bench, corpus: Corpus, old: dict, targets: str) -> None:
    n, rows = old["ranks"], []
    for text in targets.split(","):
        ranks, workers = (int(x) for x in text.split("x"))
        step = n if n % ranks == 0 else math.lcm(n, ranks)  # a step's batches must divide over both layouts
        r = redeal(corpus, old, ranks, workers, step)
        key = f"redeal_{ranks}x{workers}"
        for name in ("step_batches", "rest_batches", "left_out", "regroup_s", "regroup_mb", "walk_s", "walk_mb",
                     "old_slots_walked", "exactly_once"):
            bench.record(f"{key}.{name}", r[name], digits=4)
        rows.append([f"{n}x{old['workers']} -> {ranks}x{workers}", step, f"{r['rest_batches']:,}",
                     r["left_out"], f"{r['regroup_s']:.3f}", f"{r['regroup_mb']:.1f}",
                     f"{r['walk_s'].median:.3f} / {r['walk_s'].max:.3f}", f"{r['walk_mb']:.1f}",
                     r["old_slots_walked"], "yes" if r["exactly_once"] else "NO"])
    bench.table("the elastic re-deal of an epoch stopped halfway, for new rank 0 (one run each, shared cores: noisy)",
                ["re-deal", "batches/step", "rest batches", "left out", "regroup+deal s", "MB",
                 "walk s med / max", "walk MB", "old slots/worker", "exactly once"], rows)


if __name__ == "__main__":
    main()
