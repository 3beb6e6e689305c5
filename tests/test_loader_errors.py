"""Bad shards and samples: detected, skipped with one line on stderr and a counter (or failed), never hung
on, never replaced by silence or zeros."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from maeast.errors import MaeastError
from maeast.files import write_json
from maeast.loaders import LoaderConfig, StreamingLoader
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


def reported(capsys) -> list[str]:
    """The bad-data lines the loader wrote to stderr since the last call: one line each."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("maeast: skipped ")]


def reindex(shards: Path, shard: Path) -> None:
    """Record a rewritten shard's hash in index.json, so only its content is wrong, not its checksum."""
    index = json.loads((shards / INDEX).read_text())
    for entry in index["splits"]["train"]["shards"]:
        if entry["name"] == shard.name:
            entry["sha256"], entry["bytes"] = sha256_file(shard), shard.stat().st_size
    write_json(shards / INDEX, index, sort_keys=True)


def damage(shard: Path, member: str, n: int = 50) -> None:
    """Overwrite n bytes inside one member's data; the tar itself still parses."""
    with tarfile.open(shard) as tar:
        at = next(m for m in tar.getmembers() if m.name == member).offset_data + 100
    data = bytearray(shard.read_bytes())
    data[at:at + n] = bytes(255 - b for b in data[at:at + n])
    shard.write_bytes(bytes(data))


def test_damaged_member_skips_only_its_sample(shards, capsys):
    """Format 2: 50 damaged bytes in one clip's FLAC lose that clip, not its shard, and say so in one line."""
    assert json.loads((shards / INDEX).read_text())["format"] == 2
    shard = victim(shards)
    bad = keys_of(shard)[0]
    damage(shard, f"{bad}.flac")
    loader = StreamingLoader(config(shards))
    seen = collect(loader)
    assert sorted(seen) == sorted(set(corpus_keys(shards)) - {bad})
    assert reported(capsys) == [f"maeast: skipped sample {bad} of shard {shard.name}: the sha256 of its flac member "
                                f"differs from its JSON"]
    assert loader.stats["bad_samples"] == 1 and loader.stats["bad_shards"] == 0
    with pytest.raises(MaeastError, match=f"sample {bad} of shard {shard.name}: the sha256 of its flac"):
        collect(StreamingLoader(config(shards, on_error="fail")))


def test_format1_broken_checksum_skips_the_shard(shards, capsys):
    """Folders built before per-member checksums keep the whole-shard check against index.json."""
    index = json.loads((shards / INDEX).read_text())
    del index["format"]
    write_json(shards / INDEX, index, sort_keys=True)
    shard = victim(shards)
    lost = keys_of(shard)
    damage(shard, f"{lost[0]}.flac", 10)
    loader = StreamingLoader(config(shards))
    seen = collect(loader)
    assert reported(capsys) == [f"maeast: skipped shard {shard.name}: its sha256 differs from index.json (corrupt "
                                f"or changed; check it with `maeast shard inspect --verify`)"]
    assert set(seen) == set(corpus_keys(shards)) - set(lost)
    assert loader.stats["bad_shards"] == 1
    with pytest.raises(MaeastError, match=f"{shard.name}: its sha256 differs from index.json"):
        collect(StreamingLoader(config(shards, on_error="fail")))


def test_garbled_header_loses_only_its_sample(shards, capsys):
    """Damage across a tar header: the reader resyncs at the next valid header, the other clips still come."""
    shard, everything = victim(shards), set(corpus_keys(shards))
    keys = keys_of(shard)
    with tarfile.open(shard) as tar:
        header, after = (next(m for m in tar.getmembers() if m.name == f"{keys[1]}.{ext}").offset
                         for ext in ("flac", "json"))
    data = bytearray(shard.read_bytes())
    data[header + 20:header + 70] = b"\x55" * 50
    shard.write_bytes(bytes(data))
    loader = StreamingLoader(config(shards))
    seen = collect(loader)
    assert sorted(seen) == sorted(everything - {keys[1]})
    lines = reported(capsys)
    assert lines[0] == (f"maeast: skipped bytes {header}-{after} (a garbled tar header; skipped to the next "
                        f"valid one) of shard {shard.name}: the members there are lost")
    assert lines[1].startswith(f"maeast: skipped sample {keys[1]} of shard {shard.name}: has ['json']")


def test_truncated_tar_keeps_what_came_before(shards, capsys):
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
    with pytest.raises(MaeastError, match=f"shard {shard.name}: unreadable \\(TarFormatError: truncated member"):
        collect(StreamingLoader(config(shards, verify_checksums=False, on_error="fail")))
    capsys.readouterr()  # with checksums (format 2, per sample): the same clips, the cut named in one line
    assert set(collect(StreamingLoader(config(shards)))) == everything - {second, *after}
    assert [line.split(" (1000 of ")[0] for line in reported(capsys)] == [
        f"maeast: skipped shard {shard.name}: unreadable (TarFormatError: truncated member"]


def test_undecodable_sample_is_skipped_not_zeroed(shards, capsys):
    shard = victim(shards)
    samples = list(iter_tar(shard))
    bad = samples[1][0]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for key, parts in samples:
            flac = parts["flac"][: len(parts["flac"]) // 3] if key == bad else parts["flac"]
            tar_member(tar, f"{key}.flac", flac)
            tar_member(tar, f"{key}.json", parts["json"])
    reindex(shards, shard)
    loader = StreamingLoader(config(shards, verify_checksums=False))  # past the checksum, to the decoder
    seen = collect(loader)
    assert any(line.startswith(f"maeast: skipped sample {bad}") for line in reported(capsys))
    assert bad not in seen and set(seen) == set(corpus_keys(shards)) - {bad}
    assert loader.stats["bad_samples"] >= 1 and loader.stats["bad_shards"] == 0
    workers = StreamingLoader(config(shards, num_workers=2, verify_checksums=False))
    assert bad not in collect(workers) and workers.stats["bad_samples"] >= 1  # counted across processes
    with pytest.raises(MaeastError, match=f"sample {bad} of shard {shard.name}: undecodable flac"):
        collect(StreamingLoader(config(shards, on_error="fail", num_workers=2, verify_checksums=False)))


def test_garbage_sample_json(shards, capsys):
    shard = victim(shards)
    samples = list(iter_tar(shard))
    bad = samples[0][0]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for key, parts in samples:
            tar_member(tar, f"{key}.flac", parts["flac"])
            tar_member(tar, f"{key}.json", b"{not json" if key == bad else parts["json"])
    reindex(shards, shard)
    loader = StreamingLoader(config(shards))
    assert bad not in collect(loader)
    assert [line for line in reported(capsys) if "unreadable JSON" in line][0].startswith(
        f"maeast: skipped sample {bad} of shard {shard.name}: unreadable JSON")


def test_all_shards_bad_is_an_error_not_a_hang(shards, capsys):
    for shard in shard_paths(shards, "train"):
        shard.write_bytes(shard.read_bytes()[:700])
    with pytest.raises(MaeastError, match="no usable batch in a whole pass"):
        collect(StreamingLoader(config(shards)))
    assert reported(capsys)
