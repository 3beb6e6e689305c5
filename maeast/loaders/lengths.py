"""Clip lengths: bucketing, cropping, padding, and the batch's features, masks and labels.

Pure batched functions shared by every loader (webdataset, DALI, the map-style baseline), so all
of them give the same Batch for the same clips:

  pretraining: batches of batch_size clips of similar length (bucket), or fairseq's max_tokens batches
      (bucket_tokens); every clip of a batch is cropped at a random offset to the batch's shortest clip,
      capped at max_samples (the official MAE-AST collater with random_crop, pad_audio off);
  fine-tuning: every clip is cropped (random or from the start) or zero-padded to clip_samples,
      and frames past a clip's own end are masked (True = padding) and zeroed.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import torch

from maeast.batch import Batch
from maeast.errors import MaeastError
from maeast.features import FbankConfig, featurize

T = TypeVar("T")


def bucket(items: Iterable[T], size: int, batch_size: int, pool_batches: int, rng: random.Random,
           drop_last: bool = False) -> Iterator[list[T]]:
    """Batches of `batch_size` items of similar size: pools of pool_batches batches are sorted by
    size(item), cut into batches, and the batches of a pool are yielded in random order."""
    pool_size = batch_size * pool_batches
    pool: list[T] = []
    for item in items:
        pool.append(item)
        if len(pool) == pool_size:
            yield from _cut(pool, size, batch_size, pool_batches, rng, drop_last)
            pool = []
    if pool:
        yield from _cut(pool, size, batch_size, pool_batches, rng, drop_last)


def _cut(pool, size, batch_size, pool_batches, rng, drop_last):
    if pool_batches > 1:
        pool = sorted(pool, key=size)
    batches = [pool[i:i + batch_size] for i in range(0, len(pool), batch_size)]
    if drop_last and len(batches[-1]) < batch_size:
        batches.pop()
    if pool_batches > 1:
        rng.shuffle(batches)
    return batches


def batch_clips(max_tokens: int, tokens: int, multiple: int) -> int:
    """Clips a fairseq max_tokens batch holds when each counts `tokens`: the most n with n * tokens <= max_tokens,
    cut to a multiple of `multiple` when it is at least that (fairseq's batch_by_size, bsz_mult)."""
    return _to_multiple(max(max_tokens // tokens, 1), multiple)


def _to_multiple(n: int, multiple: int) -> int:
    """n clips cut to a multiple of `multiple` when there are at least that many (fairseq's bsz_mult)."""
    return max(multiple * (n // multiple), n % multiple)


def bucket_tokens(items: Iterable[T], size: Callable[[T], int], max_tokens: int, size_cap: int, multiple: int, pool_batches: int,
                  rng: random.Random, drop_last: bool = False) -> Iterator[list[T]]:
    """fairseq's batching of a length-sorted pass, over pools of about pool_batches batches (by tokens).

    A clip counts tokens = min(size(item), size_cap) (fairseq's size(): min(samples, max_sample_size)). A pool
    closes once its tokens reach pool_batches * max_tokens; it is sorted longest first (fairseq's
    ordered_indices) and cut as data_utils.batch_by_size cuts it: a batch takes clips while (clips + 1) x its
    longest clip's tokens stays within max_tokens; when the next one does not fit, the batch is cut to a
    multiple of `multiple` (bsz_mult; when it has that many) and the clips cut off open the next batch. A
    pool's last batch, the shortest clips, is carried into the next pool rather than yielded short; the
    stream's very last one is yielded (or dropped with drop_last). A pool's batches come out in random order."""
    count = lambda item: max(min(size(item), size_cap), 1)  # noqa: E731
    pool: list[T] = []
    pooled = 0
    for item in items:
        pool.append(item)
        pooled += count(item)
        if pooled >= pool_batches * max_tokens:
            batches = _cut_tokens(pool, size, count, max_tokens, multiple)
            pool = batches.pop()  # the shortest clips, carried into the next pool
            pooled = sum(count(i) for i in pool)
            rng.shuffle(batches)
            yield from batches
    if pool:
        batches = _cut_tokens(pool, size, count, max_tokens, multiple)
        if drop_last and len(batches[-1]) < batch_clips(max_tokens, count(batches[-1][0]), multiple):
            batches.pop()
        rng.shuffle(batches)
        yield from batches


def _cut_tokens(pool, size, count, max_tokens, multiple):
    """A pool sorted longest first (ties in pool order) cut into fairseq batch_by_size batches."""
    pool = sorted(pool, key=size, reverse=True)
    batches, batch, longest = [], [], 0
    for item in pool:
        longest = max(longest, count(item))
        if batch and (len(batch) + 1) * longest > max_tokens:
            keep = _to_multiple(len(batch), multiple)
            batches.append(batch[:keep])
            batch = batch[keep:]
            longest = max([count(i) for i in batch] + [count(item)])
        batch.append(item)
    batches.append(batch)
    return batches


def plan_batches(items: Iterable[T], size: Callable[[T], int], config, pool_batches: int, rng: random.Random) -> Iterator[list[T]]:
    """A worker's batches: `batch_size` clips each (bucket), or fairseq's max_tokens batches (bucket_tokens)
    when config.max_tokens is set (a loaders.config.BatchConfig)."""
    if config.max_tokens is None:
        return bucket(items, size, config.batch_size, pool_batches, rng, config.drop_last)
    return bucket_tokens(items, size, config.max_tokens, config.size_cap, config.batch_multiple, pool_batches, rng,
                         config.drop_last)


def stack(waves: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of any lengths -> zero-padded [B, N_max] and lengths [B] (int64)."""
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.int64)
    out = waves[0].new_zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):  # a copy per clip; no per-sample arithmetic
        out[i, : len(w)] = w
    return out, lengths


def target_size(lengths: torch.Tensor, finetune: bool, clip_samples: int, max_samples: int) -> int:
    """Samples every clip of the batch gets: clip_samples (fine-tuning), or the official collater's
    length, the batch's shortest clip capped at max_samples (pretraining)."""
    return clip_samples if finetune else int(min(int(lengths.min()), max_samples))


def offsets(lengths: torch.Tensor, size: int, random_offset: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Where each clip's window of `size` samples starts: uniform in [0, length - size] (or 0)."""
    spare = (lengths - size).clamp_min(0)  # [B] samples that do not fit
    if not random_offset:
        return torch.zeros_like(spare)
    u = torch.rand(len(lengths), generator=generator, dtype=torch.float64)
    return (u * (spare + 1).double()).floor().long().clamp_max(spare)  # [B]


def crop(wave: torch.Tensor, lengths: torch.Tensor, size: int, random_offset: bool,
         generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N] clips with their lengths -> [B, size]: clips longer than `size` cropped (at a random
    offset, or from the start), shorter ones zero-padded; returns the kept lengths [B]."""
    n = wave.shape[1]
    start = offsets(lengths, size, random_offset, generator)  # [B]
    if n == size and not bool(start.any()):  # already the right window (e.g. DALI's slice)
        return wave, lengths.clamp_max(size)
    index = start.unsqueeze(1) + torch.arange(size).unsqueeze(0)  # [B, size]
    kept = lengths.clamp_max(size)
    inside = torch.arange(size).unsqueeze(0) < kept.unsqueeze(1)  # [B, size]
    index = index.clamp_max(max(n - 1, 0)).to(wave.device)
    out = torch.gather(wave, 1, index) * inside.to(wave.device)
    return out, kept


def labels_tensor(label_ids: Sequence[Sequence[int]], num_classes: int, multi_label: bool) -> torch.Tensor:
    """Per-clip label ids -> int64 [B] (single-label) or float multi-hot [B, C] (multi-label)."""
    if multi_label:
        hot = torch.zeros(len(label_ids), num_classes)
        rows = [i for i, ids in enumerate(label_ids) for _ in ids]
        cols = [j for ids in label_ids for j in ids]
        hot[rows, cols] = 1.0
        return hot
    bad = [ids for ids in label_ids if len(ids) != 1]
    if bad:
        raise MaeastError(f"a single-label corpus has a clip with labels {list(bad[0])}; rebuild its shards")
    return torch.tensor([ids[0] for ids in label_ids], dtype=torch.int64)


def make_batch(wave: torch.Tensor, kept: torch.Tensor, keys: list[str],
               label_ids: Sequence[Sequence[int]] | None, *, preset: str | FbankConfig, sample_rate: int,
               num_classes: int, multi_label: bool) -> Batch:
    """Cropped/padded clips [B, N] with their real lengths [B] -> Batch (labels if label_ids given)."""
    features, mask = featurize(wave, kept, preset, sample_rate)
    labels = labels_tensor(label_ids, num_classes, multi_label).to(wave.device) if label_ids is not None else None
    return Batch(features, mask, labels, list(keys))


def collate(wave: torch.Tensor, lengths: torch.Tensor, keys: list[str],
            label_ids: Sequence[Sequence[int]] | None, *, finetune: bool, clip_samples: int,
            max_samples: int, random_crop: bool, preset: str | FbankConfig, sample_rate: int, num_classes: int,
            multi_label: bool, generator: torch.Generator | None) -> Batch:
    """Whole decoded clips, [B, N] zero-padded with their lengths [B] (see `stack`) -> Batch, on the
    clips' device. (The webdataset loader decodes only each clip's window instead: target_size and
    offsets first, then make_batch.)"""
    size = target_size(lengths, finetune, clip_samples, max_samples)
    wave, kept = crop(wave, lengths, size, random_crop or not finetune, generator)
    return make_batch(wave, kept, keys, label_ids if finetune else None, preset=preset, sample_rate=sample_rate,
                      num_classes=num_classes, multi_label=multi_label)
