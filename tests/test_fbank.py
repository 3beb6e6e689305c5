"""maeast.features.fbank against torchaudio's Kaldi fbank, and its invariants."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from maeast.errors import MaeastError
from maeast.features import AUDIOSET_MEAN, AUDIOSET_STD, PRESETS, FbankConfig, fbank, get_config, num_frames
from tests.fixtures.make_fbank_fixtures import import_kaldi, reference

FIXTURES = Path(__file__).parent / "fixtures" / "fbank"
CLIPS = ("speech", "music", "quiet")
TOLERANCE = 1e-3  # max abs difference from torchaudio, in log-mel units


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "reference.npz") as data:
        return dict(data)


def clip(ref, name: str) -> torch.Tensor:
    return torch.from_numpy(ref[f"wav_{name}"].astype(np.float32) / 32768)  # as soundfile reads 16-bit


def same_length(ref, seconds: float = 0.75) -> torch.Tensor:
    """The three clips cut to one length: [3, N]."""
    return torch.stack([clip(ref, name)[: int(seconds * 16000)] for name in CLIPS])


@pytest.mark.parametrize("preset", ["mae_ast", "ssast"])
@pytest.mark.parametrize("name", CLIPS)
def test_matches_torchaudio_fixtures(ref, preset, name):
    expected = torch.from_numpy(ref[f"{preset}_{name}"])  # raw log-mel from torchaudio
    ours = fbank(clip(ref, name), preset=preset, normalize=False)
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max().item() <= TOLERANCE
    if preset == "ssast":  # and the normalization SSAST applies afterwards
        normalized = fbank(clip(ref, name), preset=preset)
        want = (expected - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
        assert (normalized - want).abs().max().item() <= TOLERANCE


def test_fixtures_record_their_reference():
    meta = json.loads((FIXTURES / "reference.json").read_text())
    assert meta["torchaudio"].startswith("2.")
    assert meta["calls"]["mae_ast"]["num_mel_bins"] == 128 and meta["calls"]["ssast"]["window_type"] == "hanning"
    assert meta["peaks_dbfs"]["quiet"] < -20  # the quiet passage is quiet


def test_matches_torchaudio_directly(ref):
    found = import_kaldi()
    if found is None:
        pytest.skip("torchaudio does not import here: `make test` sets MAEAST_TORCHAUDIO to a scratch install")
    kaldi, _ = found
    for preset in ("mae_ast", "ssast"):
        batch = same_length(ref, 0.5)
        ours = fbank(batch, preset=preset, normalize=False)
        for row, got in zip(batch, ours):
            assert (got - reference(kaldi, preset, row.numpy())).abs().max().item() <= TOLERANCE
    hamming = FbankConfig(name="hamming80", n_mels=80, window="hamming", low_freq=60.0, high_freq=-400.0)
    wav8k = clip(ref, "speech")[::2].contiguous()  # 8 kHz: other window, FFT and bank sizes
    want = kaldi.fbank(wav8k[None], sample_frequency=8000, num_mel_bins=80, window_type="hamming",
                       low_freq=60.0, high_freq=-400.0)
    assert (fbank(wav8k, 8000, hamming) - want).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("preset", ["mae_ast", "ssast"])
def test_batched_equals_one_by_one(ref, preset):
    batch = same_length(ref)  # [3, N]
    together = fbank(batch, preset=preset)
    alone = torch.stack([fbank(row, preset=preset) for row in batch])
    assert together.shape == alone.shape == (3, num_frames(batch.shape[1]), 128)
    assert torch.equal(together, alone)  # on a CPU each row is cut and rounded as when alone


def test_shapes_and_frame_counts(ref):
    speech = clip(ref, "speech")
    config = get_config("mae_ast")
    assert (config.win_length(), config.hop_length(), config.n_fft(), config.n_mels) == (400, 160, 512, 128)
    assert (config.win_length(8000), config.hop_length(8000), config.n_fft(8000)) == (200, 80, 256)
    for n, frames in [(0, 0), (399, 0), (400, 1), (559, 1), (560, 2), (16000, 98), (16001, 98), (20000, 123)]:
        assert num_frames(n) == frames
        assert fbank(speech[:n]).shape == (frames, 128)
        assert fbank(speech[:n].expand(2, n)).shape == (2, frames, 128)
    lengths = torch.tensor([0, 399, 400, 560, 16000])
    assert num_frames(lengths).tolist() == [0, 0, 1, 2, 98]


def test_level_shifts_log_mel(ref):
    """Power spectra scale with the square of the gain: -20 dB is -2 ln 10 in every unfloored bin."""
    music = clip(ref, "music")
    loud, soft = fbank(music), fbank(music * 0.1)
    above_floor = soft > -14  # log(eps) = -15.94 floors the quietest bins
    assert above_floor.float().mean() > 0.8
    assert torch.allclose(soft[above_floor], loud[above_floor] - 2 * np.log(10), atol=1e-3)
    empty = loud.amax(dim=0) < -15  # the one 128-bank triangle that holds no FFT bin sits at log(eps)
    assert empty.sum() == 1 and torch.allclose(loud[:, empty], torch.tensor(np.log(np.finfo(np.float32).eps)))


def test_device_follows_input(ref):
    out = fbank(clip(ref, "speech"))
    assert out.device.type == "cpu" and out.dtype == torch.float32
    assert fbank(clip(ref, "speech").double()).dtype == torch.float32


@pytest.mark.gpu
def test_cuda_matches_cpu(ref):
    batch = same_length(ref)
    for preset in PRESETS:
        on_gpu = fbank(batch.cuda(), preset=preset)
        assert on_gpu.device.type == "cuda"
        assert (on_gpu.cpu() - fbank(batch, preset=preset)).abs().max().item() <= TOLERANCE


def test_dither_off_by_default_and_deterministic_with_a_generator(ref):
    speech = clip(ref, "speech")
    state = torch.get_rng_state()
    assert torch.equal(fbank(speech), fbank(speech))
    assert torch.equal(torch.get_rng_state(), state)  # no hidden draw from the global generator

    def dithered(seed):
        return fbank(speech, dither=1 / 32768, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(dithered(0), dithered(0))
    assert not torch.equal(dithered(0), dithered(1))
    assert not torch.equal(dithered(0), fbank(speech))
    assert torch.equal(torch.get_rng_state(), state)
    loud = fbank(speech) > 0  # one 16-bit step of noise barely moves loud bins
    assert (dithered(0) - fbank(speech))[loud].abs().max() < 0.01
    with pytest.raises(MaeastError, match="torch.Generator"):
        fbank(speech, dither=1e-4)
    with pytest.raises(MaeastError, match="dither -1"):
        fbank(speech, dither=-1.0, generator=torch.Generator())


def test_bad_input_names_the_problem(ref):
    speech = clip(ref, "speech")
    with pytest.raises(MaeastError, match=r"shape \[1, 2, 20000\]"):
        fbank(speech.expand(1, 2, -1))
    with pytest.raises(MaeastError, match="unknown fbank preset 'kaldi'; choose one of: mae_ast, ssast"):
        fbank(speech, preset="kaldi")
    with pytest.raises(MaeastError, match="dtype torch.int16"):
        fbank((speech * 32767).to(torch.int16))
    with pytest.raises(MaeastError, match="int16-scaled"):
        fbank(speech * 32768)
    with pytest.raises(MaeastError, match="peaks at nan"):
        fbank(torch.full((1000,), float("nan")))
    with pytest.raises(MaeastError, match="sample_rate"):
        fbank(speech, sample_rate=0)
    with pytest.raises(MaeastError, match="window 'blackman' unknown"):
        dataclasses.replace(get_config("mae_ast"), window="blackman")
    with pytest.raises(MaeastError, match="both norm_mean and norm_std"):
        FbankConfig(name="half", norm_mean=1.0)


def test_presets_and_stats():
    mae, ssast = get_config("mae_ast"), get_config("ssast")
    assert not mae.normalized and ssast.normalized
    assert (mae.window, ssast.window, ssast.subtract_waveform_mean) == ("povey", "hanning", True)
    mine = ssast.with_stats(-5.0, 3.0)
    assert (mine.norm_mean, mine.norm_std, mine.window) == (-5.0, 3.0, "hanning")
    with pytest.raises(dataclasses.FrozenInstanceError):
        mae.n_mels = 64
