"""`maeast shard build --out s3://...` against a real S3 server (moto on 127.0.0.1, tests/servers.py):
the same bytes as a local build, resume after an interruption without re-uploading, fast one-line errors,
no secret in the output."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3fs
from typer.testing import CliRunner

from maeast.cli import app
from maeast.errors import MaeastError
from maeast.shards.build import build_shards
from maeast.shards.storage import Retry
from tests.conftest import pluck
from tests.servers import SECRET, credentials_checked, s3_env

SIZE_MB = 0.1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Twelve plucked clips of 3 s: five or six shards of SIZE_MB."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        folder = root / ("low" if i % 2 else "high")
        folder.mkdir(exist_ok=True)
        pluck(folder / f"c{i:02d}.wav", (["C3", "D3", "E3", "F3"][i % 4], "A4"), seconds=3.0)
    return root


@pytest.fixture(scope="module")
def local(corpus, tmp_path_factory) -> dict[str, bytes]:
    """The files of a local build of the corpus: what every remote build must equal, byte for byte."""
    out = tmp_path_factory.mktemp("local") / "shards"
    build_shards("folder", corpus, out, shard_size_mb=SIZE_MB)
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def remote_names(s3, prefix: str) -> list[str]:
    found = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{prefix}/").get("Contents", [])
    return sorted(o["Key"].removeprefix(f"{prefix}/") for o in found)


def remote_files(s3, prefix: str) -> dict[str, bytes]:
    return {name: s3.get(f"{prefix}/{name}") for name in remote_names(s3, prefix)}


def test_build_to_s3_gives_the_local_bytes(corpus, local, s3):
    assert sum(name.endswith(".tar") for name in local) >= 4
    index = build_shards("folder", corpus, s3.url("corpus/shards"), shard_size_mb=SIZE_MB, workers=2)
    assert remote_files(s3, "corpus/shards") == local  # every shard, its DALI index, rejects.tsv, index.json
    assert index["format"] == 2
    uploads = Uploads(s3)
    assert build_shards("folder", corpus, s3.url("corpus/shards"), shard_size_mb=SIZE_MB) == index
    assert uploads.shards == []  # a finished folder is left as it is


class Uploads:
    """Records the names of the shards put to the bucket (through s3fs, as the builder does); the
    upload of `fail_at` fails."""

    def __init__(self, s3, fail_at: str | None = None):
        self.shards: list[str] = []
        self.patch = pytest.MonkeyPatch()
        real = s3fs.S3FileSystem._put_file

        async def put_file(fs, lpath, rpath, *args, **kwargs):
            name = str(rpath).rsplit("/", 1)[-1]
            if name == fail_at:
                raise ConnectionResetError(f"simulated: the connection dropped while uploading {name}")
            if name.endswith(".tar"):
                self.shards.append(name)
            return await real(fs, lpath, rpath, *args, **kwargs)

        self.patch.setattr(s3fs.S3FileSystem, "_put_file", put_file)
        s3fs.S3FileSystem.clear_instance_cache()  # instances bind their sync put_file when made

    def undo(self) -> None:
        self.patch.undo()
        s3fs.S3FileSystem.clear_instance_cache()


def test_failed_upload_resumes_to_the_same_bytes_without_reuploading(corpus, local, s3, monkeypatch):
    shards = sorted(name for name in local if name.endswith(".tar"))
    monkeypatch.setattr("maeast.shards.storage.RETRY", Retry(attempts=2, wait=0.01))  # retried, in vain
    failing = Uploads(s3, fail_at=shards[2])
    with pytest.raises(MaeastError, match=f"{shards[2]}.*run the same command again to resume"):
        build_shards("folder", corpus, s3.url("x"), shard_size_mb=SIZE_MB)
    failing.undo()
    assert failing.shards == shards[:2]
    assert "index.json" not in remote_files(s3, "x")
    rerun = Uploads(s3)
    build_shards("folder", corpus, s3.url("x"), shard_size_mb=SIZE_MB)
    rerun.undo()
    assert rerun.shards == shards[2:]  # the two verified shards stay, never uploaded again
    assert remote_files(s3, "x") == local


def test_killed_build_resumes_to_the_same_bytes(corpus, local, s3, tmp_path):
    """A build killed (SIGKILL) once a shard is uploaded and verified; the rerun keeps it and ends identical."""
    url = s3.url("killed")
    cmd = [sys.executable, "-m", "maeast", "shard", "build", "folder", "--root", str(corpus), "--out", url,
           "--shard-size", str(SIZE_MB)]
    env = {**os.environ, **s3_env(s3.endpoint)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not any(k.endswith(".tar.json") for k in remote_names(s3, "killed")):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = remote_names(s3, "killed")
    assert "index.json" not in done, "the build finished before it could be killed"
    kept = [k for k in done if k.endswith(".tar") and f".build/{k}.json" in done]  # uploaded and verified
    assert kept
    rerun = Uploads(s3)
    build_shards("folder", corpus, url, shard_size_mb=SIZE_MB)
    rerun.undo()
    assert rerun.shards and not set(kept) & set(rerun.shards)
    assert remote_files(s3, "killed") == local


def test_wrong_bucket_fails_fast_in_one_line_without_the_secret(corpus, s3):
    runner = CliRunner()
    start = time.monotonic()
    result = runner.invoke(app, ["shard", "build", "folder", "--root", str(corpus), "--out",
                                 f"s3://{s3.bucket}-missing/shards"])
    assert time.monotonic() - start < 10
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"s3://{s3.bucket}-missing/shards" in lines[0] and "bucket does not exist" in lines[0]
    assert "Traceback" not in result.output and SECRET not in result.output
    assert remote_files(s3, "shards") == {}


def test_denied_write_fails_fast_in_one_line(corpus, s3):
    with credentials_checked(s3.endpoint):
        start = time.monotonic()
        result = CliRunner().invoke(app, ["shard", "build", "folder", "--root", str(corpus), "--out", s3.url("denied")])
        seconds = time.monotonic() - start
    assert result.exit_code == 2 and seconds < 10, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and s3.url("denied") in lines[0] and "access denied" in lines[0], result.output
    assert SECRET not in result.output and remote_files(s3, "denied") == {}


def test_cli_build_to_s3_prints_no_secret(corpus, local, s3):
    result = CliRunner().invoke(app, ["shard", "build", "folder", "--root", str(corpus), "--out", s3.url("cli"),
                                      "--shard-size", str(SIZE_MB)])
    assert result.exit_code == 0, result.output
    assert s3.url("cli") in result.output and SECRET not in result.output
    files = remote_files(s3, "cli")
    assert files == local and not any(SECRET.encode() in data for data in files.values())


def test_read_only_locations_are_refused(corpus, tmp_path):
    with pytest.raises(MaeastError, match="read only"):
        build_shards("folder", corpus, "https://example.org/shards")
    build_shards("folder", corpus, f"file://{tmp_path}/shards", shard_size_mb=SIZE_MB)
    assert (tmp_path / "shards" / "index.json").is_file()
