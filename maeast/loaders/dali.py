"""The DALI loader (the `dali` extra): DALI reads, decodes and crops; our torch fbank makes the features.

    survey (maeast.loaders.survey, before the pipeline): every shard read once with the webdataset loader's
        checks; bad samples skipped and named (or failed), a keep-rule's and min_seconds' clips left out,
        filtered .idx files for shards that lose samples
    DALI pipeline (per rank, one per epoch, seeded by (seed, epoch)):  fn.readers.webdataset over the
        shards and their .idx files, sharded by rank (shard_id / num_shards), shuffled in its buffer
        -> fn.decoders.audio (FLAC or wav -> float32, mono) -> fn.slice to a fixed window (random offset
        when the clip is longer; zero-padded) -> to the GPU when there is one; DALI's own threads
        (num_workers x threads_per_worker) and prefetch queue, no Python worker processes.
    then in torch, on that device: lengths.collate (pretraining: crop to the batch's shortest clip;
        fine-tuning: mask the padding) and maeast.features.fbank: one definition of the features.

DALI's own spectrogram cannot remove each frame's DC offset or pre-emphasize within a frame, so it
cannot match Kaldi. This is the only module that imports nvidia.dali, and only when a DaliLoader is made.

Resume: state_dict() adds DALI's own checkpoint of the epoch's pipeline (enable_checkpointing; the
reader's position and shuffle buffer, every random generator) to the loader state; a loader given that
state rebuilds the pipeline from it and goes on with the very next batch. On another number of ranks
the checkpoint does not apply (its reader positions are one layout's): `adopt` resumes at the next epoch
boundary and says so in one line. What the webdataset loader does and DALI does not (mixing weights,
length bucketing, class-balanced draws, URLs) is refused in one line by LoaderConfig. A sample that
passes the survey but still cannot be decoded fails the pipeline; our decoder then finds it among the
samples the pipeline reads, and by on_error it is skipped (one line naming shard and key; the epoch goes
on from the same batch on a pipeline that leaves it out, replaying the batches already taken, and the
loader state keeps the list, so a resume leaves it out too) or fails (one line naming shard and key).
"""

from __future__ import annotations

import base64
import json
import os
import random
import weakref
from typing import Iterator

import numpy as np
import torch

from maeast.batch import Batch
from maeast.errors import MaeastError
from maeast.features import FbankConfig, get_config
from maeast.loaders import lengths
from maeast.loaders.baddata import Errors, log
from maeast.loaders.config import LoaderConfig
from maeast.loaders.keep import Keep
from maeast.loaders.loader import dist_rank_world
from maeast.loaders.sources import check_labels, load_sources
from maeast.loaders.state import LoaderState, SingleStreamState
from maeast.loaders.survey import survey, undecodable
from maeast.shards.format import CODECS
from maeast.streams import LOADER_STREAMS, derive_seed


def _dali():
    try:
        import nvidia.dali as dali
        from nvidia.dali import fn, types
        from nvidia.dali.plugin.pytorch import feed_ndarray
    except ImportError:
        raise MaeastError("backend dali needs NVIDIA DALI: pip install 'maeast[dali]'") from None
    return dali, fn, types, feed_ndarray


_LIVE: "weakref.WeakSet" = weakref.WeakSet()  # this process's DALI pipelines
_INHERITED: list = []  # in a forked child: the parent's pipelines, held so that they are never destroyed there


def _hold_inherited() -> None:
    """After a fork, in the child: a pipeline inherited from the parent (one not yet collected, e.g. in a reference
    cycle) must not be destroyed here. Its destructor waits for DALI's executor threads, which a fork does not copy,
    so a DataLoader worker forked after a DALI loader would hang in its first cyclic collection."""
    _INHERITED.extend(_LIVE)


os.register_at_fork(after_in_child=_hold_inherited)


class _DaliFailed(Exception):
    """DALI's pipeline failed (its message's last line)."""


class DaliLoader(SingleStreamState):
    """Same contract as StreamingLoader: iterate for Batches, len(), set_epoch, state_dict, load_state_dict."""

    def __init__(self, config: LoaderConfig, rank: int | None = None, world_size: int | None = None,
                 device: str | None = None, features: FbankConfig | None = None, keep: Keep | None = None):
        """device: "cpu" runs DALI's CPU-only mode (device_id=None) and the fbank on the CPU; None picks the
        current CUDA device when there is one. features: the fbank recipe in place of config.fbank's preset.
        keep: read only these clips of the split (maeast.loaders.keep)."""
        _dali()
        self.config = config
        self.features = get_config(features or config.fbank)
        self.rank, self.world_size = dist_rank_world(rank, world_size)
        self.sources = load_sources(config.shards, config.split)
        if keep is not None:
            keep.check(self.sources)
        if config.finetune:
            check_labels(self.sources)
        cuda = device != "cpu" and torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        errors = Errors(config.on_error)
        self.keep, self.undecodable = keep, set()
        self.surveyed = self._survey(errors)
        if self.surveyed.samples < self.world_size * (config.batch_size if config.drop_last else 1):
            raise MaeastError(f"{self.surveyed.samples} readable clip(s) in {', '.join(config.shards)} split "
                              f"{config.split!r} for {self.world_size} rank(s) of batch_size {config.batch_size}")
        self.state = LoaderState.fresh(0, config.seed, self.world_size, 0, self.rank)
        self.state.stats.update({k: v for k, v in errors.stats.items() if v})
        self._pipe, self._pipe_at, self._restore = None, None, None

    def _survey(self, errors: Errors):
        c = self.config
        min_samples = 0 if c.finetune else round(c.min_seconds * self.sample_rate)
        return survey([s for source in self.sources for s in source.shards], c.verify_checksums, errors, self.keep,
                      min_samples, frozenset(self.undecodable))

    labels = property(lambda self: list(self.sources[0].labels))
    multi_label = property(lambda self: self.sources[0].multi_label)
    sample_rate = property(lambda self: self.sources[0].sample_rate)

    @property
    def window(self) -> int:
        """Samples DALI keeps per clip: clip_seconds (fine-tuning) or max_seconds (pretraining)."""
        c = self.config
        return round((c.clip_seconds if c.finetune else c.max_seconds) * self.sample_rate)

    def __len__(self) -> int:
        c = self.config
        if c.epoch_batches is not None:
            return c.epoch_batches
        return self._least // c.batch_size if c.drop_last else -(-self._least // c.batch_size)

    @property
    def _least(self) -> int:
        """Clips of the rank with fewest: DALI's reader gives rank r the samples [n*r//k, n*(r+1)//k)."""
        n, k = self.surveyed.samples, self.world_size
        return min(n * (r + 1) // k - n * r // k for r in range(k))

    def _rows(self, position: int) -> int:
        """Clips batch `position` keeps: all, but for a pass's short last batch (the reader has gone on into
        its next pass; those clips are dropped, as every rank keeps the fewest ranks' count)."""
        c = self.config
        if c.epoch_batches is not None or c.drop_last or position != len(self) - 1:
            return c.batch_size
        return self._least - position * c.batch_size

    def _pipeline(self, epoch: int, checkpoint: bytes | None = None):
        dali, fn, types, _ = _dali()
        c, window, gpu = self.config, self.window, self.device.type == "cuda"
        random_offset = not c.finetune or c.random_crop
        seed = derive_seed(c.seed, epoch, LOADER_STREAMS["dali_reader"]) % (1 << 31)
        order = list(range(len(self.surveyed.paths)))  # the shards in a new order every epoch, as in stream
        if c.shuffle_buffer:
            random.Random(seed).shuffle(order)
        paths = [self.surveyed.paths[i] for i in order]
        index_paths = [self.surveyed.index_paths[i] for i in order]
        rank, world_size = self.rank, self.world_size  # the graph below holds no reference to the loader: a
        # dropped loader frees its pipeline and DALI's threads at once, not at the next cyclic collection (a
        # process that forks DataLoader workers later must not hold idle DALI threads)

        @dali.pipeline_def(batch_size=c.batch_size, num_threads=max(c.num_workers, 1) * c.threads_per_worker,
                           device_id=self.device.index if gpu else None, seed=seed, prefetch_queue_depth=c.prefetch,
                           enable_checkpointing=True)
        def pipeline():
            encoded, meta = fn.readers.webdataset(
                paths=paths, index_paths=index_paths,
                ext=[";".join(CODECS), "json"], missing_component_behavior="error", random_shuffle=c.shuffle_buffer > 0,
                initial_fill=max(c.shuffle_buffer, 1), shard_id=rank, num_shards=world_size, name="Reader")
            audio, _ = fn.decoders.audio(encoded, dtype=types.FLOAT, downmix=True)
            length = audio.shape(dtype=types.INT64)
            spare = dali.math.max(length - window, 0)
            start = fn.cast(dali.math.floor(fn.random.uniform(range=[0.0, 1.0]) * spare), dtype=types.INT64) \
                if random_offset else spare * 0
            audio = fn.slice(audio, start, fn.constant(idata=[window], dtype=types.INT64), axes=[0],
                             out_of_bounds_policy="pad", fill_values=0.0)
            return (audio.gpu() if gpu else audio), length, fn.pad(meta, fill_value=0)

        pipe = pipeline(checkpoint=checkpoint) if checkpoint is not None else pipeline()
        pipe.build()
        _LIVE.add(pipe)
        return pipe

    def _pipe_for(self, epoch: int, position: int):
        """The epoch's pipeline standing at `position`: the live one, one rebuilt from a loaded checkpoint, or new."""
        if self._pipe is not None and self._pipe_at == (epoch, position):
            return self._pipe
        self._pipe = None
        if position == 0:
            self._pipe = self._pipeline(epoch)
        elif self._restore is not None and self._restore[:2] == (epoch, position):
            self._pipe = self._pipeline(epoch, self._restore[2])
        else:
            raise MaeastError(f"the DALI loader is at batch {position} of epoch {epoch} without a DALI checkpoint "
                              f"of it; load the state_dict a DALI loader saved (state of another backend cannot "
                              f"resume mid-epoch here)")
        self._pipe_at = (epoch, position)
        return self._pipe

    def _run(self, pipe) -> dict:
        """One batch of the pipeline as torch tensors (_DaliFailed when DALI fails)."""
        _, _, _, feed_ndarray = _dali()
        try:
            audio, length, meta = pipe.run()
        except RuntimeError as e:
            raise _DaliFailed(str(e).strip().splitlines()[-1] if str(e).strip() else "no message") from None
        if self.device.type == "cuda":  # DALI's GPU buffer -> a torch tensor on the same device
            wave = torch.empty((len(audio), self.window), dtype=torch.float32, device=self.device)
            feed_ndarray(audio.as_tensor(), wave, cuda_stream=torch.cuda.current_stream())
        else:
            wave = torch.from_numpy(np.array(audio.as_array()))  # a copy: DALI reuses its buffers
        return {"audio": wave, "length": torch.from_numpy(np.array(length.as_array())),
                "meta": np.array(meta.as_array())}

    def _replan(self, epoch: int, position: int, failure: _DaliFailed):
        """After DALI failed: the undecodable samples skipped (one line each) or failed (one line) by on_error, and
        the epoch's pipeline made again without them, standing at `position` (the batches already taken replayed)."""
        bad = undecodable([s for source in self.sources for s in source.shards], self.surveyed)
        if not bad:
            raise MaeastError(f"DALI failed reading {', '.join(self.config.shards)} ({str(failure)[:200]}) and every "
                              f"sample it reads decodes here; read them with data.backend: stream") from None
        errors = Errors(self.config.on_error)
        for shard, key in bad:
            errors.bad("bad_samples", f"sample {key} of shard {shard}", "undecodable by DALI's decoder")
        self.state.stats["bad_samples"] += errors.stats["bad_samples"]
        self.undecodable |= set(bad)
        self.surveyed = self._survey(Errors("skip"))
        pipe = self._pipeline(epoch)
        try:
            for _ in range(position):
                self._run(pipe)
        except _DaliFailed as again:
            raise MaeastError(f"DALI failed again reading {', '.join(self.config.shards)} without the undecodable "
                              f"samples ({str(again)[:200]}); read them with data.backend: stream") from None
        return pipe

    def _collate(self, out: dict, position: int) -> Batch:
        c, rows = self.config, self._rows(position)
        metas = [json.loads(row.tobytes().rstrip(b"\0")) for row in out["meta"][:rows]]
        seed = derive_seed(c.seed, self.state.epoch, self.rank, position, LOADER_STREAMS["crop"])
        label_ids = [m.get("label_ids", []) for m in metas] if c.finetune else None
        return lengths.collate(
            out["audio"][:rows], out["length"].reshape(-1)[:rows].clamp_max(self.window), [m["key"] for m in metas], label_ids,
            finetune=c.finetune, clip_samples=self.window, max_samples=self.window, random_crop=False,
            preset=self.features, sample_rate=self.sample_rate, num_classes=len(self.labels),
            multi_label=self.multi_label, generator=torch.Generator().manual_seed(seed))

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the epoch: len(self) batches, recounted after each (a skipped undecodable sample can
        shorten the epoch by the batch it no longer fills)."""
        state = self.state
        if state.batches[0] >= len(self):
            return
        for position, batch in self._batches():
            state.consume(0, position)
            last = state.batches[0] >= len(self)
            if last:
                state.next_epoch()
            yield batch
            if last:
                return

    def _batches(self) -> Iterator[tuple[int, Batch]]:
        epoch, position = self.state.epoch, self.state.positions[0]
        pipe = self._pipe_for(epoch, position)
        while True:
            try:
                out = self._run(pipe)
            except _DaliFailed as failure:
                self._pipe = pipe = self._replan(epoch, position, failure)
                continue
            self._pipe_at = (epoch, position + 1)
            yield position, self._collate(out, position)
            position += 1
            if self.state.epoch != epoch:  # the epoch's last batch was taken: its pipeline is done
                self._pipe = None
                return

    def state_dict(self) -> dict:
        """The loader state (state.py's format) with, mid-epoch, this rank's DALI checkpoint (base64)."""
        out = self.state.to_dict()
        out["backend"], out["samples"] = "dali", self.surveyed.samples
        if self.undecodable:
            out["ranks"][str(self.rank)]["undecodable"] = sorted(list(pair) for pair in self.undecodable)
        at = (self.state.epoch, self.state.positions[0])
        if at[1]:
            if self._pipe is not None and self._pipe_at == at:
                checkpoint = self._pipe.checkpoint()
            elif self._restore is not None and self._restore[:2] == at:
                checkpoint = self._restore[2]
            else:
                raise MaeastError(f"the DALI loader has no pipeline at batch {at[1]} of epoch {at[0]} to checkpoint")
            raw = checkpoint.encode("latin-1") if isinstance(checkpoint, str) else bytes(checkpoint)
            out["ranks"][str(self.rank)]["dali"] = base64.b64encode(raw).decode("ascii")
        return out

    def load_state_dict(self, state: dict) -> None:
        """This rank's place from a DALI loader's state: mid-epoch, through its DALI checkpoint; a state that
        cannot continue mid-epoch here starts the next epoch, with one line (see `adopt`)."""
        state, line = self.adopt(state)
        if line:
            log.warning("%s", line)
        self.state.load(state)
        if self.state.positions[0]:
            raw = base64.b64decode(state["ranks"][str(self.rank)]["dali"])
            self._restore = (self.state.epoch, self.state.positions[0], raw)
        self._pipe, self._pipe_at = None, None

    def adopt(self, state: dict) -> tuple[dict, str | None]:
        """A saved loader state (one rank's or merged) -> the state this loader resumes from, and a line when it
        cannot continue mid-epoch: saved by another number of ranks, another backend or other shards, it starts
        at the next epoch boundary (DALI's checkpoints hold one layout's reader positions)."""
        if not isinstance(state, dict) or not isinstance(state.get("ranks"), dict):
            raise MaeastError("loader state is not a loader state_dict; pass what loader.state_dict() returned")
        ranks, epoch = state["ranks"], int(state.get("epoch", 0))
        skipped = {tuple(pair) for r in ranks.values() for pair in r.get("undecodable", ())}
        if skipped - self.undecodable:  # samples the saved run found undecodable: left out here too
            self.undecodable |= skipped
            self.surveyed = self._survey(Errors("skip"))
        if not any(any(r.get("positions", [])) for r in ranks.values()):  # at an epoch boundary: any layout
            fresh = LoaderState.fresh(epoch, self.config.seed, self.world_size, 0, self.rank)
            fresh.stats.update(ranks.get(str(self.rank), {}).get("stats", {}))
            return fresh.to_dict(), None
        mine, why = ranks.get(str(self.rank), {}), None
        if int(state.get("world_size", 0)) != self.world_size or not mine:
            why = f"it was saved by {state.get('world_size')} rank(s), this run has {self.world_size}"
        elif state.get("backend") != "dali" or "dali" not in mine:
            why = f"it was saved by backend {state.get('backend', 'stream')}"
        elif state.get("samples") != self.surveyed.samples:
            why = f"the shards held {state.get('samples')} readable clips then, {self.surveyed.samples} now"
        if why is None:
            return state, None
        epoch += 1
        fresh = LoaderState.fresh(epoch, self.config.seed, self.world_size, 0, self.rank).to_dict()
        line = (f"loader: the DALI loader state of epoch {epoch - 1} cannot continue mid-epoch ({why}); "
                f"resuming at the start of epoch {epoch}, the rest of epoch {epoch - 1} is skipped")
        return fresh, line
