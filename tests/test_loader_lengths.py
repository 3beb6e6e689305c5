"""Invariants of the pure length functions every loader shares (maeast.loaders.lengths)."""

from __future__ import annotations

import random

import soundfile as sf
import soxr
import torch

from maeast.features import fbank
from maeast.loaders import lengths
from maeast.shards.format import decode_audio, encode_audio
from tests.conftest import pluck, speak


def clips(tmp_path) -> list[torch.Tensor]:
    """Three real clips of different lengths at 16 kHz."""
    paths = [speak("one two three", tmp_path / "a.wav"), pluck(tmp_path / "b.wav", ("C4",), seconds=1.3, rate=16000),
             speak("the quick brown fox jumps over the lazy dog", tmp_path / "c.wav", speed=200)]
    out = []
    for p in paths:
        wav, sr = sf.read(str(p), dtype="float32")
        if sr != 16000:  # espeak-ng writes 22050 Hz
            wav = soxr.resample(wav, sr, 16000).astype("float32")
        out.append(torch.from_numpy(decode_audio(encode_audio(wav))[0]))
    return out


def test_crop_keeps_a_contiguous_window_and_pads_with_zeros(tmp_path):
    waves = clips(tmp_path)
    wave, lens = lengths.stack(waves)
    g = torch.Generator().manual_seed(0)
    size = 20000
    out, kept = lengths.crop(wave, lens, size, True, g)
    assert out.shape == (3, size) and kept.tolist() == [min(len(w), size) for w in waves]
    for row, w in zip(out, waves):
        if len(w) >= size:
            starts = [s for s in range(len(w) - size + 1) if torch.equal(w[s:s + size], row)]
            assert starts, "the crop is not a window of the clip"
        else:
            assert torch.equal(row[: len(w)], w) and (row[len(w):] == 0).all()
    again, _ = lengths.crop(wave, lens, size, True, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    start, _ = lengths.crop(wave, lens, size, False, None)
    assert all(torch.equal(start[i, : min(len(w), size)], w[:size]) for i, w in enumerate(waves))


def test_random_offsets_cover_the_clip():
    wave = torch.arange(1000, dtype=torch.float32).unsqueeze(0).repeat(64, 1) / 1000
    out, _ = lengths.crop(wave, torch.full((64,), 1000), 990, True, torch.Generator().manual_seed(1))
    starts = set((out[:, 0] * 1000).round().long().tolist())
    assert starts <= set(range(11)) and len(starts) >= 8


def test_featurize_padded_rows_equal_each_clip_alone(tmp_path):
    waves = clips(tmp_path)
    wave, lens = lengths.stack(waves)
    feats, mask = lengths.featurize(wave, lens, "mae_ast", 16000)
    assert feats.shape[:2] == mask.shape == (3, (wave.shape[1] - 400) // 160 + 1)
    for i, w in enumerate(waves):
        alone = fbank(w)
        t = alone.shape[0]
        assert torch.equal(feats[i, :t], alone)
        assert not mask[i, :t].any() and mask[i, t:].all() and (feats[i, t:] == 0).all()
    same, none = lengths.featurize(wave[:, :16000], torch.full((3,), 16000), "mae_ast", 16000)
    assert none is None and torch.equal(same, fbank(wave[:, :16000]))


def test_bucket_batches_each_item_once_and_groups_lengths():
    rng = random.Random(0)
    items = [rng.randint(1, 1000) for _ in range(103)]
    batches = list(lengths.bucket(iter(items), lambda x: x, 4, 5, random.Random(1)))
    assert sorted(x for b in batches for x in b) == sorted(items)
    assert [len(b) for b in batches].count(4) == 25 and len(batches) == 26
    spread = sum(max(b) - min(b) for b in batches) / len(batches)
    plain = list(lengths.bucket(iter(items), lambda x: x, 4, 1, random.Random(1)))
    assert spread < sum(max(b) - min(b) for b in plain) / len(plain) / 3
    dropped = lengths.bucket(iter(items), lambda x: x, 4, 5, random.Random(1), drop_last=True)
    assert [len(b) for b in dropped] == [4] * 25


def test_labels():
    assert lengths.labels_tensor([[2], [0]], 3, False).tolist() == [2, 0]
    hot = lengths.labels_tensor([[0, 2], [], [1]], 3, True)
    assert hot.dtype == torch.float32 and hot.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
