"""Evaluation batches: clips cropped to the task's length, or whole (Task.eval_whole: SUPERB SID, ER).

    batches = evaluation_loader(corpus, selection, whole=True, batch_size=16, max_seconds=320, ...)

Whole clips (s3prl scores SID's and ER's dev and test utterances uncropped) are read in shard order,
`POOL` clips at a time; each pool is sorted by length and cut into batches of at most batch_size
clips and at most max_seconds of padded audio (clips x the batch's longest clip), so a batch of
long clips holds fewer of them and no batch grows with the longest clip of the corpus; a clip longer
than max_seconds goes alone. A batch is padded to its longest clip, and the padding mask takes the
padded frames out of the encoder's attention and of the pooling (maeast.model.heads.mean_pool), so a
clip scores as it would alone.
"""

from __future__ import annotations

from typing import Iterator

from maeast.batch import Batch
from maeast.features import FbankConfig, get_config
from maeast.finetune.data import Corpus, Selection, make_loader
from maeast.loaders import lengths
from maeast.loaders.baddata import Errors
from maeast.loaders.cache import ShardCache
from maeast.loaders.config import StreamConfig
from maeast.loaders.sources import load_sources
from maeast.loaders.stream import Sample, decode_window, read_shard

POOL = 512
"""Clips sorted together by length (their compressed audio is held in memory meanwhile)."""


class WholeClips:
    """Every clip of a selection, whole, in length-bucketed batches padded to their longest clip."""

    def __init__(self, corpus: Corpus, selection: Selection, fbank: str | FbankConfig, batch_size: int,
                 max_seconds: float, stream: StreamConfig):
        self.corpus, self.selection, self.fbank = corpus, selection, get_config(fbank)
        self.batch_size, self.stream = batch_size, stream
        self.source = load_sources([str(corpus.dir)], selection.split)[0]
        self.max_samples = round(max_seconds * self.source.sample_rate)

    def set_epoch(self, epoch: int) -> None:
        """Evaluation reads the same clips in the same order every time."""

    def __iter__(self) -> Iterator[Batch]:
        errors = Errors(self.stream.on_error)
        cache = ShardCache(self.stream.cache_dir, self.stream.cache_gb) if self.stream.cache_dir else None
        pool: list[Sample] = []
        for shard in self.source.shards:
            for sample in read_shard(shard, self.stream.verify_checksums, errors, cache):
                if self.selection.keeps(sample.key, self.corpus):
                    pool.append(sample)
                if len(pool) == POOL:
                    yield from self._batches(pool, errors)
                    pool = []
        if pool:
            yield from self._batches(pool, errors)

    def _batches(self, pool: list[Sample], errors: Errors) -> Iterator[Batch]:
        batch: list[Sample] = []
        for sample in sorted(pool, key=_length):  # batch[-1] is the longest so far
            grown = len(batch) + 1
            if batch and (grown > self.batch_size or grown * _length(sample) > self.max_samples):
                yield from self._make(batch, errors)
                batch = []
            batch.append(sample)
        if batch:
            yield from self._make(batch, errors)

    def _make(self, samples: list[Sample], errors: Errors) -> Iterator[Batch]:
        rate = self.source.sample_rate
        waves = [decode_window(s, 0, _length(s), rate, errors) for s in samples]
        kept = [(s, w) for s, w in zip(samples, waves) if w is not None]
        if not kept:
            return
        wave, lens = lengths.stack([w for _, w in kept])  # [B, N_max], [B]
        label_ids = [s.meta.get("label_ids", []) for s, _ in kept]
        yield lengths.make_batch(wave, lens, [s.key for s, _ in kept], label_ids, preset=self.fbank,
                                 sample_rate=rate, num_classes=len(self.source.labels),
                                 multi_label=self.source.multi_label)


def _length(sample: Sample) -> int:
    return int(sample.meta["num_samples"])


def evaluation_loader(corpus: Corpus, selection: Selection, *, whole: bool, batch_size: int, max_seconds: float,
                      clip_seconds: float, fbank: str | FbankConfig, stream: StreamConfig):
    """The batches an evaluation pass (or a frozen encoder's feature cache) reads: whole clips, or clips
    cropped from their start to clip_seconds (the streaming loader, shard order). Either reads only the
    selection's clips, chosen by key before batching (WholeClips.__iter__, the loader's keep-rule)."""
    if whole:
        return WholeClips(corpus, selection, fbank, batch_size, max_seconds, stream)
    return make_loader(corpus, selection, train=False, batch_size=batch_size, clip_seconds=clip_seconds, fbank=fbank,
                       seed=0, shuffle_buffer=0, epoch_batches=None, stream=stream)


def whole_clips(corpus: Corpus, split: str, evaluation: bool) -> bool:
    """Whether a pass over `split` reads whole clips: always for a task without a crop, and for an
    evaluation pass (or the cache of a split other than the train split) of a Task.eval_whole task."""
    task = corpus.task
    return task.clip_seconds is None or (task.eval_whole and (evaluation or split != corpus.train_split))
