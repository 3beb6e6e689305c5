"""StreamingLoader: the webdataset loader a training loop iterates, checkpoints and resumes.

    loader = StreamingLoader(LoaderConfig(shards=["shards/librispeech"], batch_size=8), rank, world_size)
    for batch in loader:              # one epoch: exactly len(loader) batches on every rank
        ...
    state = loader.state_dict()       # saved with the checkpoint (JSON-serializable)
    loader.load_state_dict(state)     # on resume: neither repeats nor skips a clip of the epoch

    StreamingLoader(config, rank, world_size, keep=Keep.of(keys_by_shard, rule))  # only some clips (keep.py)
"""

from __future__ import annotations

from typing import Iterator

import torch

from maeast.batch import Batch
from maeast.errors import MaeastError
from maeast.features import FbankConfig, get_config
from maeast.loaders.config import LoaderConfig
from maeast.loaders.elastic import deal
from maeast.loaders.keep import Keep
from maeast.loaders.sources import check_labels, check_slots, load_sources, quotas
from maeast.loaders.state import LoaderState, new_stats
from maeast.loaders.stream import Plan
from maeast.loaders.worker import StreamDataset


def dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit rank/world size, or torch.distributed's when it is initialized, else (0, 1)."""
    if rank is None or world_size is None:
        ready = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = rank if rank is not None else (torch.distributed.get_rank() if ready else 0)
        world_size = world_size if world_size is not None else (torch.distributed.get_world_size() if ready else 1)
    if not 0 <= rank < world_size:
        raise MaeastError(f"loader: rank {rank} is not in [0, world_size={world_size})")
    return rank, world_size


class StreamingLoader:
    """Batches (maeast.batch.Batch) from webdataset shards on CPU worker processes."""

    def __init__(self, config: LoaderConfig, rank: int | None = None, world_size: int | None = None,
                 features: FbankConfig | None = None, keep: Keep | None = None):
        """features: the fbank recipe, in place of the preset config.fbank names (e.g. with corpus statistics).
        keep: read only these clips of the split (a fold's, a carved part's; maeast.loaders.keep), chosen
        before shuffling and batching; None: every clip."""
        self.config = config
        self.keep = keep
        self.features = get_config(features or config.fbank)
        self.rank, self.world_size = dist_rank_world(rank, world_size)
        self.sources = load_sources(config.shards, config.split, config.weights)
        check_slots(self.sources, self.world_size, config.num_workers)
        if keep is not None:
            keep.check(self.sources)
        if config.finetune:
            check_labels(self.sources)
        self.state = LoaderState.fresh(0, config.seed, self.world_size, config.num_workers, self.rank)

    # What the model and the metrics need to know about the labels.
    @property
    def labels(self) -> list[str]:
        return list(self.sources[0].labels)

    @property
    def multi_label(self) -> bool:
        return self.sources[0].multi_label

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def stats(self) -> dict[str, int]:
        """Counters since construction (or the loaded state): bad_samples, bad_shards, short, wrapped_passes."""
        return dict(self.state.stats)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (a no-op if the loader is already in it)."""
        if epoch != self.state.epoch:
            stats = self.state.stats
            self.state = LoaderState.fresh(epoch, self.config.seed, self.world_size, self.config.num_workers, self.rank)
            self.state.stats = stats

    def quotas(self) -> list[int]:
        """Batches each of this rank's workers yields in the current epoch."""
        c = self.config
        if self.state.rest is not None:  # a re-dealt rest of the epoch (maeast.loaders.elastic)
            return [len(items) for items in self._dealt()]
        return quotas(self.sources, c.seed, self.state.epoch, self.world_size, c.num_workers, c.batch_size,
                      c.drop_last, c.epoch_batches, 0.0 if c.finetune else c.min_seconds, self.keep)[self.rank]

    def _dealt(self) -> list[list[tuple[int, int]]]:
        return deal(self.state.rest, self.rank, self.world_size, self.config.num_workers, self.state.dealt)

    def __len__(self) -> int:
        return sum(self.quotas())

    def state_dict(self) -> dict:
        return self.state.to_dict()

    def load_state_dict(self, state: dict) -> None:
        self.state.load(state)

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch; the epoch advances when its last batch is handed out."""
        c, state = self.config, self.state
        if state.rest is not None and sum(state.positions) >= sum(self.quotas()):  # a re-dealt batch was bad
            state.next_epoch()
        rest = None if state.rest is None else {**state.rest, "items": self._dealt()}
        quotas = self.quotas()
        plan = Plan(c, self.sources, self.rank, self.world_size, state.epoch, quotas, list(state.batches),
                    list(state.positions), self.features, rest, state.first_worker(quotas), self.keep)
        total, done = sum(plan.quotas), sum(state.batches)
        if done >= total:
            return
        workers = dict(num_workers=c.num_workers, prefetch_factor=c.prefetch) if c.num_workers else {}
        loader = torch.utils.data.DataLoader(StreamDataset(plan), batch_size=None, **workers,
                                             pin_memory=c.pin_memory and torch.cuda.is_available())
        base, live = dict(state.stats), {}
        try:
            for item in loader:
                live[item["worker"]] = item["stats"]
                state.stats = {k: base.get(k, 0) + sum(s[k] for s in live.values()) for k in new_stats()}
                state.consume(item["worker"], item["position"])
                done += 1
                if done == total:
                    state.next_epoch()
                yield Batch(item["features"], item["padding_mask"], item["labels"], list(item["keys"]),
                            item["waveform"], item["lengths"], self.features, plan.sample_rate)
        except MaeastError as e:  # raised in a worker: keep the one line, not the worker's traceback
            raise MaeastError(_last_line(str(e))) from None


def _last_line(message: str) -> str:
    tail = message.strip().splitlines()[-1] if message.strip() else message
    marker = "MaeastError: "
    return tail.split(marker, 1)[1] if marker in tail else tail
