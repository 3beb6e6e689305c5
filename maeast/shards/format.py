"""The shard format: webdataset tar files of audio (FLAC, or 16-bit PCM wav) + JSON samples, and the
index.json beside them.

The written spec is shards/README.md at the top of the repository; this module is the one place
that writes and reads it.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from pathlib import Path
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

import numpy as np
import soundfile as sf

from maeast.errors import MaeastError
from maeast.shards.storage import Location, StorageError, is_url, join, open_stream, read_bytes, redact

SCHEMA = "maeast-shards/1"
FORMAT = 2
"""index.json's "format": 2 for folders whose samples' JSON records "sha256" ({extension: hex digest}),
the sha256 of every other member of the sample, written by encode_meta; folders without "format" are
format 1 and are checked by each shard's whole-file sha256 in index.json instead."""
INDEX = "index.json"
REJECTS = "rejects.tsv"
SAMPLE_RATE = 16000


SHORT_STEP_SECONDS = 0.5
SHORT_STEPS = 20
"""index.json counts, per shard, the clips shorter than 0.5, 1.0, ... 10 s ("shorter_than"), so that a
pretraining loader, which skips clips under its min_seconds, knows its epoch length exactly."""


def shorter_than(lengths: list[int], sample_rate: int) -> list[int]:
    """[clips with fewer than round(k * 0.5 s * rate) samples for k = 1..20]: the loader's own test."""
    limits = [round(k * SHORT_STEP_SECONDS * sample_rate) for k in range(1, SHORT_STEPS + 1)]
    return [sum(n < limit for n in lengths) for limit in limits]


def shard_name(corpus: str, split: str, number: int) -> str:
    return f"{corpus}-{split}-{number:06d}.tar"


CODECS = ("flac", "wav")
"""How a sample's audio is stored, which is also its member's extension. flac (the default) is about
half the size; wav (16-bit PCM) costs no decoding, which gave the streaming loader 1.3-1.5x
the clips/s on a 2-core CPU (benchmarks/loader.py)."""


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise MaeastError(f"unknown audio codec {codec!r}; use one of: {', '.join(CODECS)}")
    return codec


def encode_audio(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE, codec: str = "flac") -> bytes:
    """Mono float waveform in [-1, 1] -> 16-bit FLAC or wav bytes (deterministic for the same input).

    Quantized here, as libsndfile's FLAC writer does (x * 32768, rounded half to even, clipped), so
    both codecs hold the same samples: libsndfile's own wav writer would round differently."""
    pcm = np.clip(np.rint(np.asarray(waveform, dtype=np.float64) * 32768), -32768, 32767).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format=check_codec(codec).upper(), subtype="PCM_16")
    return buf.getvalue()


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC or wav bytes -> (float32 mono waveform, sample rate)."""
    wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    if wav.ndim > 1:
        wav = wav.mean(axis=1)
    return wav, sr


def index_codec(index: dict) -> str:
    """The audio codec of a shard folder (indexes written before the choice existed hold FLAC)."""
    return check_codec(index.get("codec", "flac"))


def audio_part(parts: dict[str, bytes]) -> tuple[str, bytes] | None:
    """(codec, bytes) of a sample's audio member, None if it has none (or more than one)."""
    found = [(ext, parts[ext]) for ext in CODECS if ext in parts]
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class PCM16:
    """Where a canonical 16-bit mono wav keeps its samples: data[offset : offset + 2 * frames]."""

    sample_rate: int
    frames: int
    offset: int


def parse_pcm16_wav(data: bytes | memoryview) -> PCM16 | None:
    """The header of a 16-bit PCM mono RIFF/WAVE file, None for any other layout (or a truncated one).

    Reading samples is then a slice of the bytes: no decoder, no copy until the caller converts.
    Walks the chunks, so files with extra chunks (LIST, fact) parse too."""
    if len(data) < 12 or bytes(data[:4]) != b"RIFF" or bytes(data[8:12]) != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = bytes(data[pos:pos + 4]), struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk == b"fmt " and size >= 16:
            fmt = struct.unpack_from("<HHIIHH", data, body)  # tag, channels, rate, byte rate, align, bits
        elif chunk == b"data":
            if fmt is None or fmt[0] != 1 or fmt[1] != 1 or fmt[5] != 16 or body + size > len(data) or size % 2:
                return None
            return PCM16(fmt[2], size // 2, body)
        pos = body + size + (size & 1)
    return None


def member_checksums(members: dict[str, bytes]) -> dict[str, str]:
    """{extension: sha256 hex digest} of a sample's members other than its JSON (format 2's "sha256")."""
    return {ext: hashlib.sha256(data).hexdigest() for ext, data in sorted(members.items()) if ext != "json"}


def encode_meta(meta: dict, members: dict[str, bytes] | None = None) -> bytes:
    """A sample's JSON member; given the sample's other members ({extension: bytes}), with their
    checksums in "sha256" (format 2)."""
    if members is not None:
        meta = {**meta, "sha256": member_checksums(members)}
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")


def tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add one file with fixed metadata, so that the same bytes make the same tar."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def sample_size(key: str, audio: bytes, meta: bytes) -> int:
    """Bytes a sample adds to a tar: a 512-byte header per member and data padded to 512."""
    pad = lambda n: (n + 511) // 512 * 512  # noqa: E731
    return 1024 + pad(len(audio)) + pad(len(meta)) + (2048 if len(key) > 90 else 0)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_shard(path: Location, sha256: str) -> bool:
    """Whether a shard (a local file or a URL) still hashes to the sha256 recorded for it (in index.json,
    or a build record)."""
    if not is_url(path):
        return sha256_file(path) == sha256
    h = hashlib.sha256()
    with open_stream(path) as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest() == sha256


def index_format(index: dict) -> int:
    """An index's format: 2 when every clip's JSON holds the sha256 of its other members (checked per
    sample as it is read, check_members), 1 (no "format" key) when only whole shards have a sha256."""
    return int(index.get("format", 1))


def check_members(parts: dict[str, bytes], meta: dict) -> str | None:
    """Format 2: None when every member but the JSON hashes to what its JSON's "sha256" records
    (member_checksums), else which members differ."""
    recorded = meta.get("sha256")
    if not isinstance(recorded, dict):
        return "its JSON records no sha256 of its members (format 2 needs them)"
    actual = member_checksums(parts)
    if actual == recorded:
        return None
    differ = sorted(ext for ext in actual.keys() | recorded.keys() if actual.get(ext) != recorded.get(ext))
    return f"the sha256 of its {' and '.join(differ)} member{'s' * (len(differ) > 1)} differs from its JSON"


def member_key(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member, webdataset's rule: the name up to the first dot of its last path
    component ("d/k.x.json" -> "d/k", "x.json"); a name without such a dot is all key."""
    cut = name.find(".", name.rfind("/") + 1)
    return (name, "") if cut < 0 else (name[:cut], name[cut + 1:])


def iter_tar(path: Location, keep: Callable[[str], bool] | None = None,
             on_broken: Callable[[Exception], None] | None = None, on_garbled: Callable[[str], None] | None = None,
             size: int | None = None, opener: Callable[[Location, int | None], BinaryIO] = open_stream,
             ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {extension: bytes}) per sample of one shard (a local file or a URL, read front to back
    through storage.open_stream, or opener), in tar order (tar_members below, keys by member_key): every
    reader of shards. Members whose name keep() rejects are skipped unread. size: the shard's bytes if known.

    A truncated or corrupt tar raises MaeastError naming the shard; or, given on_broken, calls it with
    the error and still yields the sample the error cut off if it is whole (json and one audio member).
    Given on_garbled, a garbled header is skipped instead (tar_members), on_garbled told where.
    """
    key, parts = None, {}
    try:
        with opener(path, size) as f:
            for name, data in tar_members(f, keep, on_garbled):
                member, ext = member_key(name)
                if parts and member != key:
                    yield key, parts
                    parts = {}
                key = member
                parts[ext] = data
    except (TarFormatError, ValueError, OSError) as e:  # ValueError: undecodable names, garbled size fields
        if on_broken is None:
            if isinstance(e, StorageError):  # unreachable, not broken: its own line says why and what to do
                raise MaeastError(str(e)) from None
            raise MaeastError(f"broken shard {redact(path)}: {e} (rebuild it with `maeast shard build`)") from None
        on_broken(e)
        if "json" not in parts or audio_part(parts) is None:
            return
    if parts:
        yield key, parts


def iter_meta(path: Location) -> Iterator[tuple[str, dict]]:
    """(key, parsed JSON) per sample of one shard, the audio members seeked over, never read."""
    for key, parts in iter_tar(path, keep=lambda name: name.endswith(".json")):
        try:
            yield key, json.loads(parts["json"])
        except (KeyError, ValueError) as e:
            raise MaeastError(f"broken shard {path}: sample {key} has no readable JSON ({e}); rebuild it with "
                              f"`maeast shard build`") from None


class TarFormatError(Exception):
    """A tar header or member that is cut off or garbled (tar_members)."""


def tar_members(f: BinaryIO, keep: Callable[[str], bool] | None = None,
                on_garbled: Callable[[str], None] | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file of an uncompressed tar, in order: what tarfile writes (GNU
    and POSIX ustar; GNU long names and pax path records included), read with two f.read calls a
    member and no per-member objects; the loaders' hot path. Raises TarFormatError where the tar
    is cut off or a header's checksum fails, after yielding every whole member before it; given
    on_garbled, a header whose checksum fails is instead skipped, block by block, to the next valid
    header, and on_garbled(what) told which bytes went.
    keep(name) False: the member's data is skipped unread (seeked over where f can seek)."""
    long_name, at = None, 0
    while True:
        header = f.read(512)
        if not header:
            return  # no end-of-archive blocks: a tar cut exactly between members
        if len(header) < 512:
            raise TarFormatError(f"truncated header ({len(header)} of 512 bytes)")
        if not any(header):
            return  # the end-of-archive block
        if not _checksum_ok(header):
            if on_garbled is None:
                raise TarFormatError("a header's checksum does not match (garbled tar)")
            start = at
            while len(header) == 512 and not (_checksum_ok(header) and header[257:262] == b"ustar"):
                at += 512
                header = f.read(512)
            on_garbled(f"bytes {start}-{at} (a garbled tar header; skipped to the next valid one)")
            if len(header) < 512:
                return
        at += 512
        size = int.from_bytes(header[125:136], "big") if header[124] & 0x80 else int(header[124:136].strip(b"\0 ") or b"0", 8)
        kind = header[156:157]
        padded = size + (-size) % 512
        at += padded
        if keep is not None and kind in (b"0", b"\0", b"7") and not keep(long_name or _name(header)):
            if f.seekable():
                f.seek(padded, 1)
            else:
                _skip(f, padded)
            long_name = None
            continue
        data = f.read(size)
        if len(data) < size:
            raise TarFormatError(f"truncated member ({len(data)} of {size} bytes)")
        if size % 512:
            f.read(512 - size % 512)
        if kind == b"L":  # GNU long name: the next member's
            long_name = data.rstrip(b"\0").decode("utf-8")
        elif kind == b"x":  # pax extended header: "LEN path=NAME\n" records
            for record in data.decode("utf-8").splitlines():
                key, _, value = record.partition(" ")[2].partition("=")
                if key == "path":
                    long_name = value
        elif kind in (b"0", b"\0", b"7"):
            yield long_name or _name(header), data
            long_name = None
        else:
            long_name = None  # directories, links, global pax headers: no data for a sample


def _skip(f: BinaryIO, n: int) -> None:
    while n > 0:
        got = len(f.read(min(n, 1 << 20)))
        if not got:
            raise TarFormatError("truncated member (the stream ended inside it)")
        n -= got


def _name(header: bytes) -> str:
    name = header[:100].rstrip(b"\0").decode("utf-8")
    if header[257:263] == b"ustar\0" and header[345:500].strip(b"\0"):
        name = header[345:500].rstrip(b"\0").decode("utf-8") + "/" + name
    return name


def _checksum_ok(header: bytes) -> bool:
    """The header's stored checksum: the sum of its bytes with the checksum field as 8 spaces
    (unsigned, or signed as some old tars wrote it)."""
    stored = header[148:156].strip(b"\0 ")
    if not stored or not all(48 <= b <= 55 for b in stored):
        return False
    unsigned = sum(header) - sum(header[148:156]) + 256
    if int(stored, 8) == unsigned:
        return True
    signed = sum(b - 256 if b > 127 else b for i, b in enumerate(header) if not 148 <= i < 156) + 256
    return int(stored, 8) == signed


def read_index(shard_dir: Location) -> dict:
    """Load and check a shard folder's index.json (a local folder or a URL: storage.read_bytes)."""
    path = join(shard_dir, INDEX)
    if not is_url(path) and not Path(path).is_file():
        raise MaeastError(f"no {INDEX} in {shard_dir} (build shards with `maeast shard build`)")
    try:
        index = json.loads(read_bytes(path))
    except json.JSONDecodeError as e:
        raise MaeastError(f"{path} is not valid JSON ({e}); rebuild the shards") from None
    if index.get("schema") != SCHEMA:
        raise MaeastError(f"{path} has schema {index.get('schema')!r}, expected {SCHEMA!r}; rebuild the shards")
    return index


def shard_paths(shard_dir: Location, split: str, index: dict | None = None) -> list[Location]:
    """The shard files of one split, in index order (Paths in a local folder, URLs in a remote one)."""
    index = index or read_index(shard_dir)
    splits = index["splits"]
    if split not in splits:
        raise MaeastError(f"split {split!r} not in {shard_dir}; it has: {', '.join(sorted(splits))}")
    return [join(shard_dir, s["name"]) for s in splits[split]["shards"]]
