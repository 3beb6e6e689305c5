"""What one worker does: read its shards, shuffle, bucket into batches, decode, fbank.

A worker's batches are planned from sample metadata (key, JSON) before any audio is decoded:

  its shards (sources.slot_shards) -> samples (format.iter_tar through storage, each checked against
  its JSON's sha256s in format 2, or after check_shard in format 1) -> clips a keep-rule leaves out
  dropped, by key (keep.Keep: a fold, a carved part) -> clips under min_seconds dropped (pretraining)
  -> class-balanced repeats (fine-tuning) -> shuffle buffer (webdataset.shuffle, seeded) -> batches
  (lengths.plan_batches) -> per batch: each clip's window (crop offset, from its JSON length) decoded from
  its FLAC (soundfile, seeking) or
  wav (a slice of the bytes) -> lengths.make_batch (padding, fbank, mask, labels)

Everything random is seeded by (seed, epoch, rank, worker, ..., the draw's id in sources.LOADER_STREAMS),
so the plan is a pure function of those numbers (and of the keep-rule, which draws none): a resumed
worker walks it again without decoding up to where the caller stopped.
A worker's stream never ends: after its shards it starts another, reshuffled pass (one source) or
keeps mixing (several sources); its quota decides how many batches of it make the epoch.
What a worker process runs with these (its own plan, or a re-dealt rest of an epoch) is
maeast.loaders.worker.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import random
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import soundfile as sf
import torch
import webdataset as wds

from maeast.batch import Batch
from maeast.errors import MaeastError
from maeast.features import FbankConfig
from maeast.loaders import lengths
from maeast.loaders.baddata import Errors
from maeast.loaders.cache import ShardCache
from maeast.loaders.config import LoaderConfig
from maeast.loaders.keep import Keep
from maeast.loaders.sources import Shard, Source, pass_order, slot_shards
from maeast.streams import LOADER_STREAMS, derive_seed
from maeast.shards.format import audio_part, check_members, iter_tar, parse_pcm16_wav, verify_shard
from maeast.shards.storage import open_stream

@dataclass
class Sample:
    key: str
    audio: bytes
    meta: dict
    codec: str = "flac"  # format.CODECS: the audio member's extension
    shard: str = ""  # the shard's name, for reports

    @property
    def what(self) -> str:
        return f"sample {self.key} of shard {self.shard}"


@dataclass
class Plan:
    """The epoch as one rank sees it; pickled into every worker."""

    config: LoaderConfig
    sources: list[Source]
    rank: int
    world_size: int
    epoch: int
    quotas: list[int]  # batches per worker this epoch
    batches: list[int]  # batches per worker the caller already took
    positions: list[int]  # per worker, the plan position to resume from
    features: FbankConfig  # the fbank recipe (the config's preset unless the loader was given one)
    rest: dict | None = None  # a re-dealt rest: {"world_size", "num_workers"} of its layout, "items" per worker
    first_worker: int = 0  # the worker whose turn the DataLoader's worker 0 takes (state.first_worker)
    keep: Keep | None = None  # the clips of the split this loader reads (None: every clip)

    @property
    def workers(self) -> int:
        return max(self.config.num_workers, 1)

    @property
    def sample_rate(self) -> int:
        return self.sources[0].sample_rate


def check_shard(shard: Shard, verify: bool, errors: Errors) -> bool:
    """False, after errors.bad, when verify is on and the whole shard's sha256 differs from index.json:
    a read of its own (format 1 folders; the DALI loader, which cannot check samples one by one)."""
    if not verify or verify_shard(shard.path, shard.sha256):
        return True
    errors.bad("bad_shards", f"shard {shard.name}", "its sha256 differs from index.json (corrupt or "
               "changed; check it with `maeast shard inspect --verify`)")
    return False


def read_shard(shard: Shard, verify: bool, errors: Errors, cache: ShardCache | None = None) -> Iterator[Sample]:
    """The samples of one shard (a file or a URL, streamed front to back; through the cache if given), in
    tar order; a bad shard or sample is skipped (or fails). With verify, a format-2 shard's samples are
    each checked against their JSON's sha256s as they are read; a format-1 shard is hashed whole first.

    A truncated tar keeps every whole sample before the cut; a garbled header loses only the members
    up to the next valid one; a remote shard that stays unreachable after storage.RETRY is skipped."""
    per_sample = verify and shard.format >= 2
    if not per_sample and not check_shard(shard, verify, errors):
        return
    def broken(e: Exception) -> None:  # a truncated tar, an unreadable name, an unreachable shard (StorageError)
        errors.bad("bad_shards", f"shard {shard.name}", f"unreadable ({type(e).__name__}: {e})")

    def garbled(where: str) -> None:
        errors.bad("bad_samples", f"{where} of shard {shard.name}", "the members there are lost")

    def refetched() -> None:
        errors.note("cache_refetched", f"the cached copy of shard {shard.name} was corrupt: deleted, streaming "
                    f"it again")

    opener = open_stream if cache is None else functools.partial(cache.open, sha256=shard.sha256, on_corrupt=refetched)
    for key, parts in iter_tar(shard.path, on_broken=broken, on_garbled=garbled, size=shard.bytes, opener=opener):
        sample = _parse(key, parts, shard, errors, per_sample)
        if sample is not None:
            yield sample


def _parse(key: str, parts: dict[str, bytes], shard: Shard, errors: Errors, per_sample: bool) -> Sample | None:
    audio = audio_part(parts)
    if audio is None or "json" not in parts:
        errors.bad("bad_samples", f"sample {key} of shard {shard.name}",
                   f"has {sorted(parts)}, needs json and flac or wav")
        return None
    try:
        meta = json.loads(parts["json"])
        int(meta["num_samples"])
    except (ValueError, KeyError, TypeError) as e:
        errors.bad("bad_samples", f"sample {key} of shard {shard.name}", f"unreadable JSON ({e})")
        return None
    problem = check_members(parts, meta) if per_sample else None
    if problem:
        errors.bad("bad_samples", f"sample {key} of shard {shard.name}", problem)
        return None
    return Sample(key, audio[1], meta, audio[0], shard.name)


Reader = Callable[[Shard], Iterator[Sample]]
"""A shard's samples in tar order: read_shard's, or (benchmarks/scale.py) samples made from index metadata."""


def _source_stream(plan: Plan, source_id: int, slot: int, errors: Errors,
                   read: Reader | None = None) -> Iterator[Iterator[Sample]]:
    """A slot's passes over one source's shards: pass 0 as dealt, later ones reshuffled."""
    cfg = plan.config
    source = plan.sources[source_id]
    mine = slot_shards(source, source_id, cfg.seed, plan.epoch, slot, plan.world_size * plan.workers)
    if read is None:
        cache = ShardCache(cfg.cache_dir, cfg.cache_gb) if cfg.cache_dir else None
        read = functools.partial(read_shard, verify=cfg.verify_checksums, errors=errors, cache=cache)
    for pass_no in itertools.count():
        order = pass_order(mine, cfg.seed, plan.epoch, source_id, slot, pass_no)
        yield itertools.chain.from_iterable(read(s) for s in order)


def _mixed(plan: Plan, slot: int, errors: Errors, read: Reader | None = None) -> Iterator[Sample]:
    """Several sources: an endless stream, the next clip's source drawn by weight."""
    def endless(source_id):
        for pass_no, pass_ in enumerate(_source_stream(plan, source_id, slot, errors, read)):
            if pass_no:
                errors.count("wrapped_passes")
            n = 0
            for n, sample in enumerate(pass_, 1):
                yield sample
            if n == 0:
                raise MaeastError(f"no readable sample in {plan.sources[source_id].dir} for worker {slot}")

    streams = [endless(i) for i in range(len(plan.sources))]
    weights = [s.weight for s in plan.sources]
    rng = random.Random(derive_seed(plan.config.seed, plan.epoch, slot, LOADER_STREAMS["mix"]))
    while True:
        yield next(streams[rng.choices(range(len(streams)), weights)[0]])


def planned_batches(plan: Plan, worker: int, errors: Errors, read: Reader | None = None) -> Iterator[list[Sample]]:
    """The worker's endless plan of batches (samples with undecoded audio); read: how a shard's samples are
    read (None: read_shard, from its tar)."""
    cfg = plan.config
    slot = plan.rank * plan.workers + worker
    if len(plan.sources) == 1:
        segments = _source_stream(plan, 0, slot, errors, read)
    else:
        segments = iter([_mixed(plan, slot, errors, read)])
    min_samples = round(cfg.min_seconds * plan.sample_rate)
    max_samples = round(cfg.max_seconds * plan.sample_rate)
    pool = 1 if cfg.finetune else cfg.bucket_batches
    for segment_no, segment in enumerate(segments):
        if segment_no:
            errors.count("wrapped_passes")
        samples = iter(segment)
        if plan.keep is not None:
            samples = (s for s in samples if s.key in plan.keep)
        if not cfg.finetune:
            samples = (s for s in samples if _long_enough(s, min_samples, errors))
        if cfg.class_weights is not None:
            seed = derive_seed(cfg.seed, plan.epoch, slot, segment_no, LOADER_STREAMS["class_repeat"])
            samples = _repeated(samples, cfg.class_weights, seed)
        if cfg.shuffle_buffer:
            rng = random.Random(derive_seed(cfg.seed, plan.epoch, slot, segment_no, LOADER_STREAMS["shuffle"]))
            samples = wds.shuffle(cfg.shuffle_buffer, cfg.shuffle_buffer, rng=rng)(samples)
        rng = random.Random(derive_seed(cfg.seed, plan.epoch, slot, segment_no, LOADER_STREAMS["bucket"]))
        size = lambda s: min(int(s.meta["num_samples"]), max_samples)  # noqa: E731
        made = 0
        for batch in lengths.plan_batches(samples, size, cfg, pool, rng):
            made += 1
            yield batch
        if not made:
            raise MaeastError(f"worker {worker} of rank {plan.rank} found no usable batch in a whole pass over its "
                              f"shards of {plan.sources[0].dir} (all clips bad, under min_seconds or left out by a "
                              f"keep-rule?)")


def _repeated(samples: Iterator[Sample], weights: list[float], seed: int) -> Iterator[Sample]:
    """Each sample k ~ Poisson(weights[its class]) times in a row (the shuffle buffer then spreads them)."""
    generator = torch.Generator().manual_seed(seed)
    rates = torch.tensor(weights, dtype=torch.float64)
    for sample in samples:
        rate = rates[int(sample.meta["label_ids"][0])].reshape(1)  # [1]
        yield from itertools.repeat(sample, int(torch.poisson(rate, generator=generator)))


def _long_enough(sample: Sample, min_samples: int, errors: Errors) -> bool:
    if int(sample.meta["num_samples"]) >= min_samples:
        return True
    errors.count("short")
    return False


def decode_window(sample: Sample, start: int, size: int, sample_rate: int, errors: Errors) -> torch.Tensor | None:
    """Samples [start, start + size) of a sample's audio as float32 [size] (decoding only those);
    None, after a warning, if the audio is not what its JSON says or does not decode."""
    if sample.codec == "wav":
        pcm = parse_pcm16_wav(sample.audio)
        if pcm is not None:  # 16-bit PCM mono, as the builder writes it: the window is a slice
            if _matches(sample, pcm.sample_rate, pcm.frames, 1, sample_rate, errors):
                window = np.frombuffer(sample.audio, "<i2", size, pcm.offset + 2 * start)
                return torch.from_numpy(window.astype(np.float32)).mul_(1 / 32768)
            return None
    try:
        with sf.SoundFile(io.BytesIO(sample.audio)) as f:
            if not _matches(sample, f.samplerate, f.frames, f.channels, sample_rate, errors):
                return None
            if start:
                f.seek(start)
            pcm16 = f.subtype == "PCM_16"  # the shard format's; int16 then / 32768 is soundfile's float, faster
            wav = f.read(size, dtype="int16" if pcm16 else "float32", always_2d=False)
    except MaeastError:
        raise
    except Exception as e:  # soundfile raises its own error types for corrupt streams
        errors.bad("bad_samples", sample.what, f"undecodable {sample.codec} ({type(e).__name__}: {e})")
        return None
    if len(wav) != size or not (pcm16 or np.isfinite(wav).all()):
        errors.bad("bad_samples", sample.what, f"decoded {len(wav)} of samples {start}-{start + size} "
                   f"(truncated {sample.codec})")
        return None
    return torch.from_numpy(wav).float().mul_(1 / 32768) if pcm16 else torch.from_numpy(wav)


def _matches(sample: Sample, rate: int, frames: int, channels: int, sample_rate: int, errors: Errors) -> bool:
    expected = int(sample.meta["num_samples"])
    if rate == sample_rate and frames == expected and channels == 1:
        return True
    errors.bad("bad_samples", sample.what, f"{sample.codec} holds {frames} samples x {channels} "
               f"at {rate} Hz, its JSON says {expected} x 1 at {sample_rate} Hz")
    return False


def materialize(samples: list[Sample], plan: Plan, worker: int, position: int, errors: Errors):
    """Decode each clip's window of a planned batch and featurize it; None if no clip decodes.

    Window sizes and offsets come from the JSON lengths (lengths.target_size, lengths.offsets), so
    only the audio that is kept gets decoded."""
    cfg, rate = plan.config, plan.sample_rate
    lens = torch.tensor([int(s.meta["num_samples"]) for s in samples])  # [B]
    size = lengths.target_size(lens, cfg.finetune, round((cfg.clip_seconds or 0) * rate), round(cfg.max_seconds * rate))
    if cfg.finetune and cfg.pad_to_longest:
        size = min(size, int(lens.max()))
    slot = plan.rank * plan.workers + worker  # like the shard deal: the stream is a function of the slot
    seed = derive_seed(cfg.seed, plan.epoch, slot, position, LOADER_STREAMS["crop"])
    generator = torch.Generator().manual_seed(seed)
    starts = lengths.offsets(lens, size, cfg.random_crop or not cfg.finetune, generator).tolist()
    kept = lens.clamp_max(size)
    wave = torch.zeros(len(samples), size)  # [B, size]
    rows = []
    for i, sample in enumerate(samples):
        window = decode_window(sample, starts[i], int(kept[i]), rate, errors)
        if window is not None:
            wave[i, : len(window)] = window
            rows.append(i)
    if not rows:
        return None
    if len(rows) < len(samples):
        wave, kept, samples = wave[rows], kept[rows], [samples[i] for i in rows]
    source = plan.sources[0]
    label_ids = [s.meta.get("label_ids", []) for s in samples] if cfg.finetune else None
    if cfg.fbank_on == "device":  # the features are computed where the batch goes (Batch.to)
        labels = (None if label_ids is None else
                  lengths.labels_tensor(label_ids, len(source.labels), source.multi_label))
        return Batch(None, labels=labels, keys=[s.key for s in samples], waveform=wave, lengths=kept)
    return lengths.make_batch(wave, kept, [s.key for s in samples], label_ids, preset=plan.features, sample_rate=rate,
                              num_classes=len(source.labels), multi_label=source.multi_label)
