"""`maeast shard ffcv` and the FFCV loader: precomputed fbanks with the streaming loader's contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from maeast.errors import MaeastError
from maeast.loaders import LoaderConfig, StreamingLoader, build_loader

pytest.importorskip("ffcv", reason="the `ffcv` extra is not installed")
import maeast.cli.shard_ffcv  # noqa: E402,F401  (registers `maeast shard ffcv`)
from maeast.cli import app  # noqa: E402
from tests.conftest import build, corpus_keys, make_corpus  # noqa: E402


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ffcv")
    build(make_corpus(root / "corpus", speech=3, music=3, short=1), root / "shards")
    return root / "shards"


@pytest.fixture(scope="module")
def beton(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("beton") / "train.beton"
    result = CliRunner().invoke(app, ["shard", "ffcv", str(shards), "--split", "train", "--clip-seconds", "2.5",
                                      "--out", str(out), "-j", "2"])
    assert result.exit_code == 0, result.output
    assert "7 clips of 2.5 s" in result.output
    return out


def config(path, **kw) -> LoaderConfig:
    return LoaderConfig(**{**dict(shards=[str(path)], mode="finetune", clip_seconds=2.5, random_crop=False,
                                  batch_size=3, num_workers=1, shuffle_buffer=0), **kw})


def test_beton_holds_the_streaming_loaders_features(shards, beton):
    stream = {k: (b.features[i], b.labels[i], None if b.padding_mask is None else b.padding_mask[i])
              for b in StreamingLoader(config(shards)) for i, k in enumerate(b.keys)}
    loader = build_loader(config(beton, backend="ffcv", shuffle_buffer=100))
    assert loader.labels == ["music", "speech"] and len(loader) == 3
    seen = []
    for b in loader:
        assert b.features.shape[1:] == (248, 128) and b.labels.dtype == torch.int64
        for i, key in enumerate(b.keys):
            feats, label, mask = stream[key]
            assert torch.equal(b.features[i], feats) and b.labels[i] == label
            mask = mask if mask is not None else torch.zeros(248, dtype=torch.bool)
            assert torch.equal(b.padding_mask[i] if b.padding_mask is not None else torch.zeros_like(mask), mask)
        seen += b.keys
    assert sorted(seen) == corpus_keys(shards)


@pytest.mark.slow
def test_ffcv_resume_and_epochs(beton):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = config(beton, backend="ffcv", shuffle_buffer=100, batch_size=2, num_workers=64)
    reference = [b.keys for b in build_loader(cfg)]
    assert torch.get_num_threads() == 1  # ffcv sets torch's threads to its own count; the loader puts them back
    torch.set_num_threads(threads)
    first = build_loader(cfg)
    it = iter(first)
    head = [next(it).keys, next(it).keys]
    del it
    resumed = build_loader(cfg)
    resumed.load_state_dict(first.state_dict())
    assert head + [b.keys for b in resumed] == reference
    assert resumed.epoch == 1 and [b.keys for b in resumed] != reference  # epoch 1 is reshuffled


def test_ffcv_ranks_get_equal_disjoint_shares(beton):
    runs = [[k for b in build_loader(config(beton, backend="ffcv"), rank=r, world_size=2) for k in b.keys]
            for r in range(2)]
    assert len(runs[0]) == len(runs[1]) == 3 and not set(runs[0]) & set(runs[1])


def test_ffcv_refuses_mismatched_config(beton, shards):
    with pytest.raises(MaeastError, match="holds 2.5 s clips"):
        build_loader(config(beton, backend="ffcv", clip_seconds=1.0))
    with pytest.raises(MaeastError, match="holds fixed-length precomputed fbanks for fine-tuning"):
        LoaderConfig(shards=[str(beton)], backend="ffcv")
    result = CliRunner().invoke(app, ["shard", "ffcv", str(shards), "--split", "test"])
    assert result.exit_code == 2 and "split 'test' not in" in result.output
