"""Bad shards and samples: detected, skipped with a warning and a counter (or failed), never hung on,
never replaced by silence or zeros."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from maeast.errors import MaeastError
from maeast.files import write_json
from maeast.loaders import BadDataWarning, LoaderConfig, StreamingLoader
from maeast.shards.format import INDEX, iter_tar, sha256_file, shard_paths, tar_member
from tests.conftest import build, corpus_keys, make_corpus


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("errors")
    build(make_corpus(root / "corpus", speech=4, music=4), root / "shards", shard_mb=0.12)
    return root / "shards"


@pytest.fixture
def shards(pristine, tmp_path) -> Path:
    out = tmp_path / "shards"
    shutil.copytree(pristine, out)
    return out


def config(shards, **kw) -> LoaderConfig:
    return LoaderConfig(**{**dict(shards=[str(shards)], mode="finetune", clip_seconds=2.0, batch_size=2,
                                  num_workers=0, shuffle_buffer=0), **kw})


def keys_of(path: Path) -> list[str]:
    return [k for k, _ in iter_tar(path)]


def victim(shards: Path) -> Path:
    """A shard holding at least two samples."""
    return next(p for p in shard_paths(shards, "train") if len(keys_of(p)) >= 2)


def collect(loader) -> list[str]:
    keys = []
    for batch in loader:
        for row in batch.features:  # a real clip's log-mel varies; silence or zeros would not
            assert row.std() > 1.0 and (row != 0).any()
        keys += batch.keys
    return keys


def reindex(shards: Path, shard: Path) -> None:
    """Record a rewritten shard's hash in index.json, so only its content is wrong, not its checksum."""
    index = json.loads((shards / INDEX).read_text())
    for entry in index["splits"]["train"]["shards"]:
        if entry["name"] == shard.name:
            entry["sha256"], entry["bytes"] = sha256_file(shard), shard.stat().st_size
    write_json(shards / INDEX, index, sort_keys=True)


def test_broken_checksum_skips_the_shard(shards):
    shard = victim(shards)
    lost = keys_of(shard)
    data = bytearray(shard.read_bytes())
    data[3000:3010] = b"\x55" * 10  # inside the first FLAC payload; the tar itself still parses
    shard.write_bytes(bytes(data))
    assert keys_of(shard) == lost
    loader = StreamingLoader(config(shards))
    with pytest.warns(BadDataWarning, match=f"{shard.name}.*sha256 differs"):
        seen = collect(loader)
    assert set(seen) == set(corpus_keys(shards)) - set(lost)
    assert loader.stats["bad_shards"] >= 1
    with pytest.raises(MaeastError, match=f"{shard.name}: its sha256 differs from index.json"):
        collect(StreamingLoader(config(shards, on_error="fail")))


def test_truncated_tar_keeps_what_came_before(shards):
    shard = victim(shards)
    first, second, *after = keys_of(shard)
    everything = set(corpus_keys(shards))
    with tarfile.open(shard) as tar:
        cut = next(m for m in tar.getmembers() if m.name == f"{second}.flac").offset_data + 1000
    shard.write_bytes(shard.read_bytes()[:cut])
    loader = StreamingLoader(config(shards, verify_checksums=False, num_workers=2))
    seen = collect(loader)
    assert first in seen and second not in seen and loader.stats["bad_shards"] >= 1
    assert set(seen) == everything - {second, *after}
    with pytest.raises(MaeastError, match=f"shard .*{shard.name}: unreadable tar"):
        collect(StreamingLoader(config(shards, verify_checksums=False, on_error="fail")))
    with pytest.warns(BadDataWarning, match="sha256 differs"):  # with checksums, caught before reading
        collect(StreamingLoader(config(shards)))


def test_undecodable_sample_is_skipped_not_zeroed(shards):
    shard = victim(shards)
    samples = list(iter_tar(shard))
    bad = samples[1][0]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for key, parts in samples:
            flac = parts["flac"][: len(parts["flac"]) // 3] if key == bad else parts["flac"]
            tar_member(tar, f"{key}.flac", flac)
            tar_member(tar, f"{key}.json", parts["json"])
    reindex(shards, shard)
    loader = StreamingLoader(config(shards))
    with pytest.warns(BadDataWarning, match=f"skipped sample {bad}"):
        seen = collect(loader)
    assert bad not in seen and set(seen) == set(corpus_keys(shards)) - {bad}
    assert loader.stats["bad_samples"] >= 1 and loader.stats["bad_shards"] == 0
    workers = StreamingLoader(config(shards, num_workers=2))
    assert bad not in collect(workers) and workers.stats["bad_samples"] >= 1  # counted across processes
    with pytest.raises(MaeastError, match=f"sample {bad}: "):
        collect(StreamingLoader(config(shards, on_error="fail", num_workers=2)))


def test_garbage_sample_json(shards):
    shard = victim(shards)
    samples = list(iter_tar(shard))
    bad = samples[0][0]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for key, parts in samples:
            tar_member(tar, f"{key}.flac", parts["flac"])
            tar_member(tar, f"{key}.json", b"{not json" if key == bad else parts["json"])
    reindex(shards, shard)
    loader = StreamingLoader(config(shards))
    with pytest.warns(BadDataWarning, match="unreadable JSON"):
        assert bad not in collect(loader)


def test_all_shards_bad_is_an_error_not_a_hang(shards):
    for shard in shard_paths(shards, "train"):
        shard.write_bytes(shard.read_bytes()[:700])
    with pytest.warns(BadDataWarning), pytest.raises(MaeastError, match="no usable batch in a whole pass"):
        collect(StreamingLoader(config(shards)))
