"""An optional local cache of remote shards (loader.cache_dir), so that later epochs read local disk.

Entries are named by the shard's sha256 in index.json, so the same shard under two URLs is one entry and
a rebuilt shard is a new one. A miss streams the shard as usual and tees its bytes into a hidden temporary
file, hashed on the way; only a whole read whose sha256 matches is renamed into place (atomic: a killed
run leaves no torn entry), and then the least recently used entries are deleted until the cache fits
loader.cache_gb. A hit is hashed whole before use (local disk, no network): an entry that differs (bit
rot, a copy changed by hand) is deleted and the shard streamed, and cached, again. Local shards are read
in place, never cached.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

from maeast.shards.format import sha256_file
from maeast.shards.storage import Location, is_url, open_stream

DRAIN = 1 << 16
"""A read stopped at most this many bytes before the end (a tar's end-of-archive padding) is read to the end
and cached; one stopped earlier (an epoch ending mid-shard) leaves no entry."""


class ShardCache:
    def __init__(self, folder: str | Path, max_gb: float):
        self.folder, self.max_bytes = Path(folder), int(max_gb * 1e9)

    def entry(self, sha256: str) -> Path:
        return self.folder / f"{sha256}.tar"

    def open(self, location: Location, size: int | None, sha256: str,
             on_corrupt: Callable[[], None] | None = None) -> BinaryIO:
        """A reader of the shard: its cached copy if that is whole, else the remote stream, teed into the cache."""
        if not is_url(location):
            return open_stream(location, size)
        entry = self.entry(sha256)
        if entry.is_file():
            if entry.stat().st_size == size and sha256_file(entry) == sha256:
                os.utime(entry)  # the least recently used go first
                return open(entry, "rb", buffering=1 << 20)
            entry.unlink(missing_ok=True)
            if on_corrupt is not None:
                on_corrupt()
        self.folder.mkdir(parents=True, exist_ok=True)
        return io.BufferedReader(_Tee(open_stream(location, size), size, sha256, entry, self), 1 << 20)

    def evict(self, keep: Path) -> None:
        """Delete the least recently used entries (never `keep`) until the cache fits max_bytes."""
        entries = []
        for path in self.folder.glob("*.tar"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # another worker evicted it
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size


class _Tee(io.RawIOBase):
    """The bytes of a remote stream, also written to a temporary file that becomes the entry if it hashes right."""

    def __init__(self, source: BinaryIO, size: int | None, sha256: str, entry: Path, cache: ShardCache):
        self.source, self.size, self.sha256, self.entry, self.cache = source, size, sha256, entry, cache
        self.tmp = entry.with_name(f".{entry.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        self.out = open(self.tmp, "wb")
        self.hash, self.got, self.finished = hashlib.sha256(), 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.source.readinto(buffer)
        if n:
            view = memoryview(buffer)[:n]
            self.out.write(view)
            self.hash.update(view)
            self.got += n
        elif not self.finished:
            self._finish()
        return n

    def _finish(self) -> None:
        self.finished = True
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()
        if self.hash.hexdigest() == self.sha256:
            os.replace(self.tmp, self.entry)
            self.cache.evict(keep=self.entry)
        else:
            self.tmp.unlink(missing_ok=True)

    def close(self) -> None:
        if not self.closed:
            try:
                if not self.finished and self.size is not None and self.size - self.got <= DRAIN:
                    while self.readinto(bytearray(DRAIN)):
                        pass
            except OSError:
                pass  # the tail did not come: no entry, the shard was read all the same
            finally:
                if not self.finished:
                    self.out.close()
                    self.tmp.unlink(missing_ok=True)
                self.source.close()
        super().close()
