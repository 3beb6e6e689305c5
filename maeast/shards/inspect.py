"""Reading an index back: a summary per split, and a full verification of every shard (local or remote),
each shard read once: hashed as it is parsed."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from maeast.errors import MaeastError
from maeast.shards.format import check_members, decode_audio, index_codec, index_format, iter_tar, read_index
from maeast.shards.storage import Location, join, list_names, open_stream


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_shards(shard_dir: Location, on_shard: Callable[[str], None] | None = None) -> VerifyReport:
    """Hash every shard against the index, decode every sample and, in format 2, check every member
    against its JSON's sha256; collect every mismatch. A folder or URL; each shard is read once."""
    index = read_index(shard_dir)
    present = list_names(shard_dir)  # None where a folder cannot be listed (http, pipe:)
    report = VerifyReport()
    for split_name, split in index["splits"].items():
        for entry in split["shards"]:
            report.shards += 1
            if on_shard:
                on_shard(entry["name"])
            if present is not None and entry["name"] not in present:
                report.problems.append(f"{entry['name']}: missing")
                continue
            count, hashed = 0, []
            try:
                opener = lambda where, size: io.BufferedReader(_Hashing(open_stream(where, size), hashed))  # noqa: E731
                for key, parts in iter_tar(join(shard_dir, entry["name"]), size=entry["bytes"], opener=opener):
                    count += 1
                    problem = _check_sample(key, parts, split_name, index["sample_rate"], index_codec(index))
                    if problem is None and index_format(index) >= 2:
                        problem = check_members(parts, json.loads(parts["json"]))
                    if problem:
                        report.problems.append(f"{entry['name']}: {key}: {problem}")
            except MaeastError as e:
                report.problems.append(str(e))
            if hashed and hashed[0] != entry["sha256"]:
                report.problems.append(f"{entry['name']}: sha256 differs from the index")
            if count != entry["samples"]:
                report.problems.append(f"{entry['name']}: {count} samples, index says {entry['samples']}")
            report.samples += count
    return report


class _Hashing(io.RawIOBase):
    """A stream's bytes, hashed on the way; closing reads the rest (the tar's end padding) and appends the
    sha256 hex digest to `out`."""

    def __init__(self, source: BinaryIO, out: list[str]):
        self.source, self.out, self.hash = source, out, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.source.readinto(buffer)
        self.hash.update(memoryview(buffer)[:n])
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                while block := self.source.read(1 << 20):
                    self.hash.update(block)
                self.out.append(self.hash.hexdigest())
            finally:
                self.source.close()
        super().close()


def _check_sample(key: str, parts: dict[str, bytes], split: str, sample_rate: int, codec: str) -> str | None:
    if set(parts) != {codec, "json"}:
        return f"members {sorted(parts)}, expected {codec} and json"
    try:
        meta = json.loads(parts["json"])
        wav, sr = decode_audio(parts[codec])
    except Exception as e:  # any decoding failure is a finding, not a crash
        return f"undecodable: {e}"
    if meta.get("key") != key or meta.get("split") != split:
        return "metadata key/split disagree with the shard"
    if sr != sample_rate or len(wav) != meta.get("num_samples"):
        return f"audio is {len(wav)} samples at {sr} Hz, metadata says {meta.get('num_samples')} at {sample_rate}"
    return None
