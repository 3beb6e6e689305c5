"""The per-file, map-style loader of the seed's design: the baseline that benchmarks/loader.py beats.

A fairseq-style TSV manifest (first line: the audio root; then `relative/path.wav<TAB>num_samples`
per clip), each file opened and featurized per item in a torch Dataset, and a collater that crops
the batch's fbanks as the official MAE-AST collater does (pretraining: to the shortest clip, capped,
at a random offset; fine-tuning: to clip_seconds, zero-padded and masked). It yields the same Batch
as the other loaders, but reads one small file per clip and featurizes clip by clip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import soundfile as sf
import torch

from maeast.batch import Batch
from maeast.errors import MaeastError
from maeast.features import fbank, get_config
from maeast.loaders.config import LoaderConfig
from maeast.shards.format import SAMPLE_RATE


def write_manifest(root: Path, files: list[Path], out: Path) -> Path:
    """A TSV manifest of 16 kHz mono audio files under `root` (the seed's and fairseq's format)."""
    root = Path(root).resolve()
    lines = [str(root)]
    for path in files:
        info = sf.info(str(path))
        if info.samplerate != SAMPLE_RATE or info.channels != 1:
            raise MaeastError(f"{path} is {info.samplerate} Hz x {info.channels}; the manifest needs 16 kHz mono")
        lines.append(f"{Path(path).resolve().relative_to(root)}\t{info.frames}")
    Path(out).write_text("\n".join(lines) + "\n")
    return Path(out)


class ManifestDataset(torch.utils.data.Dataset):
    """Item i: (key, fbank [T_i, F] of the whole file)."""

    def __init__(self, manifest: Path, preset: str, min_samples: int = 0):
        lines = Path(manifest).read_text().splitlines()
        if not lines:
            raise MaeastError(f"{manifest} is empty; its first line must be the audio root folder")
        self.root = Path(lines[0])
        rows = [line.split("\t") for line in lines[1:] if line.strip()]
        self.files = [(path, int(n)) for path, n in rows if int(n) >= min_samples]
        self.preset = preset

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor]:
        path, _ = self.files[i]
        wav, sr = sf.read(str(self.root / path), dtype="float32")
        return Path(path).stem, fbank(torch.from_numpy(wav), sr, self.preset)


class Collater:
    """The official collater on fbank frames, with an explicit generator for the crop offsets."""

    def __init__(self, config: LoaderConfig, seed: int):
        cfg = get_config(config.fbank)
        self.finetune = config.finetune
        self.clip = cfg.num_frames(round((config.clip_seconds or 0) * SAMPLE_RATE))
        self.max = cfg.num_frames(round(config.max_seconds * SAMPLE_RATE))
        self.random = config.random_crop or not config.finetune
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, items: list[tuple[str, torch.Tensor]]) -> Batch:
        keys, feats = [k for k, _ in items], [f for _, f in items]
        frames = torch.tensor([len(f) for f in feats])  # [B]
        size = self.clip if self.finetune else min(int(frames.min()), self.max)
        spare = (frames - size).clamp_min(0)
        start = (torch.rand(len(feats), generator=self.generator) * (spare + 1)).long().clamp_max(spare)
        start = start if self.random else torch.zeros_like(start)
        out = feats[0].new_zeros(len(feats), size, feats[0].shape[1])  # [B, T, F]
        for i, f in enumerate(feats):
            piece = f[int(start[i]): int(start[i]) + size]
            out[i, : len(piece)] = piece
        kept = frames.clamp_max(size)
        mask = torch.arange(size).unsqueeze(0) >= kept.unsqueeze(1)  # [B, T]
        return Batch(out, mask if bool(mask.any()) else None, None, keys)


class MapStyleLoader:
    """A torch DataLoader over a manifest: shuffled file order, per-item fbank, the collater above."""

    def __init__(self, manifest: Path, config: LoaderConfig):
        min_samples = 0 if config.finetune else round(config.min_seconds * SAMPLE_RATE)
        self.dataset = ManifestDataset(manifest, config.fbank, min_samples)
        self.config = config
        self.epoch = 0

    def __len__(self) -> int:
        n, b = len(self.dataset), self.config.batch_size
        return n // b if self.config.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[Batch]:
        c = self.config
        threads = c.threads_per_worker
        order = torch.Generator().manual_seed(c.seed + self.epoch)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=c.batch_size, shuffle=bool(c.shuffle_buffer), generator=order,
            num_workers=c.num_workers, collate_fn=Collater(c, c.seed + self.epoch), drop_last=c.drop_last,
            worker_init_fn=lambda _: torch.set_num_threads(threads),
            **(dict(prefetch_factor=c.prefetch) if c.num_workers else {}))
        yield from loader
        self.epoch += 1
