"""The DALI loader (the `dali` extra): DALI reads and decodes, our torch fbank makes the features.

    DALI pipeline (per rank):  fn.readers.webdataset over the shards and their .idx files
        -> fn.decoders.audio (FLAC or wav -> float32, mono) -> fn.slice to a fixed window (random offset
        when the clip is longer; zero-padded with out_of_bounds_policy="pad") -> to the GPU when
        there is one;  the JSON bytes are padded (fn.pad) so the PyTorch iterator gets dense tensors.
    then in torch, on that device: lengths.collate (pretraining: crop to the batch's shortest clip;
        fine-tuning: mask the padding) and maeast.features.fbank.

DALI's own spectrogram cannot remove each frame's DC offset or pre-emphasize within a frame, so it
cannot match Kaldi; using our fbank keeps one definition of the features for every loader.
This is the only module that imports nvidia.dali, and only when a DaliLoader is made.

Differences from the webdataset loader: folders are concatenated (no mixing weights), there is no
length bucketing, and an undecodable sample stops the run (DALI cannot skip it); a shard whose
sha256 differs from index.json is left out (or fails) when the loader is made (stream.check_shard,
as in the webdataset loader). Resuming replays the epoch's pipeline (same seed) up to the batches already taken.
"""

from __future__ import annotations

import json
from typing import Iterator

import torch

from maeast.batch import Batch
from maeast.errors import MaeastError
from maeast.loaders import lengths
from maeast.loaders.config import LoaderConfig
from maeast.loaders.loader import dist_rank_world
from maeast.loaders.sources import check_labels, load_sources
from maeast.streams import LOADER_STREAMS, derive_seed
from maeast.loaders.state import LoaderState, SingleStreamState
from maeast.loaders.baddata import Errors
from maeast.loaders.stream import check_shard
from maeast.shards.format import CODECS


def _dali():
    try:
        import nvidia.dali as dali
        from nvidia.dali import fn, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    except ImportError:
        raise MaeastError("backend dali needs NVIDIA DALI: pip install 'maeast[dali]'") from None
    return dali, fn, types, DALIGenericIterator, LastBatchPolicy


class DaliLoader(SingleStreamState):
    """Same contract as StreamingLoader: iterate for Batches, len(), set_epoch, state_dict."""

    def __init__(self, config: LoaderConfig, rank: int | None = None, world_size: int | None = None,
                 device: str | None = None):
        """device: "cpu" runs DALI's CPU-only mode (device_id=None) and the fbank on the CPU; None
        picks the current CUDA device when there is one."""
        _dali()
        if config.weights is not None and len(config.shards) > 1:
            raise MaeastError("backend dali concatenates shard folders; mixing weights need backend stream")
        self.config = config
        self.rank, self.world_size = dist_rank_world(rank, world_size)
        self.sources = load_sources(config.shards, config.split)
        if config.finetune:
            check_labels(self.sources)
        cuda = device != "cpu" and torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self.shards = self._usable_shards()
        self.state = LoaderState.fresh(0, config.seed, self.world_size, 0, self.rank)

    def _usable_shards(self) -> list:
        shards, errors = [], Errors(self.config.on_error)
        for shard in (shard for source in self.sources for shard in source.shards):
            if not shard.path.with_suffix(".idx").is_file():
                raise MaeastError(f"{shard.path} has no DALI index beside it; rebuild the shards with the "
                                  f"`dali` extra installed (the builder writes .idx files with wds2idx)")
            if check_shard(shard, self.config.verify_checksums, errors):
                shards.append(shard)
        if len(shards) < self.world_size:
            raise MaeastError(f"{len(shards)} usable shard(s) for {self.world_size} ranks; need at least one per rank")
        return shards

    labels = property(lambda self: list(self.sources[0].labels))
    multi_label = property(lambda self: self.sources[0].multi_label)

    @property
    def sample_rate(self) -> int:
        return self.sources[0].sample_rate

    @property
    def window(self) -> int:
        """Samples DALI keeps per clip: clip_seconds (fine-tuning) or max_seconds (pretraining)."""
        c = self.config
        return round((c.clip_seconds if c.finetune else c.max_seconds) * self.sample_rate)

    def __len__(self) -> int:
        c = self.config
        if c.epoch_batches is not None:
            return c.epoch_batches
        total = sum(s.samples for s in self.shards)
        per_rank = [total * (r + 1) // self.world_size - total * r // self.world_size for r in range(self.world_size)]
        return min(n // c.batch_size if c.drop_last else -(-n // c.batch_size) for n in per_rank)

    def _pipeline(self, epoch: int):
        dali, fn, types, _, _ = _dali()
        c = self.config
        random_offset = not c.finetune or c.random_crop
        window = self.window
        threads = max(c.num_workers, 1) * c.threads_per_worker
        gpu = self.device.type == "cuda"
        seed = derive_seed(c.seed, epoch, LOADER_STREAMS["dali_reader"]) % (1 << 31)

        @dali.pipeline_def(batch_size=c.batch_size, num_threads=threads, device_id=self.device.index if gpu else None,
                           seed=seed, prefetch_queue_depth=c.prefetch)
        def pipeline():
            encoded, meta = fn.readers.webdataset(
                paths=[str(s.path) for s in self.shards],
                index_paths=[str(s.path.with_suffix(".idx")) for s in self.shards],
                ext=[";".join(CODECS), "json"], missing_component_behavior="error", random_shuffle=c.shuffle_buffer > 0,
                initial_fill=max(c.shuffle_buffer, 1), shard_id=self.rank, num_shards=self.world_size,
                pad_last_batch=True, name="Reader")
            audio, _ = fn.decoders.audio(encoded, dtype=types.FLOAT, downmix=True)
            length = audio.shape(dtype=types.INT64)
            spare = dali.math.max(length - window, 0)
            start = fn.cast(dali.math.floor(fn.random.uniform(range=[0.0, 1.0]) * spare), dtype=types.INT64) \
                if random_offset else spare * 0
            audio = fn.slice(audio, start, fn.constant(idata=[window], dtype=types.INT64), axes=[0],
                             out_of_bounds_policy="pad", fill_values=0.0)
            return (audio.gpu() if gpu else audio), length, fn.pad(meta, fill_value=0)

        pipe = pipeline()
        pipe.build()
        return pipe

    def _dali_batches(self, epoch: int) -> Iterator[dict]:
        """The DALI iterator's batches, across reader epochs, without end."""
        _, _, _, Iterator_, Policy = _dali()
        it = Iterator_([self._pipeline(epoch)], ["audio", "length", "meta"], reader_name="Reader",
                       last_batch_policy=Policy.DROP if self.config.drop_last else Policy.PARTIAL)
        while True:
            try:
                for out in it:
                    yield out[0]
            except RuntimeError as e:
                raise MaeastError(f"DALI failed reading {self.config.shards}: {str(e).splitlines()[-1]} "
                                  f"(backend stream with on_error: skip skips bad samples)") from None
            it.reset()

    def _collate(self, out: dict, position: int) -> Batch | None:
        c = self.config
        metas = [json.loads(bytes(row.tolist()).rstrip(b"\0")) for row in out["meta"].cpu()]
        length = out["length"].reshape(-1).cpu()
        wave = out["audio"]  # [B, window] on self.device
        if not c.finetune:
            keep = length >= round(c.min_seconds * self.sample_rate)
            self.state.stats["short"] += int((~keep).sum())
            if not bool(keep.any()):
                return None
            rows = keep.nonzero().squeeze(1)
            wave, length, metas = wave[rows.to(wave.device)], length[rows], [metas[i] for i in rows.tolist()]
        seed = derive_seed(c.seed, self.state.epoch, self.rank, position, LOADER_STREAMS["crop"])
        generator = torch.Generator().manual_seed(seed)
        label_ids = [m.get("label_ids", []) for m in metas] if c.finetune else None
        return lengths.collate(
            wave, length.clamp_max(self.window), [m["key"] for m in metas], label_ids, finetune=c.finetune,
            clip_samples=self.window, max_samples=self.window, random_crop=False, preset=c.fbank,
            sample_rate=self.sample_rate, num_classes=len(self.labels), multi_label=self.multi_label,
            generator=generator)

    def __iter__(self) -> Iterator[Batch]:
        return self._counted(self._batches())

    def _batches(self) -> Iterator[tuple[int, Batch]]:
        skip = self.state.positions[0]
        for position, out in enumerate(self._dali_batches(self.state.epoch)):
            batch = self._collate(out, position) if position >= skip else None
            if batch is not None:
                yield position, batch
