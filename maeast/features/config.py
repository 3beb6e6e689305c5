"""Fbank presets: one frozen dataclass per feature recipe, chosen from a small registry by name.

Everything downstream (loaders, patch grids, the model) reads the geometry from here
(`config.n_mels`, `config.hop_length()`, `config.num_frames(n)`) instead of hard-coding 128 or 160.

The fixed Kaldi choices that no preset changes: frames that do not fit are snipped (Kaldi's
`snip_edges=True`), each frame is zero-padded to the next power of two for the FFT, the power
spectrum (not the magnitude) is summed by the mel banks, and the log is floored at float32's
epsilon. Kaldi's `htk_compat` only moves the energy column, and no preset appends energy, so it
has no field here: SSAST passes `htk_compat=True` and gets exactly the features of `ssast` below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from maeast.errors import MaeastError
from maeast.shards.format import SAMPLE_RATE

WINDOWS = ("povey", "hanning", "hamming")

# AudioSet statistics of the AST/SSAST raw log-mel (the --dataset_mean/--dataset_std defaults of
# YuanGongND/ast and YuanGongND/ssast, also in Hugging Face's ASTFeatureExtractor).
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974
# ESC-50's and Speech Commands v2's, as YuanGongND/ssast's run scripts pass them (dataset_mean, dataset_std in
# src/finetune/esc50/run_esc_patch.sh and src/finetune/speechcommands_v2_35/run_sc.sh).
ESC50_MEAN, ESC50_STD = -6.6268077, 5.358466
SPEECHCOMMANDS_MEAN, SPEECHCOMMANDS_STD = -6.845978, 5.5654526


@dataclass(frozen=True)
class FbankConfig:
    """How to turn a float waveform in [-1, 1] into a [frames, n_mels] log-mel fbank."""

    name: str
    """Registry name, recorded with statistics (index.json "stats") and in run configs."""
    n_mels: int = 128
    """Triangular mel bins (Kaldi's num_mel_bins): the feature dimension F."""
    window: str = "povey"
    """Frame window: "povey" (Kaldi's default, hann ** 0.85), "hanning" or "hamming" (symmetric)."""
    frame_length_ms: float = 25.0
    """Frame length in milliseconds: 400 samples at 16 kHz."""
    frame_shift_ms: float = 10.0
    """Frame shift in milliseconds: 160 samples at 16 kHz, so 100 frames per second."""
    preemphasis: float = 0.97
    """Per-frame pre-emphasis x[i] - a * x[i-1] (x[-1] := x[0]); 0 turns it off."""
    remove_dc_offset: bool = True
    """Subtract each frame's mean before pre-emphasis."""
    low_freq: float = 20.0
    """Lowest edge of the mel banks, Hz."""
    high_freq: float = 0.0
    """Highest edge of the mel banks, Hz; <= 0 means that much below Nyquist (0: Nyquist)."""
    subtract_waveform_mean: bool = False
    """Subtract the whole clip's mean from the waveform first (SSAST's loader does)."""
    norm_mean: float | None = None
    """Dataset mean of the raw log-mel; with norm_std, features become (x - mean) / (2 * std)."""
    norm_std: float | None = None
    """Dataset standard deviation of the raw log-mel (see norm_mean)."""
    target_frames: int | None = None
    """SSAST's --target_length: `featurize` cuts each clip's fbank to its first target_frames frames or pads
    it with zero frames of raw log-mel (after normalization: `pad_value`), and the model sees them (no
    padding mask). None: no fixed length (frames past a clip's end are masked out instead)."""

    def __post_init__(self):
        if not self.name:
            raise MaeastError("FbankConfig needs a name")
        if self.n_mels <= 3:
            raise MaeastError(f"fbank {self.name}: n_mels={self.n_mels} must be more than 3")
        if self.window not in WINDOWS:
            raise MaeastError(f"fbank {self.name}: window {self.window!r} unknown; use one of {', '.join(WINDOWS)}")
        if not (0 < self.frame_shift_ms and 0 < self.frame_length_ms):
            raise MaeastError(f"fbank {self.name}: frame length and shift must be positive milliseconds")
        if not 0.0 <= self.preemphasis <= 1.0:
            raise MaeastError(f"fbank {self.name}: preemphasis {self.preemphasis} must be in [0, 1]")
        if self.low_freq < 0:
            raise MaeastError(f"fbank {self.name}: low_freq {self.low_freq} must be >= 0 Hz")
        if (self.norm_mean is None) != (self.norm_std is None):
            raise MaeastError(f"fbank {self.name}: give both norm_mean and norm_std, or neither")
        if self.norm_std is not None and not self.norm_std > 0:
            raise MaeastError(f"fbank {self.name}: norm_std {self.norm_std} must be positive")
        if self.target_frames is not None and (not isinstance(self.target_frames, int) or self.target_frames < 1):
            raise MaeastError(f"fbank {self.name}: target_frames {self.target_frames!r} must be a positive integer "
                              f"(or null: no fixed length)")

    # Geometry in samples, for a sample rate (16 kHz unless told).
    def win_length(self, sample_rate: int = SAMPLE_RATE) -> int:
        """Samples per frame (Kaldi truncates: int(rate * ms / 1000))."""
        return int(sample_rate * self.frame_length_ms * 0.001)

    def hop_length(self, sample_rate: int = SAMPLE_RATE) -> int:
        """Samples between frame starts."""
        return int(sample_rate * self.frame_shift_ms * 0.001)

    def n_fft(self, sample_rate: int = SAMPLE_RATE) -> int:
        """FFT size: the frame length rounded up to a power of two (512 at 16 kHz)."""
        return 1 << (self.win_length(sample_rate) - 1).bit_length()

    def num_frames(self, num_samples, sample_rate: int = SAMPLE_RATE):
        """Frames that fit in num_samples (an int, or an int tensor of lengths for padding masks)."""
        win, hop = self.win_length(sample_rate), self.hop_length(sample_rate)
        if isinstance(num_samples, torch.Tensor):
            return torch.clamp((num_samples - win) // hop + 1, min=0)
        return max(0, (int(num_samples) - win) // hop + 1)

    @property
    def normalized(self) -> bool:
        """Whether fbank(..., normalize=True) applies (x - mean) / (2 * std)."""
        return self.norm_mean is not None

    @property
    def pad_value(self) -> float:
        """What a zero cell of raw log-mel becomes (SSAST's padding frames and SpecAugment masks are zeros
        before its normalization): -mean / (2 * std) with dataset statistics, else 0."""
        return -self.norm_mean / (2.0 * self.norm_std) if self.normalized else 0.0

    def with_stats(self, mean: float, std: float) -> "FbankConfig":
        """The same recipe normalized with other dataset statistics (e.g. from `maeast shard stats`)."""
        return dataclasses.replace(self, norm_mean=float(mean), norm_std=float(std))


PRESETS: dict[str, FbankConfig] = {
    # The official MAE-AST features (AlanBaade/MAE-AST-Public, mae_ast/data/mae_ast_dataset.py):
    # soundfile's float waveform in [-1, 1], unscaled, into torchaudio's kaldi.fbank with
    # use_energy=False, num_mel_bins=128 and every other option at its default (povey window,
    # dither 0, htk_compat off). No dataset statistics: the model normalizes with a BatchNorm
    # without affine, times 0.5.
    "mae_ast": FbankConfig(name="mae_ast", n_mels=128, window="povey"),
    # SSAST / AST (YuanGongND/ssast, src/dataloader.py): the clip's mean removed, hanning window,
    # htk_compat=True (no effect without energy), then (x - mean) / (2 * std), AudioSet's figures.
    "ssast": FbankConfig(name="ssast", n_mels=128, window="hanning", subtract_waveform_mean=True,
                         norm_mean=AUDIOSET_MEAN, norm_std=AUDIOSET_STD),
}
# SSAST's input pipeline per task (maeast.finetune.inputs): the ssast recipe with the task's statistics
# and fixed length, from YuanGongND/ssast's run scripts (--dataset_mean, --dataset_std, --target_length):
# src/finetune/audioset/run_as.sh (AudioSet-20K and the full set), src/finetune/esc50/run_esc_patch.sh
# and run_esc_frame.sh (ESC-50), src/finetune/speechcommands_v2_35/run_sc.sh (Speech Commands v2).
for _name, _mean, _std, _frames in (("ssast_audioset", AUDIOSET_MEAN, AUDIOSET_STD, 1024),
                                    ("ssast_esc50", ESC50_MEAN, ESC50_STD, 512),
                                    ("ssast_speechcommands", SPEECHCOMMANDS_MEAN, SPEECHCOMMANDS_STD, 128)):
    PRESETS[_name] = dataclasses.replace(PRESETS["ssast"], name=_name, norm_mean=_mean, norm_std=_std,
                                         target_frames=_frames)


def get_config(preset: str | FbankConfig) -> FbankConfig:
    """A preset by name (or a config passed through)."""
    if isinstance(preset, FbankConfig):
        return preset
    if preset not in PRESETS:
        raise MaeastError(f"unknown fbank preset {preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return PRESETS[preset]


def num_frames(num_samples, sample_rate: int = SAMPLE_RATE, preset: str | FbankConfig = "mae_ast"):
    """Fbank frames for num_samples samples (int or int tensor): 1 + (n - 400) // 160 at 16 kHz, 0 if n < 400."""
    return get_config(preset).num_frames(num_samples, sample_rate)
