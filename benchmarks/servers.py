"""Loopback servers for object storage on 127.0.0.1, shared by benchmarks/loader_remote.py and the test
suite (tests/servers.py wraps them in pytest fixtures). Nothing here imports pytest or the tests.

- moto_server(): moto in server mode (`moto[server]`), a subprocess on a free port, reached through s3fs
  exactly as users reach AWS, with dummy credentials (s3_env: the environment a user sets).
- serve_folder(root): Python's http.server over a folder, with Range requests, as object stores answer them.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

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


@contextlib.contextmanager
def moto_server():
    """http://127.0.0.1:PORT of a moto S3 server, for the duration of the block."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment a user of an S3-compatible store sets (here: moto, with dummy credentials)."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
            "MAEAST_S3_ENDPOINT_URL": endpoint}


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
    """A threaded server of `handler` on 127.0.0.1 (port 0: a free one) -> (server, base URL)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@contextlib.contextmanager
def serve_folder(root: Path):
    """Base URL of a RangeHandler over `root` (files under it at base URL + relative path), for the block."""
    handler = type("Handler", (RangeHandler,), {"__init__": lambda self, *a, **k: RangeHandler.__init__(
        self, *a, directory=str(root), **k)})
    server, url = serve(handler)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
