"""The webdataset loader: batch contract, lengths, labels, ranks, mixing, reproducibility.

The corpus helpers (make_corpus, build, corpus_keys) live in tests/conftest.py, shared with the other
loader tests.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf
import torch

from maeast.errors import MaeastError
from maeast.features import fbank, get_config
from maeast.loaders import LoaderConfig, StreamingLoader, build_loader
from maeast.shards.build import build_shards
from maeast.shards.format import decode_audio, iter_tar, shard_paths
from tests.conftest import build, corpus_keys, make_corpus, pluck, speak


def run(loader) -> list:
    return list(loader)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loader")
    build(make_corpus(root / "corpus", short=2), root / "shards")
    return root / "shards"


def cfg(shards, **kw) -> LoaderConfig:
    base = dict(shards=[str(shards)], batch_size=3, num_workers=2, shuffle_buffer=4, min_seconds=1.5)
    return LoaderConfig(**{**base, **kw})


def test_pretrain_batches_are_cropped_to_the_shortest_clip(shards):
    loader = StreamingLoader(cfg(shards, max_seconds=2.2))
    durations = {json.loads(p["json"])["key"]: json.loads(p["json"])["num_samples"]
                 for path in shard_paths(shards, "train") for _, p in iter_tar(path)}
    seen = []
    for batch in loader:
        assert batch.features.dtype == torch.float32 and batch.features.shape[2] == 128
        assert batch.padding_mask is None and batch.labels is None
        shortest = min(min(durations[k] for k in batch.keys), round(2.2 * 16000))
        assert batch.features.shape[1] == (shortest - 400) // 160 + 1
        assert torch.isfinite(batch.features).all()
        seen += batch.keys
    # the two one-word clips are under min_seconds (1.5 s, a multiple of 0.5 s): index.json counts them
    # per shard, so the epoch is exactly one pass over the rest, each clip once
    assert sorted(seen) == sorted(set(corpus_keys(shards)) - {"speech-w0", "speech-w1"})
    assert loader.stats["short"] == 2 and loader.stats["wrapped_passes"] == 0


def test_min_seconds_off_the_grid_fills_the_epoch(shards):
    loader = StreamingLoader(cfg(shards, min_seconds=2.1, num_workers=1))  # index counts clips under 2.0 s only
    batches = [batch.keys for batch in loader]
    durations = {json.loads(p["json"])["key"]: json.loads(p["json"])["num_samples"]
                 for path in shard_paths(shards, "train") for _, p in iter_tar(path)}
    long_enough = {k for k, n in durations.items() if n >= round(2.1 * 16000)}
    assert {k for keys in batches for k in keys} == long_enough  # every usable clip, none short
    # the epoch length comes from the clips of at least 2.0 s (an upper bound), so it may wrap
    assert len(batches) == -(-sum(1 for n in durations.values() if n >= 2 * 16000) // 3)


def test_finetune_pads_masks_and_labels(shards):
    loader = StreamingLoader(cfg(shards, mode="finetune", clip_seconds=3.0, random_crop=False, shuffle_buffer=0))
    assert loader.labels == ["music", "speech"] and not loader.multi_label
    audio = {k: (decode_audio(p["flac"])[0], json.loads(p["json"])) for path in shard_paths(shards, "train")
             for k, p in iter_tar(path)}
    keys = []
    for batch in loader:
        assert batch.features.shape[1:] == (298, 128) and batch.labels.dtype == torch.int64
        for i, key in enumerate(batch.keys):
            wav, meta = audio[key]
            assert batch.labels[i].item() == meta["label_ids"][0]
            t = min((len(wav) - 400) // 160 + 1, 298)
            expect = fbank(torch.from_numpy(wav[:48000]))
            assert torch.allclose(batch.features[i, :t], expect[:t], atol=1e-4)
            if batch.padding_mask is not None:
                assert batch.padding_mask[i].sum().item() == 298 - t
                assert (batch.features[i, t:] == 0).all()
            else:
                assert t == 298
        keys += batch.keys
    assert sorted(keys) == corpus_keys(shards)  # fine-tuning keeps short clips


def test_a_feature_config_replaces_the_preset(shards):
    # features= reaches the worker processes (a pickled FbankConfig): the fbank normalized, (x - m) / (2 s)
    kw = dict(mode="finetune", clip_seconds=2.0, random_crop=False, shuffle_buffer=0)
    m, s = -3.5, 2.5
    plain = run(StreamingLoader(cfg(shards, **kw)))
    normalized = run(StreamingLoader(cfg(shards, **kw), features=get_config("mae_ast").with_stats(m, s)))
    assert [b.keys for b in plain] == [b.keys for b in normalized] and len(plain) > 1
    for a, b in zip(plain, normalized):
        assert (a.padding_mask is None) == (b.padding_mask is None)
        real = ~a.padding_mask if a.padding_mask is not None else torch.ones(a.features.shape[:2], dtype=torch.bool)
        assert torch.allclose(b.features[real], (a.features[real] - m) / (2 * s), atol=1e-5)
        assert (b.features[~real] == 0).all()


def test_multi_label_is_multi_hot(tmp_path, shards):
    corpus = tmp_path / "audio"
    corpus.mkdir()
    rows = []
    for i, (text, labels) in enumerate([("hello there", "speech,voice"), ("good morning", "speech"),
                                        ("the five boxing wizards", "voice")]):
        wav = speak(text, corpus / f"v{i}.wav")
        rows.append(f"v{i}.wav\t{sf.info(wav).frames}\t{labels}")
    pluck(corpus / "p.wav", ("C4",), rate=16000)
    rows.append(f"p.wav\t{sf.info(corpus / 'p.wav').frames}\tmusic")
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "train.tsv").write_text(f"{corpus}\n" + "\n".join(rows) + "\n")
    build_shards("tsv", tmp_path / "manifests", tmp_path / "shards", shard_size_mb=0.05)
    loader = StreamingLoader(cfg(tmp_path / "shards", mode="finetune", clip_seconds=1.0, num_workers=1, batch_size=4))
    assert loader.multi_label and loader.labels == ["music", "speech", "voice"]
    (batch,) = run(loader)
    hot = dict(zip(batch.keys, batch.labels.tolist()))
    assert batch.labels.dtype == torch.float32 and batch.labels.shape == (4, 3)
    assert hot == {"v0": [0, 1, 1], "v1": [0, 1, 0], "v2": [0, 0, 1], "p": [1, 0, 0]}


def test_ranks_get_equal_batches_and_disjoint_clips(shards):
    runs = [StreamingLoader(cfg(shards, min_seconds=0.0), rank=r, world_size=2) for r in range(2)]
    assert len(runs[0]) == len(runs[1])
    batches = [run(loader) for loader in runs]
    assert len(batches[0]) == len(batches[1]) == len(runs[0])
    keys = [[k for b in rank_batches for k in b.keys] for rank_batches in batches]
    assert not set(keys[0]) & set(keys[1])
    assert set(keys[0]) | set(keys[1]) <= set(corpus_keys(shards))


def test_fixed_epoch_length_wraps_around(shards):
    loader = StreamingLoader(cfg(shards, epoch_batches=7, min_seconds=0.0))
    batches = run(loader)
    assert len(batches) == len(loader) == 7 and loader.epoch == 1
    counts = Counter(k for b in batches for k in b.keys)
    assert set(counts) == set(corpus_keys(shards)) and max(counts.values()) == 2
    assert loader.stats["wrapped_passes"] >= 1


def test_too_few_shards_is_one_line(shards):
    n = len(shard_paths(shards, "train"))
    assert n < 16
    with pytest.raises(MaeastError, match=rf"has {n} shard\(s\) but 4 rank\(s\) x 4 worker\(s\) need at least 16"):
        StreamingLoader(cfg(shards, num_workers=4), rank=0, world_size=4)


def test_same_seed_same_batches_other_seed_other_order(shards):
    def fingerprint(seed):
        return [(b.keys, b.features.sum().item()) for b in StreamingLoader(cfg(shards, seed=seed))]
    assert fingerprint(3) == fingerprint(3)
    assert [k for k, _ in fingerprint(3)] != [k for k, _ in fingerprint(4)]


def test_epochs_reshuffle(shards):
    loader = StreamingLoader(cfg(shards, min_seconds=0.0))
    first = [b.keys for b in loader]
    second = [b.keys for b in loader]
    assert loader.epoch == 2 and first != second
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == corpus_keys(shards)


def test_mixing_weights(tmp_path, shards):
    other = tmp_path / "other"
    build(make_corpus(tmp_path / "c2", speech=4, music=0), other)
    loader = StreamingLoader(LoaderConfig(shards=[str(shards), str(other)], weights=[0.0, 1.0], batch_size=2,
                                          num_workers=2, min_seconds=0.0, epoch_batches=6))
    keys = [k for b in loader for k in b.keys]
    assert len(keys) == 12 and set(keys) == set(corpus_keys(other))
    mixed = StreamingLoader(LoaderConfig(shards=[str(shards), str(other)], batch_size=2, num_workers=2,
                                         min_seconds=0.0))
    assert len(mixed) >= (14 + 4) // 2 and sum(mixed.quotas()) == len(mixed)
    seen = [k for b in mixed for k in b.keys]
    assert set(seen) & set(corpus_keys(other)) and set(seen) & set(corpus_keys(shards))


@pytest.mark.parametrize("field,value,message", [
    ("batch_size", 0, "batch_size 0 must be an integer >= 1"),
    ("mode", "train", "mode 'train' unknown"),
    ("on_error", "ignore", "on_error 'ignore' unknown"),
    ("min_seconds", 20.0, "min_seconds 20.0 must be in"),
    ("weights", [1.0, 2.0], "2 weights for 1 shard folders"),
    ("fbank", "mfcc", "unknown fbank preset 'mfcc'"),
])
def test_config_is_checked(shards, field, value, message):
    with pytest.raises(MaeastError, match=message):
        cfg(shards, **{field: value})
    with pytest.raises(MaeastError, match="finetune mode needs clip_seconds"):
        LoaderConfig(shards=[str(shards)], mode="finetune")


def test_missing_split_and_folder(shards, tmp_path):
    with pytest.raises(MaeastError, match="split 'valid' not in"):
        build_loader(cfg(shards, split="valid"))
    with pytest.raises(MaeastError, match="no index.json"):
        build_loader(cfg(tmp_path))


def test_decoding_a_window_equals_slicing_the_whole_clip(shards):
    from maeast.loaders.stream import Errors, Sample, decode_window
    errors = Errors("fail")
    gen = torch.Generator().manual_seed(0)
    for path in shard_paths(shards, "train")[:4]:
        for key, parts in iter_tar(path):
            whole, _ = decode_audio(parts["flac"])
            sample = Sample(key, parts["flac"], json.loads(parts["json"]))
            for _ in range(3):
                size = int(torch.randint(400, len(whole) + 1, (1,), generator=gen))
                start = int(torch.randint(0, len(whole) - size + 1, (1,), generator=gen))
                window = decode_window(sample, start, size, 16000, errors)
                assert torch.equal(window, torch.from_numpy(whole[start: start + size])), (key, start, size)


def test_fbank_on_device_yields_waveforms_whose_features_match_the_loaders(shards):
    """fbank_on device: the workers hand over cropped waveforms; Batch.to computes the very features the
    workers would have (the same featurize, here on the CPU), for the same keys in the same order."""
    by_loader = run(StreamingLoader(cfg(shards, max_seconds=2.2)))
    by_device = run(StreamingLoader(cfg(shards, max_seconds=2.2, fbank_on="device")))
    assert [b.keys for b in by_device] == [b.keys for b in by_loader]
    for raw, done in zip(by_device, by_loader):
        assert raw.features is None and raw.waveform.shape == (len(raw), raw.lengths.max()) and len(raw) == len(done)
        moved = raw.to("cpu")
        assert torch.equal(moved.features, done.features) and moved.padding_mask is None and moved.labels is None


def test_fbank_on_device_is_for_the_stream_backend(shards):
    with pytest.raises(MaeastError, match="fbank_on device serves the stream backend"):
        cfg(shards, backend="dali", fbank_on="device")
    with pytest.raises(MaeastError, match="fbank_on"):
        cfg(shards, fbank_on="gpu")


def test_finetune_fbank_on_device_carries_labels(shards):
    """Fine-tuning with fbank_on device (SSAST's waveform mixup): the waveforms come with their labels, and
    Batch.to gives the features, mask and labels the workers would have."""
    kw = dict(mode="finetune", clip_seconds=1.0, random_crop=False, shuffle_buffer=0)
    by_loader = run(StreamingLoader(cfg(shards, **kw)))
    by_device = run(StreamingLoader(cfg(shards, fbank_on="device", **kw)))
    assert [b.keys for b in by_device] == [b.keys for b in by_loader]
    for raw, done in zip(by_device, by_loader):
        moved = raw.to("cpu")
        assert raw.features is None and torch.equal(raw.labels, done.labels)
        assert torch.equal(moved.features, done.features) and torch.equal(moved.labels, done.labels)
