"""Reading an index back: a summary per split, and a full verification of every shard."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from maeast.errors import MaeastError
from maeast.shards.format import decode_audio, index_codec, iter_tar, read_index, verify_shard


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_shards(shard_dir: Path, on_shard: Callable[[str], None] | None = None) -> VerifyReport:
    """Re-hash every shard against the index and decode every sample; collect every mismatch."""
    shard_dir = Path(shard_dir)
    index = read_index(shard_dir)
    report = VerifyReport()
    for split_name, split in index["splits"].items():
        for entry in split["shards"]:
            report.shards += 1
            path = shard_dir / entry["name"]
            if on_shard:
                on_shard(entry["name"])
            if not path.is_file():
                report.problems.append(f"{entry['name']}: missing")
                continue
            if not verify_shard(path, entry["sha256"]):
                report.problems.append(f"{entry['name']}: sha256 differs from the index")
            count = 0
            try:
                for key, parts in iter_tar(path):
                    count += 1
                    problem = _check_sample(key, parts, split_name, index["sample_rate"], index_codec(index))
                    if problem:
                        report.problems.append(f"{entry['name']}: {key}: {problem}")
            except MaeastError as e:
                report.problems.append(str(e))
            if count != entry["samples"]:
                report.problems.append(f"{entry['name']}: {count} samples, index says {entry['samples']}")
            report.samples += count
    return report


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
