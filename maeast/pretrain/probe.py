"""The online probe: whether the encoder's features get better while it pretrains.

    probe = OnlineProbe.open(cfg.eval, features)    # reads eval.probe_shards once, caches the fbanks, scores the baseline
    record = probe.score(encoder)                   # {"linear", "knn", "fbank_linear", "fbank_knn", "clips", ...}

Every eval.probe_every steps (and at the end) the loop hands the model's encoder to `score`: it embeds the
cached clips of eval.probe_shards' train and test splits (every layer's tokens pooled to their mean and
standard deviation, side by side: the frozen protocol "stats" of maeast.model.heads, and the pooling of the
baseline below; eval mode, no gradients), fits a logistic regression and a kNN on the train split's
features and scores them on the test split (maeast.probing). The fbank-statistics baseline (each clip's
fbank mean and std, the same two probes) is scored once, when the probe opens, on the same clips; its
figures ride along in every record, so each curve has its baseline beside it. Clips are cropped from
their start to eval.probe_clip_seconds; a split with more than eval.probe_clips clips keeps a seeded
random subset of that many. Rank 0 probes (the loop calls it there only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from maeast.batch import Batch
from maeast.pretrain.config import EvalConfig
from maeast.errors import MaeastError
from maeast.features import FbankConfig
from maeast.loaders import LoaderConfig, StreamingLoader
from maeast.model.heads import pooled_layers
from maeast.precision import module_autocast
from maeast.probing import fbank_stats, score_features
from maeast.shards.format import read_index

BATCH = 64


@dataclass
class ProbeSplit:
    batches: list[Batch]  # the cached fbanks, [B, T, F] each
    labels: torch.Tensor  # [N] class ids

    def __len__(self) -> int:
        return len(self.labels)


def read_split(folder: str, split: str, cfg: EvalConfig, features: FbankConfig) -> ProbeSplit:
    """The split's clips (at most cfg.probe_clips, a seeded subset) as cached fbank batches."""
    config = LoaderConfig(shards=[folder], split=split, mode="finetune", clip_seconds=cfg.probe_clip_seconds,
                          random_crop=False, batch_size=BATCH, num_workers=0, shuffle_buffer=0, seed=0,
                          fbank=features.name, on_error="skip")
    batches = [b for b in StreamingLoader(config, 0, 1, features) if len(b)]
    if not batches:
        raise MaeastError(f"eval.probe_shards {folder}: split {split!r} yielded no clip; rebuild the shards")
    x = torch.cat([b.features for b in batches])  # [N, T, F]
    pad = None
    if any(b.padding_mask is not None for b in batches):  # [N, T]; a batch without padding has no mask
        pad = torch.cat([torch.zeros(b.features.shape[:2], dtype=torch.bool) if b.padding_mask is None
                         else b.padding_mask for b in batches])
    labels = torch.cat([b.labels for b in batches])
    if len(labels) > cfg.probe_clips:
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[: cfg.probe_clips].sort().values
        x, labels, pad = x[keep], labels[keep], None if pad is None else pad[keep]
    return ProbeSplit([Batch(x[i:i + BATCH], None if pad is None else pad[i:i + BATCH])
                       for i in range(0, len(labels), BATCH)], labels)


@dataclass
class OnlineProbe:
    train: ProbeSplit
    test: ProbeSplit
    baseline: dict[str, float]  # {"fbank_linear", "fbank_knn"}: the fbank statistics' scores on these clips
    seconds: float  # reading the clips and scoring the baseline

    @classmethod
    def open(cls, cfg: EvalConfig, features: FbankConfig) -> "OnlineProbe":
        """Read and check eval.probe_shards (an error names what is wrong before training starts)."""
        started = time.perf_counter()
        index = read_index(cfg.probe_shards)
        if index.get("multi_label"):
            raise MaeastError(f"eval.probe_shards {cfg.probe_shards} is multi-label; the probe needs single-label "
                              f"clips (e.g. shards/demo/keywords)")
        for split in (cfg.probe_train_split, cfg.probe_test_split):
            if split not in index["splits"]:
                raise MaeastError(f"eval.probe_shards {cfg.probe_shards} has no split {split!r} (it has "
                                  f"{', '.join(sorted(index['splits']))}): set eval.probe_train_split / probe_test_split")
        train, test = (read_split(cfg.probe_shards, s, cfg, features) for s in (cfg.probe_train_split, cfg.probe_test_split))
        stats = [torch.cat([fbank_stats(b.features, b.padding_mask) for b in s.batches]) for s in (train, test)]
        scores = score_features(stats[0], train.labels, stats[1], test.labels)
        return cls(train, test, {f"fbank_{k}": v for k, v in scores.items()}, time.perf_counter() - started)

    @torch.no_grad()
    def score(self, encoder: torch.nn.Module) -> dict[str, float]:
        """The encoder's frozen features probed -> {"linear", "knn", baseline figures, "clips", "seconds" (this
        probe), "setup_seconds" (reading the clips and scoring the baseline, once)}."""
        started = time.perf_counter()
        was_training = encoder.training
        encoder.eval()
        device = next(encoder.parameters()).device
        try:
            with module_autocast(encoder):  # the engine's precision: bf16 when its weights are
                x = [torch.cat([self._pooled(encoder, b, device) for b in s.batches])
                     for s in (self.train, self.test)]  # [N, D] each
        finally:
            encoder.train(was_training)
        scores = score_features(x[0], self.train.labels, x[1], self.test.labels)
        return {**scores, **self.baseline, "clips": len(self.train) + len(self.test),
                "seconds": round(time.perf_counter() - started, 2), "setup_seconds": round(self.seconds, 2)}

    @staticmethod
    def _pooled(encoder: torch.nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
        pad = None if batch.padding_mask is None else batch.padding_mask.to(device)
        pooled = pooled_layers(encoder, batch.features.to(device), pad, weighted=True, stats=True)  # [B, L, 2D]
        return pooled.flatten(1).float().cpu()  # [B, L x 2D]


def open_probe(cfg: EvalConfig, features: FbankConfig, zero_stage: int, main: bool) -> OnlineProbe | None:
    """The run's probe on its main process (None when eval.probe_every is 0, and on the other processes)."""
    if not cfg.probe_every:
        return None
    if zero_stage == 3:
        raise MaeastError("eval.probe_every needs every parameter on the probing process, which ZeRO-3 splits: "
                          "use ZeRO-1 or -2, or set eval.probe_every 0")
    return OnlineProbe.open(cfg, features) if main else None


def probe_line(record: dict) -> str:
    return (f"probe step {record['step']}: linear {100 * record['linear']:.1f}% (fbank statistics "
            f"{100 * record['fbank_linear']:.1f}%), kNN {100 * record['knn']:.1f}% (fbank {100 * record['fbank_knn']:.1f}%) "
            f"on {record['clips']} clips in {record['seconds']:.1f} s")
