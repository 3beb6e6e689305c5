"""Reading shard objects wherever they live: whole, probed, listed or streamed; the one place that retries.

Locations (a folder, file://, s3://, gs://, http(s)://, pipe:COMMAND; the credentials and
MAEAST_S3_ENDPOINT_URL) and the fsspec filesystem behind each are maeast.shards.locations; this module
reads through them: read_bytes (a small object whole), exists, list_names (a folder's objects) and
open_stream (an object front to back), each local path by plain file calls, each URL with retries.

Remote objects are read front to back in ranged reads, one read ahead (memory: two chunks a stream): the
first of FIRST_CHUNK bytes, each next one twice the last, up to CHUNK. A transient fault (connection
reset, timeout, HTTP 5xx, a body cut short) is retried with backoff (RETRY) from the byte where the read
stopped; when the tries run out the stream raises StorageError (an OSError: readers skip that shard). A
permanent fault (404, 403, no such bucket, bad credentials) is a one-line MaeastError naming the URL,
never a secret, and the fix.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable

from maeast.errors import MaeastError
# join is not used here: it, like the rest, stays importable from maeast.shards.storage, as callers name it
from maeast.shards.locations import Location, filesystem, is_url, join, local_path, redact  # noqa: F401

CHUNK = 8 << 20
"""Bytes per ranged read of a remote object, once under way (FIRST_CHUNK)."""

FIRST_CHUNK = 256 << 10
"""Bytes of a remote object's first ranged read; each next one doubles, up to CHUNK, so the first samples
arrive after a small read instead of a whole CHUNK."""


@dataclass(frozen=True)
class Retry:
    """Tries per read of a remote object before giving up, and the backoff between them (doubling, jittered)."""

    attempts: int = 6
    wait: float = 0.5
    max_wait: float = 10.0

    def sleep(self, attempt: int) -> None:
        time.sleep(min(self.wait * 2 ** attempt, self.max_wait) * _JITTER.uniform(0.5, 1.0))


RETRY = Retry()
_JITTER = random.Random()  # its own stream: a retry never moves the global RNG that training may seed


class StorageError(OSError):
    """A remote read that failed for good (permanent, or transient past RETRY.attempts); one line."""


def permanent(e: BaseException) -> bool:
    """Whether retrying cannot help: missing object or bucket, refused access, bad credentials, bad request."""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, MaeastError)):
        return True
    status = _status(e)
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
        return True
    return type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError", "NoSuchBucket", "InvalidAccessKeyId",
                                "SignatureDoesNotMatch", "AccessDenied", "InvalidURL", "NotImplementedError")


def _status(e: BaseException) -> int | None:
    """The HTTP status of an aiohttp (e.status) or botocore (e.response) error."""
    status, response = getattr(e, "status", None), getattr(e, "response", None)
    if status is None and isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def transient(e: BaseException) -> bool:
    """Whether a retry may succeed: network, timeout, server-side and short-body errors of any transport."""
    if permanent(e):
        return False
    module = type(e).__module__.split(".")[0]
    return isinstance(e, (OSError, TimeoutError, EOFError)) or module in (
        "aiohttp", "botocore", "aiobotocore", "urllib3", "requests", "google", "gcsfs", "s3fs", "fsspec", "asyncio")


def explain(location: Location, e: BaseException) -> MaeastError:
    """A permanent (or exhausted) fault as one line: the URL, what went wrong, the fix."""
    if isinstance(e, MaeastError):
        return e
    where, text = redact(location), f"{type(e).__name__}: {e}"
    text = text.replace(str(location), where)
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):  # never echo a secret, whatever a library put in
        if os.environ.get(key):
            text = text.replace(os.environ[key], "***")
    text = " ".join(text.split())[:300]
    name = type(e).__name__
    if name in ("NoSuchBucket",) or "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        fix = "the bucket does not exist: check its name and the endpoint (MAEAST_S3_ENDPOINT_URL)"
    elif isinstance(e, FileNotFoundError):
        fix = "no such object: check the URL, or build the shards there with `maeast shard build --out URL`"
    elif isinstance(e, PermissionError) or name in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied") \
            or "403" in text or "Forbidden" in text:
        fix = ("access denied: check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE for "
               "s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://) and their rights on it")
    elif name in ("NoCredentialsError", "PartialCredentialsError"):
        fix = "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
    else:
        fix = "unreachable: check the network and the endpoint (MAEAST_S3_ENDPOINT_URL for S3-compatible stores)"
    return MaeastError(f"{where}: {fix} ({text})")


def retried(location: Location, call: Callable, retry: Retry | None = None):
    """call() with transient faults retried; a permanent or exhausted fault raises StorageError (one line)."""
    retry = retry or RETRY
    for attempt in range(retry.attempts):
        try:
            return call()
        except Exception as e:
            if not transient(e) or attempt == retry.attempts - 1:
                tries = "" if permanent(e) else f" after {attempt + 1} tries"
                raise StorageError(f"{explain(location, e)}{tries}") from None
            retry.sleep(attempt)


def read_bytes(location: Location) -> bytes:
    """A small object whole (index.json, a build record); a failure is a one-line MaeastError."""
    if not is_url(location):
        return local_path(location).read_bytes()
    if str(location).startswith("pipe:"):
        with open_stream(location) as f:
            return f.read()
    fs, path = filesystem(location)
    try:
        return retried(location, lambda: fs.cat_file(path))
    except StorageError as e:
        raise MaeastError(str(e)) from None


def exists(location: Location) -> bool:
    """Whether an object is there (a missing bucket or refused access is a MaeastError, not False)."""
    if not is_url(location):
        return local_path(location).is_file()
    if str(location).startswith("pipe:"):
        return True  # a command's output can only be tried
    fs, path = filesystem(location)

    def probe() -> bool:  # info: a HEAD request (isfile over http would GET the whole body)
        try:
            return fs.info(path).get("type", "file") == "file"
        except FileNotFoundError:
            return False
    try:
        return retried(location, probe)
    except StorageError as e:
        raise MaeastError(str(e)) from None


def list_names(folder: Location) -> set[str] | None:
    """The object names directly in a folder location (None where it cannot be listed: http(s), pipe:)."""
    text = str(folder)
    if not is_url(text):
        path = local_path(text)
        return {p.name for p in path.iterdir()} if path.is_dir() else set()
    if text.startswith(("pipe:", "http://", "https://")):
        return None
    fs, path = filesystem(text)

    def listing() -> list[str]:
        try:
            return fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:  # an empty or missing prefix
            return []
    try:
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in retried(text, listing)}
    except StorageError as e:
        raise MaeastError(str(e)) from None


def open_stream(location: Location, size: int | None = None) -> BinaryIO:
    """A buffered reader of an object from its first byte to its last: plain open() for local files; for
    remote ones ranged reads, one ahead, retried and resumed at the byte where a fault cut them.
    size: the object's length if known (index.json records it), saving a request."""
    if not is_url(location):
        return open(local_path(location), "rb", buffering=1 << 20)
    raw = PipeReader(str(location)) if str(location).startswith("pipe:") else RangeReader(str(location), size)
    return io.BufferedReader(raw, 1 << 20)


class RangeReader(io.RawIOBase):
    """An fsspec object read in ranges front to back, the next range fetched while this one is read: the first
    of FIRST_CHUNK bytes (at most `chunk`), each next one doubling up to `chunk` (CHUNK)."""

    def __init__(self, location: str, size: int | None = None, chunk: int | None = None):
        self.location, self.chunk = location, chunk or CHUNK
        self.next_size = min(FIRST_CHUNK, self.chunk)
        self.fs, self.path = filesystem(location)
        self.size = size if size is not None else retried(location, lambda: self.fs.size(self.path))
        if self.size is None:
            raise StorageError(f"{redact(location)}: the server does not say the object's size; serve it with a "
                               f"Content-Length (or use s3:// or gs://)")
        self.data, self.at, self.next_start = memoryview(b""), 0, 0
        self.pool = ThreadPoolExecutor(1)
        self.ahead: Future | None = self._fetch_next()

    def readable(self) -> bool:
        return True

    def _fetch_next(self) -> Future | None:
        start = self.next_start
        if start >= self.size:
            return None
        end = min(start + self.next_size, self.size)
        self.next_start, self.next_size = end, min(2 * self.next_size, self.chunk)
        return self.pool.submit(retried, self.location, lambda: self._range(start, end))

    def _range(self, start: int, end: int) -> bytes:
        data = self.fs.cat_file(self.path, start=start, end=end)
        if len(data) == self.size and end - start < self.size:  # a server that ignores Range answers whole
            data = data[start:end]
        if len(data) != end - start:
            raise EOFError(f"short read: {len(data)} of bytes {start}-{end}")
        return data

    def readinto(self, buffer) -> int:
        if self.at >= len(self.data):
            if self.ahead is None:
                return 0
            self.data, self.at = memoryview(self.ahead.result()), 0
            self.ahead = self._fetch_next()
        n = min(len(buffer), len(self.data) - self.at)
        buffer[:n] = self.data[self.at:self.at + n]
        self.at += n
        return n

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)
        super().close()


class PipeReader(io.RawIOBase):
    """pipe:COMMAND's stdout; a failed run (non-zero exit) is rerun, the bytes already read skipped."""

    def __init__(self, location: str):
        self.location, self.command = location, location[len("pipe:"):]
        self.done, self.proc, self.ended = 0, None, False

    def readable(self) -> bool:
        return True

    def _start(self) -> None:
        self.errors = tempfile.TemporaryFile()  # not a pipe: a chatty command must not block on a full one
        self.proc = subprocess.Popen(self.command, shell=True, stdout=subprocess.PIPE, stderr=self.errors)
        skip = self.done
        while skip:
            got = self.proc.stdout.read(min(skip, 1 << 20))
            if not got:
                raise EOFError(f"the rerun ended after {self.done - skip} of {self.done} bytes read before")
            skip -= len(got)

    def _read(self, n: int) -> bytes:
        if self.ended:
            return b""
        try:
            if self.proc is None:
                self._start()
            data = self.proc.stdout.read(n)
        except Exception:
            self.close_proc()
            raise
        if not data:
            code = self.proc.wait()
            self.errors.seek(0)
            err = self.errors.read().decode(errors="replace").strip().splitlines()
            self.close_proc()
            if code:
                raise ConnectionError(f"exit status {code}: {err[-1] if err else ''}")
            self.ended = True
        return data

    def readinto(self, buffer) -> int:
        data = retried(self.location, lambda: self._read(len(buffer)))
        self.done += len(data)
        buffer[:len(data)] = data
        return len(data)

    def close_proc(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.errors.close()
            self.proc = None

    def close(self) -> None:
        self.close_proc()
        super().close()
