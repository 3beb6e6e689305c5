import numpy as np
import pytest
import soundfile as sf

from maeast.audio import AudioError, load_clip, resample
from maeast.shards.format import decode_audio, encode_audio


def test_resample_keeps_frequency_and_removes_content_above_new_nyquist():
    sr_in, sr_out, seconds = 44100, 16000, 2.0
    t = np.arange(int(sr_in * seconds)) / sr_in
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * t)  # below the new Nyquist: must survive
    alias = 0.5 * np.sin(2 * np.pi * 11000.0 * t)  # above 8 kHz: must be filtered, not folded to 5 kHz
    y = resample((tone + alias).astype(np.float32), sr_in, sr_out)
    assert abs(len(y) - sr_out * seconds) <= 1
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1 / sr_out)
    peak = freqs[np.argmax(spectrum)]
    assert abs(peak - 1000.0) < 2.0
    folded = spectrum[np.abs(freqs - 5000.0) < 20].max()
    assert folded < spectrum.max() * 1e-3, "energy above the new Nyquist aliased into the band"


def test_flac_round_trip_within_16_bit_precision(mixed_folder):
    clip = load_clip(mixed_folder / "speech" / "s0.wav")
    back, sr = decode_audio(encode_audio(clip.waveform))
    assert sr == 16000 and back.shape == clip.waveform.shape
    assert np.max(np.abs(back - clip.waveform)) <= 1.0 / 32768 + 1e-7


def test_stereo_and_rates_become_16k_mono(mixed_folder):
    clip = load_clip(mixed_folder / "speech" / "s2_48k.ogg")
    assert clip.orig_sample_rate == 48000 and clip.orig_channels == 2
    info = sf.info(mixed_folder / "speech" / "s2_48k.ogg")
    assert clip.waveform.ndim == 1
    assert abs(clip.duration - info.duration) < 0.01


@pytest.mark.parametrize("name,reason", [("truncated.wav", "truncated"), ("empty.flac", "empty"),
                                         ("notaudio.ogg", "undecodable"), ("blip.wav", "too short")])
def test_bad_files_give_reasons(mixed_folder, name, reason):
    with pytest.raises(AudioError, match=reason):
        load_clip(mixed_folder / "music" / name, min_seconds=0.1)


def test_segment_cut(mixed_folder):
    full = load_clip(mixed_folder / "music" / "m0.wav")
    part = load_clip(mixed_folder / "music" / "m0.wav", start=0.5, end=1.5)
    assert abs(part.duration - 1.0) < 1e-3
    offset = int(0.5 * 16000)
    np.testing.assert_allclose(part.waveform[1000:5000], full.waveform[offset + 1000:offset + 5000], atol=2e-3)
