"""Reading audio files: decode, cut a segment, downmix to mono, resample with soxr.

soundfile (libsndfile) reads wav, flac, ogg/vorbis, opus and mp3; containers such as mkv, m4a and
mp4 (common in AudioSet and VoxCeleb copies) go through torchcodec, the `ffmpeg` extra.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from maeast.errors import MaeastError

FFMPEG_SUFFIXES = {".mkv", ".m4a", ".mp4", ".webm", ".aac", ".opus"}


class AudioError(Exception):
    """A file that cannot be used as a clip; the message is the reject reason."""


@dataclass
class Clip:
    waveform: np.ndarray  # [N] float32 mono in [-1, 1] at `sample_rate`
    sample_rate: int
    orig_sample_rate: int
    orig_channels: int

    @property
    def duration(self) -> float:
        return len(self.waveform) / self.sample_rate


_WAV_DATA = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.M)


def _check_wav_complete(f: sf.SoundFile) -> None:
    """libsndfile quietly shortens a truncated WAV; its header still tells the length written."""
    found = _WAV_DATA.search(f.extra_info)
    if found:
        declared, present = int(found.group(1)), int(found.group(2))
        if present < declared < 0xFFFFFF00:  # streamed WAVs declare 0xFFFFFFFF: not truncation
            raise AudioError(f"truncated: data chunk declares {declared} bytes, file holds {present}")


def _read_soundfile(path: Path, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    with sf.SoundFile(str(path)) as f:
        if f.format in ("WAV", "WAVEX", "RF64"):
            _check_wav_complete(f)
        sr = f.samplerate
        first = int(round((start or 0.0) * sr))
        last = f.frames if end is None else min(f.frames, int(round(end * sr)))
        if first > 0:
            f.seek(first)
        data = f.read(max(last - first, 0), dtype="float32", always_2d=True)  # [N, C]
    return data.T, sr


def _read_torchcodec(path: Path, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    try:
        from torchcodec.decoders import AudioDecoder
    except ImportError:
        raise MaeastError(f"{path.suffix} files need the ffmpeg extra: pip install 'maeast[ffmpeg]' "
                          "and Debian's ffmpeg") from None
    decoder = AudioDecoder(str(path))
    if start is None and end is None:
        samples = decoder.get_all_samples()
    else:
        samples = decoder.get_samples_played_in_range(start or 0.0, end)
    return samples.data.numpy().astype(np.float32, copy=False), int(samples.sample_rate)


def read_audio(path: Path, start: float | None = None, end: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a file (or the [start, end) seconds of it) to float32 [channels, N] and its rate.

    Raises AudioError with a short reason for anything that cannot be decoded.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise AudioError("empty: 0-byte file")
    try:
        if path.suffix.lower() in FFMPEG_SUFFIXES and path.suffix.lower() not in sf.available_formats():
            return _read_torchcodec(path, start, end)
        try:
            return _read_soundfile(path, start, end)
        except sf.LibsndfileError:
            if path.suffix.lower() in FFMPEG_SUFFIXES:
                return _read_torchcodec(path, start, end)
            raise
    except (AudioError, MaeastError):
        raise
    except Exception as e:  # decoders raise many types; each one is a reject reason
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AudioError(f"undecodable: {reason}") from None


def to_mono(audio: np.ndarray) -> np.ndarray:
    """[C, N] -> [N] by averaging channels."""
    return audio.mean(axis=0) if audio.shape[0] > 1 else audio[0]


def resample(waveform: np.ndarray, orig_sr: int, sample_rate: int) -> np.ndarray:
    """Band-limited resampling (soxr, very high quality); a no-op at the same rate."""
    if orig_sr == sample_rate:
        return waveform
    return soxr.resample(waveform, orig_sr, sample_rate, quality="VHQ").astype(np.float32, copy=False)


def load_clip(path: Path, sample_rate: int = 16000, start: float | None = None, end: float | None = None,
              min_seconds: float = 0.0) -> Clip:
    """Read a file as a mono clip at `sample_rate`, checking that it is usable audio.

    Raises AudioError for empty, too short, non-finite or all-zero (digital silence) audio.
    """
    audio, orig_sr = read_audio(path, start, end)
    channels, frames = audio.shape
    if frames == 0:
        raise AudioError("empty: no samples")
    if not np.isfinite(audio).all():
        raise AudioError("non-finite samples")
    if frames / orig_sr < min_seconds:
        raise AudioError(f"too short: {frames / orig_sr:.3f} s < {min_seconds} s")
    if not np.any(audio):
        raise AudioError("silent: every sample is zero")
    waveform = resample(to_mono(audio), orig_sr, sample_rate)
    return Clip(np.ascontiguousarray(waveform, dtype=np.float32), sample_rate, orig_sr, channels)
