"""Where a shard build writes: a local folder (a path or file:// URL), or a folder in object storage
(s3://bucket/prefix, gs://...; maeast.shards.storage finds the transport and the credentials).

Shards are always written to a local file first (`partial(name)`), then `publish`ed under their final
name: in a local folder by a rename in place; in a remote one by an upload, after which the object is
read back and its size and sha256 checked, before the builder records the shard as done. Small files
(build records, rejects.tsv, index.json) are written whole: atomically by rename locally, as single
objects remotely (an object store shows an object only once its upload is complete). Transient faults
are retried (storage.retried); a permanent one is a one-line MaeastError naming the URL, never a secret.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from maeast.errors import MaeastError
from maeast.files import write_text
from maeast.shards.format import sha256_file
from maeast.shards.storage import (StorageError, filesystem, is_url, join, list_names, local_path, open_stream,
                                   redact, retried)


class Sink:
    """A build's output folder. Use it as a context manager: a remote sink's local staging folder (one
    partial shard at a time; the same folder for the same URL, so that a rerun after a kill clears what
    the killed build left) is removed on exit. Names are relative to the folder ("x.tar", ".build/x.json")."""

    def __init__(self, out: str | Path):
        self.url = str(out)
        if self.url.startswith(("http://", "https://", "pipe:")):
            raise MaeastError(f"--out {redact(self.url)}: {self.url.split(':')[0]} locations are read only; "
                              f"build to a folder, file://, s3:// or gs://")
        self.fs, self.root = filesystem(self.url) if is_url(self.url) else (None, local_path(self.url))
        self.staging = self.root if self.fs is None else _staging(self.url)

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc) -> None:
        if self.fs is not None:
            shutil.rmtree(self.staging, ignore_errors=True)

    def _remote(self, name: str, call: Callable):
        """call() with transient faults retried; a permanent or exhausted one as a one-line MaeastError."""
        try:
            return retried(join(self.url, name), call)
        except StorageError as e:
            raise MaeastError(f"{e}; run the same command again to resume") from None

    def check(self, records: str) -> None:
        """Remotely, write and delete a small object, so that a missing bucket or a denied write stops
        the build before any work; locally nothing (the folder is made by prepare)."""
        if self.fs is None:
            return
        probe = f"{self.root}/{records}/.probe"
        try:
            retried(self.url, lambda: self.fs.pipe_file(probe, b""))
            retried(self.url, lambda: self.fs.rm_file(probe))
        except StorageError as e:
            raise MaeastError(f"cannot write to {e}") from None

    def prepare(self, records: str, leftovers: str = "*") -> None:
        """Make the folder and its `records` subfolder and drop the partial files of names matching
        `leftovers` (a glob) that an interrupted build left."""
        if self.fs is None:
            (self.root / records).mkdir(parents=True, exist_ok=True)
        for partial in self.staging.glob(self.partial(leftovers).name):
            partial.unlink()

    def partial(self, name: str) -> Path:
        """The local file a shard (or its index, or any file named with a folder: "a/b") is written to
        before it is published."""
        return self.staging / f".{name.replace('/', '%')}.partial"

    def publish(self, partial: Path, name: str, size: int | None = None, sha256: str | None = None) -> None:
        """Put a finished local file under its final name; remotely, upload it and check what reads back
        (size and sha256: the partial's unless given)."""
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        if self.fs is None:
            partial.replace(self.root / name)
            return
        size = partial.stat().st_size if size is None else size
        sha256 = sha256_file(partial) if sha256 is None else sha256
        self._remote(name, lambda: self.fs.put_file(str(partial), f"{self.root}/{name}"))
        if not self.intact(name, size, sha256):
            raise MaeastError(f"{redact(join(self.url, name))} does not read back as uploaded (size or sha256 "
                              f"differs); run the same command again to resume")
        partial.unlink()

    def size(self, name: str) -> int | None:
        """A file's size, None if there is none."""
        if self.fs is None:
            path = self.root / name
            return path.stat().st_size if path.is_file() else None

        def info() -> int | None:
            self.fs.invalidate_cache(f"{self.root}/{name}")
            try:
                return self.fs.info(f"{self.root}/{name}")["size"]
            except FileNotFoundError:
                return None
        return self._remote(name, info)

    def sha256(self, name: str, size: int | None = None) -> str:
        h = hashlib.sha256()
        try:
            with open_stream(join(self.url, name), size) as f:
                while block := f.read(1 << 20):
                    h.update(block)
        except StorageError as e:
            raise MaeastError(f"{e}; run the same command again to resume") from None
        return h.hexdigest()

    def intact(self, name: str, size: int, sha256: str) -> bool:
        """Whether a file is there with this size and sha256 (the size first: it costs no read)."""
        return self.size(name) == size and self.sha256(name, size) == sha256

    def fetch(self, name: str) -> Path:
        """A local path with a file's bytes: the file itself, or a download into the staging folder."""
        if self.fs is None:
            return self.root / name
        target = self.partial(name)
        self._remote(name, lambda: self.fs.get_file(f"{self.root}/{name}", str(target)))
        return target

    def read_json(self, name: str) -> dict | None:
        """A JSON object file's content; None if it is missing or not a JSON object."""
        def read() -> bytes | None:
            try:
                return (self.root / name).read_bytes() if self.fs is None else self.fs.cat_file(f"{self.root}/{name}")
            except FileNotFoundError:
                return None
        data = read() if self.fs is None else self._remote(name, read)
        try:
            value = json.loads(data) if data is not None else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def write_text(self, name: str, text: str) -> None:
        if self.fs is None:
            write_text(self.root / name, text)
        else:
            self._remote(name, lambda: self.fs.pipe_file(f"{self.root}/{name}", text.encode("utf-8")))

    def write_json(self, name: str, obj) -> None:
        """Sorted keys, 2-space indent, a final newline: maeast.files.write_json's layout."""
        self.write_text(name, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")

    def list(self, pattern: str) -> list[str]:
        """Sorted names of the files matching a glob pattern whose folder part is literal (".build/*.json")."""
        folder, _, leaf = pattern.rpartition("/")
        where = join(self.url, folder) if folder else self.url
        try:
            names = list_names(where) or set()
        except MaeastError as e:
            raise MaeastError(f"{e}; run the same command again to resume") from None
        return sorted(f"{folder}/{n}" if folder else n for n in names if fnmatch.fnmatch(n, leaf))

    def remove(self, name: str) -> None:
        if self.fs is None:
            (self.root / name).unlink(missing_ok=True)
        elif self.size(name) is not None:
            self._remote(name, lambda: self.fs.rm_file(f"{self.root}/{name}"))

    def remove_folder(self, name: str) -> None:
        if self.fs is None:
            shutil.rmtree(self.root / name, ignore_errors=True)
        else:
            for path in self.list(f"{name}/*"):
                self.remove(path)


def _staging(url: str) -> Path:
    """The local folder where a build to `url` writes each shard before uploading it."""
    folder = Path(tempfile.gettempdir()) / f"maeast-build-{hashlib.sha256(url.encode()).hexdigest()[:16]}"
    folder.mkdir(exist_ok=True)
    return folder
