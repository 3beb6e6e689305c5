"""Real servers on 127.0.0.1 for the object-storage tests (a pytest plugin: conftest's pytest_plugins).

- s3: moto in server mode (`moto[server]`), a subprocess on a free port, reached through s3fs exactly
  as users reach AWS (dummy credentials and MAEAST_S3_ENDPOINT_URL in the environment); each test
  gets a fresh bucket. `s3.upload(folder, "prefix")` copies a local shard folder and returns its URL;
  inside `credentials_checked(endpoint)` every key is refused.
- http_server: Python's http.server over a folder (with Range requests, as object stores answer them).
- faulty: a proxy in front of either that, seeded, resets connections mid-body, answers 503 and cuts
  bodies short at random offsets, on a chosen fraction of requests.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ACCESS_KEY = "maeast-test-access-key"
SECRET = "maeast-test-secret-Zq7vX2pL9"
"""The dummy secret every S3 test runs with; tests grep run folders and messages for it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, proc: subprocess.Popen | None = None, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


@pytest.fixture(scope="session")
def moto_endpoint():
    """http://127.0.0.1:PORT of a moto S3 server for the whole session."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class S3:
    endpoint: str
    bucket: str
    client: object = field(repr=False)

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def upload(self, folder: Path, prefix: str) -> str:
        """Copy every file of a local folder to s3://bucket/prefix/; the folder's URL."""
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                self.client.upload_file(str(path), self.bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
        return self.url(prefix)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment a user of an S3-compatible store sets (here: moto, with dummy credentials)."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
            "MAEAST_S3_ENDPOINT_URL": endpoint}


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    """A fresh bucket on the moto server, the environment pointing s3:// at it."""
    import boto3
    import s3fs

    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_env(moto_endpoint).items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    client = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET, region_name="us-east-1")
    bucket = f"maeast-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield S3(moto_endpoint, bucket, client)
    s3fs.S3FileSystem.clear_instance_cache()


@contextlib.contextmanager
def credentials_checked(endpoint: str):
    """Within the block the moto server checks every request's credentials against its IAM, where the
    dummy keys are unknown, so every request is refused (403 InvalidAccessKeyId): a store that denies us."""
    def reset(count: float) -> float:
        request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=str(count).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return float(json.load(response)["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"])

    previous = reset(0)
    try:
        yield
    finally:
        reset(previous)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """http.server's file handler, plus single byte ranges (206), as object stores and CDNs serve them."""

    def log_message(self, *args) -> None:
        pass

    def send_head(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        start, end = int(match[1]), min(int(match[2] or size - 1), size - 1)
        if start >= size:
            self.send_error(416)
            return None
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return _Limited(f, end - start + 1)


class _Limited:
    """A file object copyfile() reads only `left` bytes of."""

    def __init__(self, f, left: int):
        self.f, self.left = f, left

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.f.close()


def serve(handler, port: int = 0) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def http_server(tmp_path):
    """(folder, base URL): files put under the folder are served at base URL + relative path."""
    root = tmp_path / "www"
    root.mkdir()
    handler = type("Handler", (RangeHandler,), {"__init__": lambda self, *a, **k: RangeHandler.__init__(
        self, *a, directory=str(root), **k)})
    server, url = serve(handler)
    yield root, url
    server.shutdown()
    server.server_close()


KINDS = ("reset", "503", "cut", "short")


@dataclass
class Faults:
    """What the proxy did: counts per kind of fault, and the requests it passed whole."""

    rate: float
    seed: int
    only: str = ".tar"
    counts: dict[str, int] = field(default_factory=lambda: {"reset": 0, "503": 0, "cut": 0, "short": 0, "ok": 0})
    paths: list[str] = field(default_factory=list)  # every GET, in order
    rng: random.Random = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.rng = random.Random(self.seed)

    def draw(self, path: str) -> tuple[str, float]:
        """(fault kind or "ok", where in the body it strikes as a fraction)."""
        with self.lock:
            self.paths.append(path)
            if self.only not in path or self.rng.random() >= self.rate:
                kind = "ok"
            else:
                kind = KINDS[sum(self.counts[k] for k in KINDS) % len(KINDS)]  # each kind in turn
            self.counts[kind] += 1
            return kind, self.rng.random()


def proxy_handler(upstream: str, faults: Faults):
    host, port = upstream.removeprefix("http://").split(":")

    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_HEAD(self) -> None:
            self.forward(body=False)

        def do_GET(self) -> None:
            self.forward(body=True)

        def forward(self, body: bool) -> None:
            kind, where = faults.draw(self.path) if body else ("ok", 0.0)
            if kind == "503":
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn.request(self.command, self.path, headers=headers)
            response = conn.getresponse()
            data = response.read()
            conn.close()
            cut = int(len(data) * where) if kind != "ok" else len(data)
            self.send_response(response.status)
            for k, v in response.getheaders():
                if k.lower() not in ("connection", "content-length", "transfer-encoding") or not body:
                    self.send_header(k, v)
            if not body:  # HEAD: the upstream's headers, Content-Length included
                self.end_headers()
                return
            self.send_header("Content-Length", str(cut if kind == "short" else len(data)))
            self.end_headers()
            self.wfile.write(data[:cut])
            self.wfile.flush()
            if kind in ("reset", "cut"):
                if kind == "reset":  # RST instead of FIN: the client sees ECONNRESET
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

    return Proxy


@pytest.fixture
def faulty():
    """faulty(upstream_url, rate, seed) -> (proxy URL, Faults); every proxy is shut down after the test."""
    servers = []

    def start(upstream: str, rate: float = 0.3, seed: int = 0, only: str = ".tar") -> tuple[str, Faults]:
        faults = Faults(rate, seed, only)
        server, url = serve(proxy_handler(upstream, faults))
        servers.append(server)
        return url, faults

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()

