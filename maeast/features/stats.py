"""Corpus statistics of the raw log-mel: the mean and std that presets like ssast normalize with.

`corpus_stats` reads a split's shards, computes each clip's raw fbank (normalize=False) and pools
every frame and bin into one mean and one (population) standard deviation, in float64;
`write_stats` records them in the shard folder's index.json under "stats", keyed by preset:

    "stats": {"ssast": {"mean": -4.27, "std": 4.57, "clips": 1000, "frames": 998000, "split": "train"}}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from maeast.errors import MaeastError
from maeast.features.config import FbankConfig, get_config
from maeast.features.fbank import fbank
from maeast.shards.format import INDEX, audio_part, decode_audio, iter_tar, read_index, shard_paths
from maeast.shards.sink import Sink
from maeast.shards.storage import join


@dataclass
class Moments:
    """Count, mean and sum of squared deviations of a stream of values (Chan et al.'s pooled update)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: torch.Tensor) -> None:
        """Pool in every element of a tensor, computed in float64."""
        n = values.numel()
        if n == 0:
            return
        values = values.detach().to(torch.float64)
        mean = float(values.mean())
        m2 = float((values - mean).square().sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        """Population standard deviation (over all values seen)."""
        return math.sqrt(self.m2 / self.count) if self.count else float("nan")


def corpus_stats(shard_dir: Path, preset: str | FbankConfig = "ssast", split: str = "train",
                 max_clips: int | None = None, on_clip: Callable[[], None] | None = None) -> dict:
    """Raw log-mel mean and std of a split (its first max_clips clips, in shard order).

    Returns {"mean", "std", "clips", "frames", "split"}; frames counts fbank frames (each of
    config.n_mels values). on_clip is called after each clip, for progress bars.
    """
    config = get_config(preset)
    if max_clips is not None and max_clips < 1:
        raise MaeastError(f"--max-clips {max_clips} must be at least 1 (or left out for every clip)")
    moments, clips, frames = Moments(), 0, 0
    for wav, rate in islice(_clips(shard_dir, split), max_clips):
        feats = fbank(torch.from_numpy(wav), rate, config, normalize=False)  # [T, F]
        moments.add(feats)
        clips, frames = clips + 1, frames + feats.shape[0]
        if on_clip is not None:
            on_clip()
    if frames == 0:
        raise MaeastError(f"split {split!r} of {shard_dir} gave no fbank frames ({clips} clips, all shorter "
                          f"than {config.frame_length_ms:g} ms?); statistics need audio")
    return {"mean": moments.mean, "std": moments.std, "clips": clips, "frames": frames, "split": split}


def _clips(shard_dir: Path, split: str) -> Iterator[tuple[np.ndarray, int]]:
    """(waveform, sample rate) of every sample of a split, in shard order."""
    for path in shard_paths(shard_dir, split, read_index(shard_dir)):
        for key, parts in iter_tar(path):
            audio = audio_part(parts)
            if audio is None:
                raise MaeastError(f"sample {key!r} in {path} has no single .flac or .wav member; rebuild the shards")
            yield decode_audio(audio[1])


def write_stats(shard_dir: str | Path, preset: str | FbankConfig, stats: dict) -> str | Path:
    """Record stats under index.json's "stats"[preset name], keeping everything else (a folder or a URL:
    shards.sink); returns where."""
    index = read_index(shard_dir)
    index.setdefault("stats", {})[get_config(preset).name] = stats
    with Sink(shard_dir) as sink:
        sink.write_json(INDEX, index)
    return join(shard_dir, INDEX)


def corpus_features(shard_dirs: list | str | Path, preset: str | FbankConfig) -> FbankConfig:
    """The preset normalized with the statistics `maeast shard stats` recorded for it in the folders'
    index.json, pooled over the folders by frame counts; the preset unchanged when no folder has them."""
    config = get_config(preset)
    dirs = [shard_dirs] if isinstance(shard_dirs, (str, Path)) else list(shard_dirs)
    stats = [read_index(d).get("stats", {}).get(config.name) for d in dirs]
    missing = [d for d, s in zip(dirs, stats) if s is None]
    if missing:
        if len(missing) == len(dirs):
            return config
        raise MaeastError(f"{missing[0]} has no {config.name} statistics, other folders have; run `maeast shard "
                          f"stats {missing[0]} --preset {config.name}` so every folder is normalized alike")
    share = [s["frames"] / sum(s["frames"] for s in stats) for s in stats]  # one folder: 1.0, its figures exactly
    mean = sum(w * s["mean"] for w, s in zip(share, stats))
    std = math.sqrt(sum(w * (s["std"] ** 2 + (s["mean"] - mean) ** 2) for w, s in zip(share, stats)))
    return config.with_stats(mean, std)
