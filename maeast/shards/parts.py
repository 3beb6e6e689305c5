"""A shard build as an array of jobs: `maeast shard build ... --part I/N` packs the I-th of N shares of a
recipe's items on one machine each; `maeast shard merge OUT` then writes the shards, rejects.tsv and
index.json that one machine's build of the same corpus writes, byte for byte.

Why the parts do not cut the shards themselves: the builder closes a shard when the next clip would
overflow it (maeast.shards.build.SplitWriter), so where shard k starts depends on the encoded size of
every clip before it, and no part can know where its first shard starts without packing all the parts
before it. So the parts do the work that costs (decoding, resampling, encoding, hashing: the CPU of a
build) and write their packed clips, in the builder's order, to runs under OUT/.parts/; the merge feeds
them in that order to the builder's own writers, which make the same cut, the same tar bytes and the same
index, whatever N was. The merge reads and writes the corpus once more (no decoding) and the runs take
a second copy's room until it ends, when they are removed.

Parts are numbered from 1 (1/N ... N/N; with Slurm, --array=1-N). In the builder's order (split by split
in name order, the recipe's order within a split) the T items are cut into N ranges, part I holding
[(I-1) T // N, I T // N). A part writes its clips in runs of about one shard, each published whole with
its record (.parts/part-I-of-N-000000.run and .json), so a part killed and started again keeps its
finished runs; its part record (.parts/part-I-of-N.json), written last, says it is whole. Parts may run
at once on the same folder, local or in a bucket (maeast.shards.sink): each writes only its own files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterator

from maeast.errors import MaeastError
from maeast.shards.build import (RECORDS, BuildParams, Packed, about, build_fingerprint, check_scan, finished,
                                 packed, resume_splits, splits_in_order, write_index, write_splits)
from maeast.shards.format import INDEX, sha256_file
from maeast.shards.recipes import run_recipe
from maeast.shards.sink import Sink
from maeast.shards.storage import redact

PARTS = ".parts"
_PART_RECORD = re.compile(r"part-(\d+)-of-(\d+)\.json")


def parse_part(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N), parts numbered from 1."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise MaeastError(f"--part {text!r} is not I/N with 1 <= I <= N (parts are numbered from 1: --part 1/4 "
                          f"... --part 4/4)")
    return int(match[1]), int(match[2])


def part_range(number: int, count: int, total: int) -> tuple[int, int]:
    """The positions, in the builder's order, of part `number` of `count` over `total` items."""
    return (number - 1) * total // count, number * total // count


def _tag(number: int, count: int) -> str:
    return f"part-{number}-of-{count}"


class _RunWriter:
    """A part's packed clips in order, in runs of about `limit` bytes: a run is its clips' audio and JSON
    bytes back to back; its record lists them (position, index, split, key, byte counts, what the index needs)."""

    def __init__(self, sink: Sink, tag: str, number: int, start: int, fingerprint: str, limit: int):
        self.sink, self.tag, self.number, self.start = sink, tag, number, start
        self.fingerprint, self.limit = fingerprint, limit
        self.file, self.items, self.bytes = None, [], 0
        self.names: list[str] = []

    def add(self, position: int, split: str, item: Packed) -> None:
        if self.file is None:
            self.file = open(self.sink.partial(self._name(".run")), "wb")
        self.file.write(item.audio)
        self.file.write(item.meta)
        self.bytes += len(item.audio) + len(item.meta)
        self.items.append({"index": item.index, "split": split, "key": item.key, "audio": len(item.audio),
                           "meta": len(item.meta), "seconds": item.seconds, "num_samples": item.num_samples,
                           "labels": list(item.labels), "reject": item.reject, "source": item.source})
        if self.bytes >= self.limit:
            self.close(position + 1)

    def close(self, end: int) -> None:
        """Publish the open run, whose clips end before position `end`."""
        if self.file is None:
            return
        self.file.close()
        partial, name = self.sink.partial(self._name(".run")), self._name(".run")
        size, digest = partial.stat().st_size, sha256_file(partial)
        self.sink.publish(partial, name, size, digest)
        self.sink.write_json(self._name(".json"), {
            "fingerprint": self.fingerprint, "number": self.number, "start": self.start, "end": end,
            "run": name, "bytes": size, "sha256": digest, "items": self.items})
        self.names.append(self._name(".json"))
        self.file, self.items, self.bytes, self.start = None, [], 0, end
        self.number += 1

    def _name(self, suffix: str) -> str:
        return f"{PARTS}/{self.tag}-{self.number:06d}{suffix}"


def _kept_runs(sink: Sink, tag: str, fingerprint: str, start: int) -> list[dict]:
    """The part's finished runs (records that match this build, runs whose bytes match), in order from
    position `start`; later ones are removed."""
    records = {}
    for name in sink.list(f"{PARTS}/{tag}-*.json"):
        record = sink.read_json(name) or {}
        if record.get("fingerprint") == fingerprint:
            records[record["number"]] = (name, record)
    chain = []
    while len(chain) in records and records[len(chain)][1]["start"] == (chain[-1]["end"] if chain else start):
        name, record = records[len(chain)]
        if not sink.intact(record["run"], record["bytes"], record["sha256"]):
            break
        chain.append({**record, "record": name})
    kept = {r["record"] for r in chain} | {r["run"] for r in chain}
    for name in sink.list(f"{PARTS}/{tag}-*"):
        if name not in kept:
            sink.remove(name)
    return chain


def build_part(recipe: str, root: Path, out: str | Path, part: str, *, options: dict | None = None,
               shard_size_mb: float = 256.0, workers: int = 1, sample_rate: int = 16000, min_seconds: float = 0.1,
               codec: str = "flac", progress: Callable[[Packed], None] | None = None,
               on_start: Callable[[int], None] | None = None) -> dict:
    """Pack part `part` ("I/N") of a corpus into runs under out/.parts/ and return its part record; the
    arguments are those of maeast.shards.build.build_shards, the same for every part."""
    number, count = parse_part(part)
    params = BuildParams(shard_size_mb, sample_rate, min_seconds, codec)
    if workers < 1:
        raise MaeastError(f"--workers must be at least 1, got {workers}")
    tag = _tag(number, count)
    with Sink(out) as sink:
        sink.check(f"{PARTS}/{tag}")
        root = Path(root).resolve()
        scan = run_recipe(recipe, root, options)
        label_ids = check_scan(scan)
        order = [(i, item) for entries in splits_in_order(scan.items).values() for i, item in entries]
        lo, hi = part_range(number, count, len(order))
        if on_start:
            on_start(hi - lo)
        fingerprint = build_fingerprint(scan, params)
        done = sink.read_json(f"{PARTS}/{tag}.json") or {}
        if done.get("fingerprint") == fingerprint and len(_kept_runs(sink, tag, fingerprint, lo)) == len(done["runs"]):
            return done
        sink.prepare(PARTS, leftovers=f"{PARTS}/{tag}-*")
        sink.remove(f"{PARTS}/{tag}.json")
        runs = _kept_runs(sink, tag, fingerprint, lo)
        start = runs[-1]["end"] if runs else lo
        for i, item in order[lo:start] if progress else ():
            progress(Packed(i, item.key))
        writer = _RunWriter(sink, tag, len(runs), start, fingerprint, int(params.shard_size_mb * 1024 * 1024))
        tasks = [(i, item, scan.corpus, label_ids, params, root) for i, item in order[start:hi]]
        for position, (item, task) in enumerate(zip(packed(tasks, workers), tasks), start):
            writer.add(position, task[1].split, item)
            if progress:
                progress(item)
        writer.close(hi)
        record = {"fingerprint": fingerprint, "part": [number, count], "range": [lo, hi], "total": len(order),
                  "runs": [r["record"] for r in runs] + writer.names, "recipe": recipe, "about": about(scan),
                  "params": dict(params.__dict__)}
        sink.write_json(f"{PARTS}/{tag}.json", record)
        return record


def _name(record: dict) -> str:
    return "/".join(map(str, record["part"]))


def _whole_parts(sink: Sink) -> list[dict]:
    """The part records of out/.parts (none: []), checked to be of one build and to hold every item exactly
    once, in order; otherwise a one-line error naming the part missing, duplicated or stale."""
    where = redact(sink.url)
    records = [sink.read_json(n) or {} for n in sink.list(f"{PARTS}/part-*.json")
               if _PART_RECORD.fullmatch(n.rpartition("/")[2])]
    if not records:
        return []
    for r in records:
        if r.get("fingerprint") != records[0]["fingerprint"]:
            raise MaeastError(f"parts {_name(records[0])} and {_name(r)} in {where} are of different builds (corpus "
                              f"files or options differ): build the stale one again with the others' command")
    records.sort(key=lambda r: (r["range"][0], r["range"][1], r["part"][1]))
    total, at, before = records[0]["total"], 0, None
    count = max(r["part"][1] for r in records)
    for r in records + [{"part": [count + 1, count], "range": [total, total]}]:
        lo, hi = r["range"]
        if lo < at and hi > lo:
            raise MaeastError(f"part {_name(r)} holds items {lo}-{hi - 1}, which part {_name(before)} holds too "
                              f"(parts of different N in {where}): delete {where}/{PARTS}/{_tag(*r['part'])}* or "
                              f"{where}/{PARTS}/{_tag(*before['part'])}*")
        if lo > at:
            gone = [f"{i}/{count}" for i in range(1, count + 1) if part_range(i, count, total)[0] in range(at, lo)]
            raise MaeastError(f"part {' and '.join(gone) or '?'} is missing from {where} (items {at}-{lo - 1} of "
                              f"{total} are in no finished part): run `maeast shard build ... --part "
                              f"{gone[0] if gone else 'I/N'}` with the others' arguments, then merge again")
        at, before = max(at, hi), r
    return records


def _replay(sink: Sink, runs: list[dict], starts: dict[str, int],
            progress: Callable[[Packed], None] | None) -> Iterator[tuple[str, Packed]]:
    """The parts' packed clips in order as (split, Packed), from each split's first index still to write;
    each run is checked against its record's sha256 before any of it is used."""
    for run in runs:
        path = sink.fetch(run["run"])
        if path.stat().st_size != run["bytes"] or sha256_file(path) != run["sha256"]:
            raise MaeastError(f"{redact(sink.url)}/{run['run']} is damaged (its size or sha256 differs from its "
                              f"record): build its part again, then merge again")
        with open(path, "rb") as f:
            for it in run["items"]:
                if it["index"] < starts[it["split"]]:
                    f.seek(it["audio"] + it["meta"], 1)
                    if progress:
                        progress(Packed(it["index"], it["key"]))
                    continue
                yield it["split"], Packed(it["index"], it["key"], f.read(it["audio"]), f.read(it["meta"]),
                                          it["seconds"], it["num_samples"], tuple(it["labels"]), it["reject"],
                                          it["source"])
        if sink.fs is not None:  # a download into the staging folder
            path.unlink()


def _run_record(sink: Sink, name: str, part: dict) -> dict:
    record = sink.read_json(name)
    if record is None:
        raise MaeastError(f"{redact(sink.url)}/{name} of part {_name(part)} is missing: build the part again, "
                          f"then merge again")
    return {**record, "record": name}


def merge_parts(out: str | Path, *, progress: Callable[[Packed], None] | None = None,
                on_start: Callable[[int], None] | None = None) -> dict:
    """Write out/index.json (and the shards, rejects.tsv) from the finished parts in out/.parts/ and return
    the index: the files of a single `build_shards` of the same corpus. Resumable as a build is."""
    with Sink(out) as sink:
        sink.check(RECORDS)
        parts = _whole_parts(sink)
        if not parts:
            index = sink.read_json(INDEX)
            if index is not None and not sink.list(f"{RECORDS}/*.json"):  # merged before
                return index
            raise MaeastError(f"{redact(sink.url)} holds no finished part: build them first with `maeast shard "
                              f"build ... --out {redact(sink.url)} --part I/N`, I = 1 ... N")
        first = parts[0]
        fingerprint, params = first["fingerprint"], BuildParams(**first["params"])
        if on_start:
            on_start(first["total"])
        index = finished(sink, fingerprint)
        if index is None:
            sink.prepare(RECORDS)
            runs = [_run_record(sink, name, p) for p in parts for name in p["runs"]]
            splits: dict[str, list[int]] = {}
            for run in runs:
                for it in run["items"]:
                    splits.setdefault(it["split"], []).append(it["index"])
            writers, starts, ends = resume_splits(sink, first["about"]["corpus"], splits, params, fingerprint)
            write_splits(writers, ends, _replay(sink, runs, starts, progress), progress)
            index = write_index(sink, first["about"], params, fingerprint, first["recipe"])
            sink.remove_folder(RECORDS)
        sink.remove_folder(PARTS)
        return index

