"""Real servers on 127.0.0.1 for the object-storage tests (a pytest plugin: conftest's pytest_plugins).

- s3: moto in server mode (`moto[server]`), a subprocess on a free port, reached through s3fs exactly
  as users reach AWS (dummy credentials and MAEAST_S3_ENDPOINT_URL in the environment); each test
  gets a fresh bucket. `s3.upload(folder, "prefix")` copies a local shard folder and returns its URL;
  inside `credentials_checked(endpoint)` every key is refused.
- http_server: Python's http.server over a folder (with Range requests, as object stores answer them).
- faulty: a proxy in front of either that, seeded, resets connections mid-body, answers 503 and cuts
  bodies short at random offsets, on a chosen fraction of requests.
The servers themselves (moto's, the ranged http.server, the dummy credentials) are benchmarks/servers.py,
which benchmarks/loader_remote.py runs too; this module adds the fixtures, the bucket and the proxy.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import random
import socket
import struct
import sys
import threading
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # as test_mfu imports mfu
from servers import ACCESS_KEY, SECRET, moto_server, s3_env, serve, serve_folder  # noqa: E402, F401


@pytest.fixture(scope="session")
def moto_endpoint():
    """http://127.0.0.1:PORT of a moto S3 server for the whole session."""
    with moto_server() as endpoint:
        yield endpoint


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


@pytest.fixture
def http_server(tmp_path):
    """(folder, base URL): files put under the folder are served at base URL + relative path."""
    root = tmp_path / "www"
    root.mkdir()
    with serve_folder(root) as url:
        yield root, url


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

