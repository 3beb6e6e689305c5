"""Which samples a DALI reader may read: a survey of the shards before the pipeline, and filtered .idx files.

DALI's webdataset reader reads whatever its .idx files list and stops the run on a sample it cannot read.
So the DALI loader decides up front, with the webdataset loader's own checks (stream.read_shard: each
format-2 sample against its JSON's sha256s, a format-1 shard against index.json, a truncated tar or a
garbled header), which samples are good; a bad one is skipped with the usual one line naming shard and
key (or fails, by on_error). A keep-rule (a fold, a carved part) and pretraining's min_seconds drop clips
here too, before any batch is made, and so do the samples a run already found undecodable (`exclude`,
from `undecodable`: our decoder run over the samples the pipeline reads, once DALI has failed on one).
Shards that lose samples get an .idx of their own in a temporary folder listing only the rest; the
shards' own .idx files are never written.

The survey reads every shard once (a sequential read, hashing when verify_checksums is on), as the
webdataset loader's first epoch would; a process remembers what it found per shard, so the loaders of
one split (a fold's train, valid and test passes) read it once, and report its bad samples once.
"""

from __future__ import annotations

import functools
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from maeast.errors import MaeastError
from maeast.loaders.baddata import Errors
from maeast.loaders.keep import Keep
from maeast.loaders.sources import Shard
from maeast.loaders.stream import read_shard

IDX_VERSION = "v1.2"


@dataclass
class Surveyed:
    """The shards a DALI reader reads, each with the .idx that lists its readable samples."""

    paths: list[str] = field(default_factory=list)
    index_paths: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # readable samples per shard
    skipped: dict[str, list[str]] = field(default_factory=dict)  # shard name -> keys left out (bad or short)
    folder: tempfile.TemporaryDirectory | None = None  # holds the filtered .idx files while the loader lives

    @property
    def samples(self) -> int:
        return sum(self.counts)


def idx_lines(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """A DALI .idx file -> its header and (key, line) per sample (the key: the first member's name less its
    extension, as wds2idx writes `ext offset size name` per member)."""
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].startswith(IDX_VERSION):
        raise MaeastError(f"{path} is not a DALI {IDX_VERSION} index; rebuild the shards with the `dali` extra installed")
    rows = []
    for line in lines[1:]:
        parts = line.split()
        if len(parts) < 4:
            raise MaeastError(f"{path}: unreadable index line {line!r}; rebuild the shards with the `dali` extra")
        ext, name = parts[0], parts[3]
        rows.append((name[: -len(ext) - 1] if name.endswith("." + ext) else name, line))
    return lines[0], rows


@functools.lru_cache(maxsize=65536)
def _readable(shard: Shard, verify: bool, on_error: str) -> tuple[tuple[tuple[str, int], ...], dict[str, int]]:
    """A shard's readable samples (key, length in samples) and the bad data met, read once per process (a bad
    sample is reported by the first read; on_error fail raises there, and nothing is remembered)."""
    errors = Errors(on_error)
    readable = tuple((s.key, int(s.meta["num_samples"])) for s in read_shard(shard, verify, errors))
    return readable, {k: v for k, v in errors.stats.items() if v}


def survey(shards: list[Shard], verify: bool, errors: Errors, keep: Keep | None = None, min_samples: int = 0,
           exclude: frozenset[tuple[str, str]] = frozenset()) -> Surveyed:
    """Read every shard once and list, per shard, the samples a DALI reader may read (see the module doc);
    exclude: (shard name, key) pairs left out as well."""
    out = Surveyed()
    for shard in shards:
        idx = shard.path.with_suffix(".idx")
        if not idx.is_file():
            raise MaeastError(f"{shard.path} has no DALI index beside it; rebuild the shards with the `dali` extra "
                              f"installed (the builder writes .idx files with wds2idx)")
        readable, found = _readable(shard, verify, errors.on_error)
        for kind, n in found.items():
            errors.stats[kind] += n
        good = set()
        for key, length in readable:
            if (keep is not None and key not in keep) or (shard.name, key) in exclude:
                continue
            if length < min_samples:
                errors.count("short")
                continue
            good.add(key)
        header, rows = idx_lines(idx)
        kept = [line for key, line in rows if key in good]
        left = [key for key, _ in rows if key not in good]
        if not kept:
            out.skipped[shard.name] = left
            continue
        if left:
            out.skipped[shard.name] = left
            out.folder = out.folder or tempfile.TemporaryDirectory(prefix="maeast-dali-idx-")
            idx = Path(out.folder.name) / idx.name
            idx.write_text("\n".join([f"{IDX_VERSION} {len(kept)}", *kept]) + "\n")
        out.paths.append(str(shard.path))
        out.index_paths.append(str(idx))
        out.counts.append(len(kept))
    return out


def undecodable(shards: list[Shard], surveyed: Surveyed) -> list[tuple[str, str]]:
    """(shard name, key) of every sample the pipeline reads that our decoder cannot decode: a decode of each of
    them, run only once DALI has failed."""
    bad = []
    for shard in shards:
        if str(shard.path) not in surveyed.paths:
            continue
        left_out = set(surveyed.skipped.get(shard.name, ()))
        bad += [(shard.name, s.key) for s in read_shard(shard, False, Errors("skip"))
                if s.key not in left_out and not _decodes(s.audio)]
    return bad


def _decodes(audio: bytes) -> bool:
    try:
        sf.read(io.BytesIO(audio), dtype="float32")
        return True
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError):
        return False
