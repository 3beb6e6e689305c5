"""Corpus fbank statistics over a small shard folder built by hand from synthesized audio."""

from __future__ import annotations

import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from typer.testing import CliRunner

from maeast.errors import MaeastError
from maeast.features import fbank, get_config
from maeast.features.stats import Moments, corpus_features, corpus_stats, write_stats
from maeast.files import write_json
from maeast.shards.format import (SCHEMA, decode_audio, encode_audio, encode_meta, read_index, sha256_file,
                                  shard_name, tar_member)
from tests.conftest import SENTENCES, pluck, speak


def make_clips(tmp: Path) -> list[np.ndarray]:
    """Four speech clips (espeak-ng, two voices) and three plucked-string chords (sox), 16 kHz mono."""
    clips = []
    for i, text in enumerate(SENTENCES[:4]):
        wav, rate = sf.read(speak(text, tmp / f"s{i}.wav", voice=["en", "en-us+f3"][i % 2]), dtype="float32")
        clips.append(soxr.resample(wav, rate, 16000))
    for i, notes in enumerate([("C4", "E4", "G4"), ("A3", "C4"), ("D3",)]):
        wav, rate = sf.read(pluck(tmp / f"m{i}.wav", notes, seconds=1.0 + 0.5 * i, rate=16000), dtype="float32")
        clips.append(wav)
    return clips


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """index.json plus two train shards (4 + 2 clips) and one valid shard (1 clip)."""
    root = tmp_path_factory.mktemp("shards")
    clips = make_clips(root)
    layout = {"train": [clips[0:4], clips[4:6]], "valid": [clips[6:7]]}
    splits = {}
    for split, shards in layout.items():
        entries = []
        for number, members in enumerate(shards):
            name = shard_name("tiny", split, number)
            with tarfile.open(root / name, "w") as tar:
                for j, wav in enumerate(members):
                    key = f"{split}{number}_{j}"
                    tar_member(tar, f"{key}.flac", encode_audio(wav))
                    tar_member(tar, f"{key}.json", encode_meta({"key": key, "split": split, "num_samples": len(wav)}))
            entries.append({"name": name, "samples": len(members), "bytes": (root / name).stat().st_size,
                            "sha256": sha256_file(root / name)})
        splits[split] = {"samples": sum(e["samples"] for e in entries), "hours": 0.0, "labels": {},
                         "shards": entries}
    write_json(root / "index.json", {"schema": SCHEMA, "corpus": "tiny", "recipe": "hand", "sample_rate": 16000,
                                     "labels": [], "multi_label": False, "splits": splits, "rejects": {"count": 0},
                                     "report": {}, "build": {}}, sort_keys=True)
    stored = [decode_audio(encode_audio(w))[0] for w in clips[:6]]
    return root, stored  # what the train shards hold: the clips after 16-bit FLAC, in order


def direct(clips: list[np.ndarray], preset: str) -> tuple[float, float, int]:
    feats = torch.cat([fbank(torch.from_numpy(w), preset=preset, normalize=False) for w in clips]).double()
    return feats.mean().item(), feats.std(unbiased=False).item(), feats.shape[0]


@pytest.mark.parametrize("preset", ["ssast", "mae_ast"])
def test_stats_match_a_direct_computation(shard_dir, preset):
    root, stored = shard_dir
    stats = corpus_stats(root, preset, "train")
    mean, std, frames = direct(stored, preset)
    assert stats["clips"] == 6 and stats["frames"] == frames and stats["split"] == "train"
    assert math.isclose(stats["mean"], mean, rel_tol=1e-9) and math.isclose(stats["std"], std, rel_tol=1e-9)
    first = corpus_stats(root, preset, "train", max_clips=5)  # crosses into the second shard
    assert first["clips"] == 5 and math.isclose(first["mean"], direct(stored[:5], preset)[0], rel_tol=1e-9)


def test_moments_pool_like_one_pass():
    values = torch.from_numpy(np.random.default_rng(0).normal(3.0, 2.0, 1000))
    moments = Moments()
    for part in values.split([1, 0, 10, 989]):
        moments.add(part)
    assert moments.count == 1000
    assert math.isclose(moments.mean, values.mean().item(), rel_tol=1e-12)
    assert math.isclose(moments.std, values.std(unbiased=False).item(), rel_tol=1e-12)


def test_write_stats_keeps_the_index(shard_dir, tmp_path):
    root, _ = shard_dir
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in root.iterdir():
        if path.suffix in (".tar", ".json"):
            (copy / path.name).write_bytes(path.read_bytes())
    before = read_index(copy)
    write_stats(copy, "ssast", {"mean": -6.0, "std": 3.5, "clips": 6, "frames": 10, "split": "train"})
    write_stats(copy, "mae_ast", {"mean": -7.0, "std": 3.0, "clips": 6, "frames": 10, "split": "train"})
    after = read_index(copy)
    assert set(after["stats"]) == {"ssast", "mae_ast"}
    assert {k: v for k, v in after.items() if k != "stats"} == before
    config = corpus_features(copy, "ssast")
    assert (config.norm_mean, config.norm_std, config.window) == (-6.0, 3.5, get_config("ssast").window)
    assert corpus_features([str(copy)], "mae_ast") == get_config("mae_ast").with_stats(-7.0, 3.0)
    assert corpus_features(root, "ssast") == get_config("ssast")  # no statistics: the preset as it is
    with pytest.raises(MaeastError, match="has no ssast statistics.* run `maeast shard stats .* --preset ssast`") as e:
        corpus_features([copy, root], "ssast")
    assert str(e.value).startswith(f"{root} has no")


def test_corpus_features_pool_folders_by_frames(shard_dir, tmp_path):
    root, _ = shard_dir
    rng = np.random.default_rng(0)
    parts = [rng.normal(-5.0, 3.0, (700, 8)), rng.normal(-2.0, 1.0, (300, 8)), rng.normal(-4.0, 2.0, (5, 8))]
    folders = []
    for i, values in enumerate(parts):
        folders.append(tmp_path / f"c{i}")
        folders[-1].mkdir()
        (folders[-1] / "index.json").write_bytes((root / "index.json").read_bytes())
        write_stats(folders[-1], "ssast", {"mean": values.mean(), "std": values.std(), "clips": 1,
                                           "frames": len(values), "split": "train"})
    config = corpus_features(folders, "ssast")
    whole = np.concatenate(parts)
    assert math.isclose(config.norm_mean, whole.mean(), rel_tol=1e-12)
    assert math.isclose(config.norm_std, whole.std(), rel_tol=1e-12)
    assert corpus_features(folders[2], "ssast").norm_std == parts[2].std()  # one folder: its figures exactly


def test_bad_requests(shard_dir):
    root, _ = shard_dir
    with pytest.raises(MaeastError, match="split 'test' not in"):
        corpus_stats(root, "ssast", "test")
    with pytest.raises(MaeastError, match="max-clips 0"):
        corpus_stats(root, "ssast", "train", max_clips=0)
    with pytest.raises(MaeastError, match="unknown fbank preset"):
        corpus_stats(root, "nope", "train")


def test_cli_writes_stats(shard_dir, tmp_path):
    pytest.importorskip("maeast.cli.shard")
    import maeast.cli.shard_stats  # noqa: F401  registers `maeast shard stats`
    from maeast.cli import app

    root, stored = shard_dir
    copy = tmp_path / "cli"
    copy.mkdir()
    for path in root.iterdir():
        if path.suffix in (".tar", ".json"):
            (copy / path.name).write_bytes(path.read_bytes())
    runner = CliRunner()
    result = runner.invoke(app, ["shard", "stats", str(copy), "--preset", "ssast", "--max-clips", "3"])
    assert result.exit_code == 0, result.output
    written = read_index(copy)["stats"]["ssast"]
    mean, std, frames = direct(stored[:3], "ssast")
    assert written["clips"] == 3 and written["frames"] == frames
    assert math.isclose(written["mean"], mean, rel_tol=1e-9) and math.isclose(written["std"], std, rel_tol=1e-9)
    result = runner.invoke(app, ["shard", "stats", str(copy), "--split", "nope"])
    assert result.exit_code == 2 and "split 'nope' not in" in result.output and "Traceback" not in result.output
