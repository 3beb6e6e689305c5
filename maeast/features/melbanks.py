"""Kaldi's mel filter banks and frame windows, built once per (config, sample rate, device).

The banks are computed in float32 on the CPU with the same sequence of operations as Kaldi's
MelBanks (as ported in torchaudio.compliance.kaldi.get_mel_banks), then moved to the device: at
128 bins the lowest triangles are narrower than one FFT bin, so their few nonzero weights are tiny
and must be rounded exactly as the reference rounds them.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from maeast.errors import MaeastError
from maeast.features.config import FbankConfig


def mel_scale(freq_hz):
    """Kaldi's (HTK's) mel scale: 1127 ln(1 + f / 700). Works on floats and tensors."""
    if isinstance(freq_hz, torch.Tensor):
        return 1127.0 * (1.0 + freq_hz / 700.0).log()
    return 1127.0 * math.log(1.0 + freq_hz / 700.0)


def mel_banks(n_mels: int, n_fft: int, sample_rate: int, low_freq: float, high_freq: float) -> torch.Tensor:
    """Triangular filters on the mel scale: [n_mels, n_fft // 2 + 1] float32 (the Nyquist column is 0).

    Filter m rises linearly in mel from left(m) to center(m) and falls to right(m), the n_mels + 2
    edges being evenly spaced in mel between low_freq and high_freq (<= 0: offset from Nyquist).
    """
    nyquist = 0.5 * sample_rate
    high = high_freq + nyquist if high_freq <= 0.0 else high_freq
    if not (0.0 <= low_freq < nyquist and 0.0 < high <= nyquist and low_freq < high):
        raise MaeastError(f"mel banks {low_freq}-{high} Hz do not fit below Nyquist ({nyquist} Hz) "
                          f"at {sample_rate} Hz; lower low_freq/high_freq or resample the audio")
    mel_low, mel_high = mel_scale(low_freq), mel_scale(high)
    delta = (mel_high - mel_low) / (n_mels + 1)  # python float, as in Kaldi

    # Same operation order and dtypes as the reference, so the float32 rounding is the same.
    index = torch.arange(n_mels, dtype=torch.float32).unsqueeze(1)  # [M, 1]
    left = mel_low + index * delta  # [M, 1] float32
    center = mel_low + (index + 1.0) * delta
    right = mel_low + (index + 2.0) * delta
    fft_mel = mel_scale((sample_rate / n_fft) * torch.arange(n_fft / 2, dtype=torch.float32)).unsqueeze(0)  # [1, K]
    up = (fft_mel - left) / (center - left)  # [M, K]
    down = (right - fft_mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)  # [M, K]
    return torch.nn.functional.pad(banks, (0, 1))  # [M, K + 1]: no weight on the Nyquist bin


def window(kind: str, length: int) -> torch.Tensor:
    """Symmetric frame window [length] float32: povey (hann ** 0.85), hanning or hamming."""
    if kind == "hanning":
        return torch.hann_window(length, periodic=False, dtype=torch.float32)
    if kind == "povey":
        return torch.hann_window(length, periodic=False, dtype=torch.float32).pow(0.85)
    if kind == "hamming":
        return torch.hamming_window(length, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float32)
    raise MaeastError(f"window {kind!r} unknown; use povey, hanning or hamming")


def band_blocks(banks: torch.Tensor, groups: int = 4) -> tuple[tuple[int, int, torch.Tensor], ...]:
    """Split [F, K] banks into groups of neighbouring mel bins, each with the FFT bins it touches.

    Returns ((k0, k1, weights [k1 - k0, F_g]), ...): power[..., k0:k1] @ weights gives the group's
    F_g bins. A triangle spans only a few FFT bins, so at 128 bins the four groups together do
    about a quarter of the multiply-adds of the dense [K] x [F] product.
    """
    blocks = []
    for rows in torch.arange(banks.shape[0]).chunk(groups):
        used = (banks[rows] > 0).any(dim=0).nonzero().flatten()
        k0, k1 = (int(used.min()), int(used.max()) + 1) if used.numel() else (0, 1)
        blocks.append((k0, k1, banks[rows, k0:k1].T.contiguous()))
    return tuple(blocks)


@lru_cache(maxsize=64)
def tables(config: FbankConfig, sample_rate: int, device: torch.device):
    """(window [W], mel bank blocks as band_blocks gives them) for a config and rate, on the device."""
    win = window(config.window, config.win_length(sample_rate))
    banks = mel_banks(config.n_mels, config.n_fft(sample_rate), sample_rate, config.low_freq, config.high_freq)
    return win.to(device), tuple((k0, k1, w.to(device)) for k0, k1, w in band_blocks(banks))
