"""The shard builder: a recipe's clips -> deterministic, resumable webdataset shards + index.json.

Determinism: items are packed in the recipe's order, split by split; workers decode in parallel but
results are written in item order, and every tar member has fixed metadata, so the same input gives
the same bytes whichever worker finishes first.

Atomicity and resume: a shard is written as a hidden partial file and published when complete (renamed
in place, or uploaded and read back when the output is a bucket: maeast.shards.sink); then a small record
(its hash, samples, label counts, and the rejects met while it was open) goes to `.build/`. Running the
same command again keeps every shard whose record and hash agree and carries on after the last of them;
index.json is written last, so a folder with an index is a finished build.

Array jobs: maeast.shards.parts packs shares of the items on many machines (`--part I/N`) and merges them
through this module's writers into the same files.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from maeast import __version__
from maeast.audio import AudioError, load_clip
from maeast.errors import MaeastError
from maeast.shards.format import (FORMAT, INDEX, REJECTS, SCHEMA, check_codec, encode_audio, encode_meta,
                                  sample_size, sha256_file, shard_name, shorter_than, tar_member)
from maeast.shards.recipes import Item, Scan, run_recipe
from maeast.shards.sink import Sink

RECORDS = ".build"


@dataclass(frozen=True)
class BuildParams:
    shard_size_mb: float = 256.0
    sample_rate: int = 16000
    min_seconds: float = 0.1  # shorter clips are rejected as too short
    codec: str = "flac"  # format.CODECS

    def __post_init__(self):
        check_codec(self.codec)
        if self.shard_size_mb <= 0:
            raise MaeastError(f"--shard-size must be positive, got {self.shard_size_mb}")
        if not 1000 <= self.sample_rate <= 192000:
            raise MaeastError(f"--sample-rate {self.sample_rate} is out of range (1000-192000 Hz)")


@dataclass
class Packed:
    """What a worker returns for one item: a packed sample, or a reject reason."""

    index: int
    key: str
    audio: bytes = b""
    meta: bytes = b""
    seconds: float = 0.0
    num_samples: int = 0
    labels: tuple[str, ...] = ()
    reject: str | None = None
    source: str = ""


def _pack(task: tuple[int, Item, str, dict[str, int], BuildParams, Path]) -> Packed:
    index, item, corpus, label_ids, params, root = task
    try:
        clip = load_clip(item.path, params.sample_rate, item.start, item.end, params.min_seconds)
    except AudioError as e:
        return Packed(index, item.key, reject=str(e), source=_relative(item.path, root))
    meta = {
        "key": item.key, "corpus": corpus, "split": item.split, "fold": item.fold,
        "labels": list(item.labels), "label_ids": [label_ids[name] for name in item.labels],
        "speaker": item.speaker, "duration": round(clip.duration, 6),
        "num_samples": len(clip.waveform), "sample_rate": clip.sample_rate,
        "orig_sample_rate": clip.orig_sample_rate, "orig_channels": clip.orig_channels,
        "source": _relative(item.path, root),
    }
    if item.start is not None or item.end is not None:
        meta["segment"] = [item.start, item.end]
    meta = {**item.extra, **meta}  # a recipe's extras never overwrite the core fields
    audio = encode_audio(clip.waveform, clip.sample_rate, params.codec)
    return Packed(index, item.key, audio, encode_meta(meta, {params.codec: audio}),
                  clip.duration, len(clip.waveform), item.labels, source=meta["source"])


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


@dataclass
class _OpenShard:
    name: str
    partial: Path
    tar: tarfile.TarFile
    bytes: int = 0
    samples: int = 0
    seconds: float = 0.0
    keys: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)


class SplitWriter:
    """Writes one split's shards in order, closing each when the next sample would overflow it."""

    def __init__(self, sink: Sink, corpus: str, split: str, limit: int, fingerprint: str, first: int = 0,
                 codec: str = "flac", sample_rate: int = 16000):
        self.sink, self.corpus, self.split, self.limit, self.codec = sink, corpus, split, limit, codec
        self.sample_rate = sample_rate
        self.fingerprint = fingerprint
        self.number = first
        self.current: _OpenShard | None = None
        self.pending_rejects: list[list[str]] = []

    def add(self, packed: Packed) -> None:
        if packed.reject is not None:
            self.pending_rejects.append([packed.key, packed.source, packed.reject])
            return
        size = sample_size(packed.key, packed.audio, packed.meta)
        if self.current is not None and self.current.bytes + size > self.limit:
            self.close(end=packed.index)
        if self.current is None:
            name = shard_name(self.corpus, self.split, self.number)
            partial = self.sink.partial(name)
            self.current = _OpenShard(name, partial, tarfile.open(partial, "w", format=tarfile.GNU_FORMAT))
        shard = self.current
        tar_member(shard.tar, f"{packed.key}.{self.codec}", packed.audio)
        tar_member(shard.tar, f"{packed.key}.json", packed.meta)
        shard.bytes += size
        shard.samples += 1
        shard.seconds += packed.seconds
        shard.keys.append(packed.key)
        shard.lengths.append(packed.num_samples)
        shard.labels.update(packed.labels)

    def close(self, end: int) -> None:
        """Finish the open shard; `end` is the first item index it does not cover."""
        shard, self.current = self.current, None
        if shard is None:
            return
        shard.tar.close()
        size, digest = shard.partial.stat().st_size, sha256_file(shard.partial)
        idx = _dali_index(self.sink, shard.partial, shard.name)
        self.sink.publish(shard.partial, shard.name, size, digest)
        if idx is not None:
            self.sink.publish(idx, _idx_name(shard.name))
        record = {"name": shard.name, "split": self.split, "number": self.number, "end": end,
                  "samples": shard.samples, "bytes": size, "sha256": digest,
                  "seconds": shard.seconds, "labels": dict(sorted(shard.labels.items())),
                  "shorter_than": shorter_than(shard.lengths, self.sample_rate),
                  "keys": shard.keys, "rejects": self.pending_rejects, "fingerprint": self.fingerprint}
        self.sink.write_json(f"{RECORDS}/{shard.name}.json", record)
        self.pending_rejects = []
        self.number += 1

    def finish(self, end: int) -> None:
        self.close(end)
        if self.pending_rejects:  # a split whose last items were all rejected after its last shard
            record = {"name": None, "split": self.split, "number": self.number, "end": end, "samples": 0,
                      "rejects": self.pending_rejects, "fingerprint": self.fingerprint}
            self.sink.write_json(f"{RECORDS}/{self.corpus}-{self.split}-tail.json", record)
            self.pending_rejects = []


def _dali_index(sink: Sink, tar: Path, name: str) -> Path | None:
    """DALI's webdataset reader needs an index per tar: written (to a local partial file, returned) with
    DALI's own tool when it is installed; None without it."""
    try:
        from wds2idx import IndexCreator
    except ImportError:
        return None
    partial = sink.partial(_idx_name(name))
    with IndexCreator(str(tar), str(partial), verbose=False) as creator:
        creator.create_index()
    return partial


def _idx_name(name: str) -> str:
    return name.removesuffix(".tar") + ".idx"


def build_fingerprint(scan: Scan, params: BuildParams) -> str:
    h = hashlib.sha256()
    fields = {k: v for k, v in params.__dict__.items() if (k, v) != ("codec", "flac")}  # as before codecs existed
    h.update(json.dumps([scan.corpus, scan.labels, scan.multi_label, fields, FORMAT], sort_keys=True).encode())
    for item in scan.items:
        h.update(f"{item.key}\t{item.path}\t{item.split}\t{item.labels}\t{item.fold}\t{item.start}\t"
                 f"{item.end}\t{item.speaker}\t{json.dumps(item.extra, sort_keys=True)}\n".encode())
        st = Path(item.path).stat() if Path(item.path).exists() else None
        h.update(f"{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()


def _load_records(sink: Sink, fingerprint: str) -> dict[str, list[dict]]:
    """Per split, the finished shards' records that still match their files, in order."""
    by_split: dict[str, dict[int, dict]] = {}
    for path in sink.list(f"{RECORDS}/*.json"):
        record = sink.read_json(path) or {}
        if record.get("fingerprint") != fingerprint or record.get("name") is None:
            continue
        by_split.setdefault(record["split"], {})[record["number"]] = record
    kept: dict[str, list[dict]] = {}
    for split, numbered in by_split.items():
        chain = []
        while len(chain) in numbered:
            record = numbered[len(chain)]
            if not sink.intact(record["name"], record["bytes"], record["sha256"]):
                break
            if sink.size(_idx_name(record["name"])) is None:
                idx = _dali_index(sink, sink.fetch(record["name"]), record["name"])
                if idx is not None:
                    sink.publish(idx, _idx_name(record["name"]))
            chain.append(record)
        kept[split] = chain
    return kept


def splits_in_order(items: Iterable[Item]) -> dict[str, list[tuple[int, Item]]]:
    splits: dict[str, list[tuple[int, Item]]] = {}
    for i, item in enumerate(items):
        splits.setdefault(item.split, []).append((i, item))
    return dict(sorted(splits.items()))


def check_scan(scan: Scan) -> dict[str, int]:
    vocabulary = scan.labels or sorted({name for item in scan.items for name in item.labels})
    scan.labels = list(vocabulary)
    label_ids = {name: i for i, name in enumerate(vocabulary)}
    seen: set[str] = set()
    for item in scan.items:
        if item.key in seen:
            raise MaeastError(f"recipe produced the key {item.key!r} twice (two files map to one key)")
        seen.add(item.key)
        for name in item.labels:
            if name not in label_ids:
                raise MaeastError(f"label {name!r} of {item.path} is not in the corpus vocabulary")
    if not scan.items:
        raise MaeastError(f"no audio files found for corpus {scan.corpus!r}; check --root")
    return label_ids


def build_shards(recipe: str, root: Path, out: str | Path, *, options: dict | None = None,
                 shard_size_mb: float = 256.0, workers: int = 1, sample_rate: int = 16000,
                 min_seconds: float = 0.1, codec: str = "flac", progress: Callable[[Packed], None] | None = None,
                 on_start: Callable[[int], None] | None = None) -> dict:
    """Pack a corpus into shards under `out` (a folder, or a URL such as s3://bucket/prefix: see
    maeast.shards.sink) and return the index written to out/index.json.

    `on_start` gets the number of items once the recipe has listed them; `progress` is then called
    once per item as it is written (in order).
    """
    params = BuildParams(shard_size_mb, sample_rate, min_seconds, codec)
    if workers < 1:
        raise MaeastError(f"--workers must be at least 1, got {workers}")
    with Sink(out) as sink:
        sink.check(RECORDS)  # a bucket that is missing or may not be written stops us before the recipe's scan
        root = Path(root).resolve()
        scan = run_recipe(recipe, root, options)
        label_ids = check_scan(scan)
        if on_start:
            on_start(len(scan.items))
        sink.prepare(RECORDS)
        return _build(sink, scan, label_ids, params, recipe, root, workers, progress)


def _build(sink: Sink, scan: Scan, label_ids: dict[str, int], params: BuildParams, recipe: str, root: Path,
           workers: int, progress: Callable[[Packed], None] | None) -> dict:
    fingerprint = build_fingerprint(scan, params)
    index = finished(sink, fingerprint)
    if index is not None:
        return index
    splits = splits_in_order(scan.items)
    writers, starts, ends = resume_splits(sink, scan.corpus, {s: [i for i, _ in e] for s, e in splits.items()},
                                          params, fingerprint)
    tasks = []
    for split, entries in splits.items():
        for i, item in entries:
            if i >= starts[split]:
                tasks.append((i, item, scan.corpus, label_ids, params, root))
            elif progress:
                progress(Packed(i, item.key))
    write_splits(writers, ends, ((task[1].split, p) for p, task in zip(packed(tasks, workers), tasks)), progress)
    index = write_index(sink, about(scan), params, fingerprint, recipe)
    sink.remove_folder(RECORDS)
    return index


def finished(sink: Sink, fingerprint: str) -> dict | None:
    """The folder's index when it is a finished build of this fingerprint with every shard there; otherwise
    None, and a stale or damaged index is removed (kept shards are then verified by hash)."""
    index = sink.read_json(INDEX) or {}
    if (index.get("schema") == SCHEMA and index.get("build", {}).get("fingerprint") == fingerprint
            and _shards_intact(sink, index)):
        return index
    sink.remove(INDEX)
    return None


def resume_splits(sink: Sink, corpus: str, splits: dict[str, list[int]], params: BuildParams,
                  fingerprint: str) -> tuple[dict[str, SplitWriter], dict[str, int], dict[str, int]]:
    """Per split (its item indices in order): a writer that continues after the shards already built and
    recorded, the first index still to pack, and the end (one past the last index). Shards past the kept
    ones, and their records, are removed."""
    records = _load_records(sink, fingerprint)
    limit = int(params.shard_size_mb * 1024 * 1024)
    writers, starts, ends = {}, {}, {}
    for split, indices in splits.items():
        chain = records.get(split, [])
        starts[split] = chain[-1]["end"] if chain else indices[0]
        ends[split] = indices[-1] + 1
        writers[split] = SplitWriter(sink, corpus, split, limit, fingerprint, first=len(chain),
                                     codec=params.codec, sample_rate=params.sample_rate)
    for split, chain in records.items():  # shards beyond the kept chain are stale
        for stale in sink.list(f"{corpus}-{split}-*.tar")[len(chain):]:
            sink.remove(stale)
            sink.remove(_idx_name(stale))
    _clear_unkept_records(sink, records)
    return writers, starts, ends


def packed(tasks: list[tuple], workers: int) -> Iterable[Packed]:
    """_pack over the tasks, in their order, on `workers` processes."""
    if workers == 1 or len(tasks) < 2:
        yield from map(_pack, tasks)
        return
    with mp.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_pack, tasks, chunksize=2)


def write_splits(writers: dict[str, SplitWriter], ends: dict[str, int], stream: Iterable[tuple[str, Packed]],
                 progress: Callable[[Packed], None] | None) -> None:
    """Feed (split, packed item) pairs in order to the splits' writers; each split's last shard closes at
    its end."""
    for split, item in stream:
        writers[split].add(item)
        if progress:
            progress(item)
        if item.index + 1 == ends[split]:
            writers[split].finish(ends[split])
    for split, writer in writers.items():  # splits with nothing left to do
        writer.finish(ends[split])


def _clear_unkept_records(sink: Sink, kept: dict[str, list[dict]]) -> None:
    keep = {r["name"] for chain in kept.values() for r in chain}
    for path in sink.list(f"{RECORDS}/*.json"):
        if Path(path).name[:-5] not in keep:
            sink.remove(path)


def _shards_intact(sink: Sink, index: dict) -> bool:
    return all(sink.size(s["name"]) == s["bytes"] for split in index["splits"].values() for s in split["shards"])


def about(scan: Scan) -> dict:
    """What index.json says of the corpus, from the recipe's scan."""
    return {"corpus": scan.corpus, "labels": scan.labels, "multi_label": scan.multi_label, "report": scan.report,
            "items": len(scan.items)}


def write_index(sink: Sink, facts: dict, params: BuildParams, fingerprint: str, recipe: str) -> dict:
    records = [sink.read_json(path) for path in sink.list(f"{RECORDS}/*.json")]
    records.sort(key=lambda r: (r["split"], r["number"], r["name"] is None))
    splits: dict[str, dict] = {}
    rejects: list[list[str]] = []
    for r in records:
        rejects.extend(r["rejects"])
        if r["name"] is None:
            continue
        split = splits.setdefault(r["split"], {"samples": 0, "seconds": 0.0, "labels": Counter(), "shards": []})
        split["samples"] += r["samples"]
        split["seconds"] += r["seconds"]
        split["labels"].update(r["labels"])
        split["shards"].append({"name": r["name"], "samples": r["samples"], "bytes": r["bytes"],
                                "sha256": r["sha256"], **({"shorter_than": r["shorter_than"]}
                                                          if "shorter_than" in r else {})})
    for split in splits.values():
        split["hours"] = round(split.pop("seconds") / 3600, 6)
        split["labels"] = dict(sorted(split["labels"].items()))
    reasons = Counter(reason.split(":")[0] for _, _, reason in rejects)
    sink.write_text(REJECTS, "key\tsource\treason\n" + "".join("\t".join(row) + "\n" for row in rejects))
    index = {
        "schema": SCHEMA, "format": FORMAT, "corpus": facts["corpus"], "recipe": recipe,
        "sample_rate": params.sample_rate, "codec": params.codec,
        "labels": facts["labels"], "multi_label": facts["multi_label"], "splits": splits,
        "rejects": {"count": len(rejects), "reasons": dict(sorted(reasons.items())), "file": REJECTS},
        "report": facts["report"],
        "build": {"maeast": __version__, "shard_size_mb": params.shard_size_mb,
                  "min_seconds": params.min_seconds, "items": facts["items"], "fingerprint": fingerprint},
    }
    sink.write_json(INDEX, index)
    return index
