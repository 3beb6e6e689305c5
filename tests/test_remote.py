"""Training data from object storage (issue 15, read side), against real servers on 127.0.0.1
(tests/servers.py): moto's S3, http.server, and a proxy that resets, 503s and cuts bodies short.

The same batches as from local disk; every clip exactly once through a faulty network; a shard that stays
unreachable skipped and named; a damaged member skipped and named; permanent errors at start in one line;
resume from a remote source; the cache; pipe: folders."""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from maeast.errors import MaeastError
from maeast.loaders import LoaderConfig, StreamingLoader
from maeast.shards import storage
from maeast.shards.format import iter_tar
from tests.conftest import build, corpus_keys, make_corpus
from tests.servers import SECRET, credentials_checked


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("remote")
    build(make_corpus(root / "corpus", speech=4, music=4), root / "shards")
    return root / "shards"


@pytest.fixture
def fast_retries(monkeypatch):
    """Small ranged reads (so faults strike mid-shard) and quick backoff; workers are forked, so they inherit it."""
    monkeypatch.setattr(storage, "CHUNK", 8192)
    monkeypatch.setattr(storage, "RETRY", storage.Retry(attempts=8, wait=0.001, max_wait=0.01))


def config(url, **kw) -> LoaderConfig:
    return LoaderConfig(**{**dict(shards=[str(url)], batch_size=2, num_workers=2, shuffle_buffer=4, bucket_batches=2,
                                  min_seconds=0.0, seed=5), **kw})


def batches(loader) -> list[tuple[tuple[str, ...], float]]:
    return [(tuple(b.keys), round(b.features.double().sum().item(), 3)) for b in loader]


def served(shards: Path, http_server) -> str:
    root, url = http_server
    shutil.copytree(shards, root / "shards")
    return f"{url}/shards"


def reported(capture) -> list[str]:
    """Bad-data lines on stderr (capfd where worker processes write them)."""
    return [line for line in capture.readouterr().err.splitlines() if line.startswith("maeast: skipped ")]


def test_s3_gives_the_batches_of_local_disk(shards, s3):
    url = s3.upload(shards, "corpus/shards")
    local = batches(StreamingLoader(config(shards)))
    remote = StreamingLoader(config(url))
    assert [s.name for s in remote.sources[0].shards] == sorted(p.name for p in shards.glob("*.tar"))
    assert batches(remote) == local and remote.stats["bad_samples"] == remote.stats["bad_shards"] == 0


def test_faulty_network_yields_every_clip_exactly_once(shards, http_server, faulty, fast_retries):
    url, faults = faulty(served(shards, http_server).rsplit("/shards", 1)[0], rate=0.3, seed=7)
    loader = StreamingLoader(config(f"{url}/shards"))
    got = batches(loader)
    assert got == batches(StreamingLoader(config(shards)))  # the same clips, crops and order: none lost, none twice
    assert sorted(k for keys, _ in got for k in keys) == corpus_keys(shards)
    assert all(faults.counts[kind] > 0 for kind in ("reset", "503", "cut", "short")), faults.counts
    assert loader.stats["bad_shards"] == 0


def test_unreachable_shard_is_skipped_and_named(shards, http_server, faulty, fast_retries, capsys):
    names = json.loads((shards / "index.json").read_text())["splits"]["train"]["shards"]
    dead = names[1]["name"]
    url, faults = faulty(served(shards, http_server).rsplit("/shards", 1)[0], rate=1.0, seed=1, only=dead)
    loader = StreamingLoader(config(f"{url}/shards", num_workers=0))
    seen = [k for keys, _ in batches(loader) for k in keys]
    lost = {k for k in corpus_keys(shards) if k not in seen}
    assert lost and len(seen) == len(set(seen)) and loader.stats["bad_shards"] == 1
    lines = reported(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"maeast: skipped shard {dead}: unreadable (StorageError: "
                                                   f"{url}/shards/{dead}: unreachable")
    assert lines[0].endswith("after 8 tries)") and faults.paths.count(f"/shards/{dead}") == 8  # RETRY.attempts


def test_damaged_member_in_a_remote_shard_is_skipped_and_named(shards, s3, tmp_path, capfd):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    shard = sorted(copy.glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".flac"))
    data = bytearray(shard.read_bytes())
    data[member.offset_data + 64:member.offset_data + 114] = bytes(50)
    shard.write_bytes(bytes(data))
    bad = member.name.rsplit(".", 1)[0]
    loader = StreamingLoader(config(s3.upload(copy, "damaged")))
    seen = [k for keys, _ in batches(loader) for k in keys]
    assert sorted(seen) == sorted(set(corpus_keys(shards)) - {bad}) and loader.stats["bad_samples"] == 1
    assert reported(capfd) == [f"maeast: skipped sample {bad} of shard {shard.name}: the sha256 of its flac member "
                                f"differs from its JSON"]


def one_line_error(make) -> str:
    start = time.monotonic()
    with pytest.raises(MaeastError) as e:
        make()
    assert time.monotonic() - start < 5  # permanent: no retries, no backoff
    message = str(e.value)
    assert "\n" not in message and SECRET not in message
    return message


def test_permanent_errors_fail_at_start_in_one_line(shards, s3, http_server):
    url = s3.upload(shards, "ok")
    wrong = "s3://no-such-bucket-3x/shards"
    assert "the bucket does not exist" in one_line_error(lambda: StreamingLoader(config(wrong)))
    message = one_line_error(lambda: StreamingLoader(config(s3.url("nothing-here"))))
    assert message.startswith(f"{s3.url('nothing-here')}/index.json: no such object")
    name = sorted(shards.glob("*.tar"))[2].name
    s3.client.delete_object(Bucket=s3.bucket, Key=f"ok/{name}")
    assert one_line_error(lambda: StreamingLoader(config(url))) == (
        f"{url}: 1 shard(s) listed in index.json are missing (first: {name}); rebuild with `maeast shard build`")
    with credentials_checked(s3.endpoint):
        message = one_line_error(lambda: StreamingLoader(config(s3.url("ok"))))
    assert message.startswith(f"{s3.url('ok')}/index.json: access denied: check the credentials")
    root, base = http_server
    assert one_line_error(lambda: StreamingLoader(config(f"{base}/missing"))).startswith(
        f"{base}/missing/index.json: no such object")
    shutil.copytree(shards, root / "shards")
    (root / "shards" / name).unlink()  # a folder over http cannot be listed: each shard is asked for
    assert one_line_error(lambda: StreamingLoader(config(f"{base}/shards"))) == (
        f"{base}/shards: 1 shard(s) listed in index.json are missing (first: {name}); rebuild with "
        f"`maeast shard build`")


def test_resume_from_s3_continues_the_same_sequence(shards, s3):
    url = s3.upload(shards, "resume")
    reference = batches(StreamingLoader(config(url)))
    first = StreamingLoader(config(url))
    seen = []
    for batch in first:
        seen.append((tuple(batch.keys), round(batch.features.double().sum().item(), 3)))
        if len(seen) == 3:
            break
    state = json.loads(json.dumps(first.state_dict()))
    del first
    resumed = StreamingLoader(config(url))
    resumed.load_state_dict(state)
    assert seen + batches(resumed) == reference[:3] + reference[3:] and len(reference) > 3
    ranks = [StreamingLoader(config(url, num_workers=1), rank, 2) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])  # equal steps per rank from remote shards
    keys = [k for loader in ranks for keys, _ in batches(loader) for k in keys]
    assert len(keys) <= len(corpus_keys(shards)) and len(set(keys)) == len(keys)


def test_cache_serves_later_epochs_and_refetches_a_corrupt_entry(shards, http_server, faulty, tmp_path):
    url, faults = faulty(served(shards, http_server).rsplit("/shards", 1)[0], rate=0.0)
    cache = tmp_path / "cache"
    loader = StreamingLoader(config(f"{url}/shards", cache_dir=str(cache)))
    first = batches(loader)
    tars = sorted(shards.glob("*.tar"))
    entries = sorted(cache.glob("*.tar"))
    assert len(entries) == len(tars) and not list(cache.glob(".*"))  # whole entries only, no temporaries left
    assert sorted(p.read_bytes() for p in entries) == sorted(p.read_bytes() for p in tars)
    fetched = [p for p in faults.paths if p.endswith(".tar")]
    assert sorted(fetched) == sorted(f"/shards/{p.name}" for p in tars)  # each shard fetched once
    assert batches(loader) != first  # epoch 1, reshuffled ...
    assert [p for p in faults.paths if p.endswith(".tar")] == fetched  # ... read from the cache alone
    data = bytearray(entries[0].read_bytes())
    data[2000:2050] = bytes(255 - b for b in data[2000:2050])  # bit rot inside the first clip's audio
    entries[0].write_bytes(bytes(data))
    again = StreamingLoader(config(f"{url}/shards", cache_dir=str(cache)))
    assert batches(again) == first and again.stats["cache_refetched"] == 1
    assert len([p for p in faults.paths if p.endswith(".tar")]) == len(fetched) + 1
    assert sorted(p.read_bytes() for p in cache.glob("*.tar")) == sorted(p.read_bytes() for p in tars)


def test_cache_keeps_to_its_size_cap(shards, s3, tmp_path):
    cache = tmp_path / "cache"
    sizes = sorted(p.stat().st_size for p in shards.glob("*.tar"))
    cap = (sizes[-1] + sizes[-2]) * 1.01 / 1e9
    batches(StreamingLoader(config(s3.upload(shards, "capped"), cache_dir=str(cache), cache_gb=cap)))
    assert 1 <= len(list(cache.glob("*.tar"))) <= 2 and sum(p.stat().st_size for p in cache.glob("*.tar")) <= cap * 1e9


def test_pipe_folder_reads_through_a_command(shards, tmp_path, fast_retries):
    url = f"pipe:cat {shards}/{{}}"
    assert batches(StreamingLoader(config(url))) == batches(StreamingLoader(config(shards)))
    # each shard's first run dies after 20000 bytes: rerun, the bytes already read skipped, nothing lost or doubled
    flaky = (f"pipe:sh -c 'if [ -e {tmp_path}/ran.{{}} ]; then cat {shards}/{{}}; else touch {tmp_path}/ran.{{}}; "
             f"head -c 20000 {shards}/{{}}; exit 1; fi'")
    loader = StreamingLoader(config(flaky))
    assert batches(loader) == batches(StreamingLoader(config(shards))) and loader.stats["bad_shards"] == 0
    assert len(list(tmp_path.glob("ran.*.tar"))) == len(list(shards.glob("*.tar")))
    with pytest.raises(MaeastError, match="needs {} where the object's name goes"):
        StreamingLoader(config(f"pipe:cat {shards}/index.json"))


def test_shard_inspect_and_stats_read_a_bucket(shards, s3, tmp_path):
    from typer.testing import CliRunner

    from maeast.cli import app
    from maeast.features.stats import corpus_stats

    url = s3.upload(shards, "cli")
    result = CliRunner().invoke(app, ["shard", "inspect", url, "--verify"])
    assert result.exit_code == 0 and "verified" in result.output and SECRET not in result.output, result.output
    name = sorted(shards.glob("*.tar"))[1].name
    data = bytearray((shards / name).read_bytes())
    with tarfile.open(shards / name) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".flac"))
    data[member.offset_data + 64:member.offset_data + 74] = bytes(10)
    s3.put(f"cli/{name}", bytes(data))
    result = CliRunner().invoke(app, ["shard", "inspect", url, "--verify"])
    assert result.exit_code == 1 and f"{name}: {member.name.rsplit('.', 1)[0]}: the sha256 of its flac" in result.output
    assert f"{name}: sha256 differs from the index" in result.output
    result = CliRunner().invoke(app, ["shard", "stats", url, "--preset", "ssast", "--max-clips", "3"])
    assert result.exit_code == 0, result.output
    written = json.loads(s3.get("cli/index.json"))["stats"]["ssast"]
    assert written == json.loads(json.dumps(corpus_stats(shards, "ssast", max_clips=3)))


def test_a_url_with_credentials_in_it_is_refused():
    for url in ("https://user:hunter2@example.com/shards", "https://example.com/shards?X-Amz-Signature=hunter2"):
        with pytest.raises(MaeastError, match="carries credentials") as e:
            config(url)
        assert "hunter2" not in str(e.value)


@pytest.mark.slow
def test_ffcv_beton_from_a_bucket_equals_one_from_disk(shards, s3, tmp_path):
    pytest.importorskip("ffcv")
    from maeast.loaders.ffcv import write_beton

    url = s3.upload(shards, "ffcv")
    with pytest.raises(MaeastError, match="is a URL: give --out"):
        write_beton(url, "train", 2.0)
    local = write_beton(shards, "train", 2.0, tmp_path / "local.beton", workers=1)
    remote = write_beton(url, "train", 2.0, tmp_path / "remote.beton", workers=1)
    assert remote.pop("shards") == url and {k: v for k, v in local.items() if k != "shards"} == remote
    assert (tmp_path / "local.beton").read_bytes() == (tmp_path / "remote.beton").read_bytes()


def test_the_first_batch_comes_before_the_shard_is_downloaded(shards, http_server, faulty, fast_retries):
    """A shard streams front to back in ranged reads: the first batch of its first clips costs the reads up to
    them (and one ahead), not the whole shard."""
    root, base = http_server
    build(shards.parent / "corpus", root / "one", shard_mb=1.0)  # every clip in one shard
    url, faults = faulty(base, rate=0.0)
    (shard,) = root.joinpath("one").glob("*.tar")
    chunks = -(-shard.stat().st_size // storage.CHUNK)
    loader = iter(StreamingLoader(config(f"{url}/one", num_workers=0, shuffle_buffer=0, bucket_batches=1)))
    first = next(loader)
    reads = [p for p in faults.paths if p.endswith(".tar")]
    assert list(first.keys) == [k for k, _ in iter_tar(shard)][:2]
    assert chunks >= 20 and 0 < len(reads) <= chunks // 2, (len(reads), chunks)
