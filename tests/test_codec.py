"""Shards with wav audio (`--codec wav`): the same samples, features and checks as FLAC shards."""

from __future__ import annotations

import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from maeast.cli import app
from maeast.errors import MaeastError
from maeast.files import write_json
from maeast.loaders import LoaderConfig, StreamingLoader
from maeast.shards.build import build_shards
from maeast.shards.format import (encode_audio, iter_tar, parse_pcm16_wav, read_index, shard_paths, sha256_file,
                                  tar_member)
from maeast.shards.inspect import verify_shards
from tests.conftest import corpus_keys, make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("codec") / "corpus", speech=4, music=4, short=1)


@pytest.fixture(scope="module")
def both(corpus) -> tuple[Path, Path]:
    flac, wav = corpus.parent / "flac", corpus.parent / "wav"
    build_shards("folder", corpus, flac, shard_size_mb=0.05)
    result = CliRunner().invoke(app, ["shard", "build", "folder", "--root", str(corpus), "--out", str(wav),
                                      "--shard-size", "0.1", "--codec", "wav"])
    assert result.exit_code == 0, result.output
    return flac, wav


def features_by_key(shards: Path, **kw) -> dict[str, torch.Tensor]:
    config = LoaderConfig(shards=[str(shards)], batch_size=3, num_workers=0, shuffle_buffer=0, **kw)
    return {k: f for b in StreamingLoader(config) for k, f in zip(b.keys, b.features)}


def test_both_codecs_hold_the_same_samples(both):
    flac, wav = both
    assert read_index(flac)["codec"] == "flac" and read_index(wav)["codec"] == "wav"
    decoded = {}
    for folder, ext in ((flac, "flac"), (wav, "wav")):
        for path in shard_paths(folder, "train"):
            for key, parts in iter_tar(path):
                assert set(parts) == {ext, "json"}, parts.keys()
                decoded.setdefault(key, []).append(sf.read(io.BytesIO(parts[ext]), dtype="int16")[0])
    assert sorted(decoded) == corpus_keys(flac) == corpus_keys(wav)
    for key, (a, b) in decoded.items():
        assert np.array_equal(a, b), key  # libsndfile's wav writer alone would round some samples differently
    assert verify_shards(wav).problems == []


def test_wav_shards_give_the_same_features(both):
    flac, wav = both
    for kw in (dict(mode="finetune", clip_seconds=2.5, random_crop=False), dict(mode="finetune", clip_seconds=1.0)):
        a, b = features_by_key(flac, **kw), features_by_key(wav, **kw)
        assert sorted(a) == sorted(b) and len(a) == 9
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_pcm16_header_parser():
    wave = np.sin(np.arange(1000) / 7).astype(np.float32) * 0.5
    data = encode_audio(wave, 16000, "wav")
    pcm = parse_pcm16_wav(data)
    assert pcm is not None and (pcm.sample_rate, pcm.frames) == (16000, 1000)
    samples = np.frombuffer(data, "<i2", pcm.frames, pcm.offset)
    assert np.array_equal(samples, sf.read(io.BytesIO(data), dtype="int16")[0])
    assert parse_pcm16_wav(data[: len(data) - 10]) is None  # truncated data chunk
    assert parse_pcm16_wav(encode_audio(wave, 16000, "flac")) is None
    stereo = io.BytesIO()
    sf.write(stereo, np.stack([wave, wave], 1), 16000, format="WAV", subtype="PCM_16")
    assert parse_pcm16_wav(stereo.getvalue()) is None
    with pytest.raises(MaeastError, match="unknown audio codec 'mp3'"):
        encode_audio(wave, 16000, "mp3")


def test_truncated_wav_sample_is_skipped_not_zeroed(both, tmp_path, capsys):
    wav = tmp_path / "wav"
    wav.mkdir()
    for p in both[1].iterdir():
        if p.is_file():
            (wav / p.name).write_bytes(p.read_bytes())
    shard = shard_paths(wav, "train")[0]
    samples = list(iter_tar(shard))
    bad = samples[0][0]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for key, parts in samples:
            tar_member(tar, f"{key}.wav", parts["wav"][:-700] if key == bad else parts["wav"])
            tar_member(tar, f"{key}.json", parts["json"])
    index = read_index(wav)
    entry = next(s for s in index["splits"]["train"]["shards"] if s["name"] == shard.name)
    entry.update(bytes=shard.stat().st_size, sha256=sha256_file(shard))
    write_json(wav / "index.json", index, sort_keys=True)
    loader = StreamingLoader(LoaderConfig(shards=[str(wav)], mode="finetune", clip_seconds=2.5, batch_size=3,
                                          num_workers=0, shuffle_buffer=0))
    seen = [k for b in loader for k in b.keys]
    assert f"skipped sample {bad} of shard {shard.name}:" in capsys.readouterr().err
    assert sorted(seen) == sorted(set(corpus_keys(wav)) - {bad}) and loader.stats["bad_samples"] == 1
    assert any(bad in p for p in verify_shards(wav).problems)


def test_unknown_codec_is_one_line(corpus, tmp_path):
    result = CliRunner().invoke(app, ["shard", "build", "folder", "--root", str(corpus), "--out",
                                      str(tmp_path / "x"), "--codec", "ogg"])
    assert result.exit_code == 2 and "unknown audio codec 'ogg'; use one of: flac, wav" in result.output


def test_dali_reads_wav_shards(both):
    pytest.importorskip("nvidia.dali", reason="the `dali` extra is not installed")
    from maeast.loaders.dali import DaliLoader
    kw = dict(mode="finetune", clip_seconds=2.5, random_crop=False)
    cpu = features_by_key(both[1], **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        dali = {k: f for b in DaliLoader(LoaderConfig(shards=[str(both[1])], batch_size=3, num_workers=1,
                                                      shuffle_buffer=0, **kw), device="cpu")
                for k, f in zip(b.keys, b.features)}
    assert sorted(dali) == sorted(cpu)
    assert max((dali[k] - cpu[k]).abs().max().item() for k in cpu) < 1e-4
