"""The FFCV loader (the `ffcv` extra): precomputed fixed-size fbanks for fine-tuning sets read many times.

`write_beton` runs the webdataset loader once over a split (fine-tuning mode, no shuffle, no random
crop: every clip cropped from its start or zero-padded to clip_seconds), and writes each clip's
features [T, F] (float32), its number of real frames, its label and its position into a .beton;
`FILE.beton.json` beside it records the keys, labels, fbank recipe, clip length and the sha256 of the
shards' index.json. `ensure_beton` (fine-tuning's `data.backend: ffcv`) reuses a .beton whose record
matches the shards, the recipe and the clip length, and writes it again when any of them changed.
`FFCVLoader` reads it back with the same batch contract and loader state as the other loaders, only
a keep-rule's clips (a fold's) when given one. The stored crop is each clip's start: training on
ffcv sees the same window of a long clip every epoch (the stream and dali backends crop at random).
Pretraining crops a new window of each whole clip every epoch, which does not fit here (LoaderConfig
refuses backend ffcv in pretraining).
This is the only module that imports ffcv, and only when it is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from maeast.batch import Batch
from maeast.errors import MaeastError
from maeast.features import FbankConfig, get_config
from maeast.files import write_json
from maeast.loaders.config import LoaderConfig
from maeast.loaders.keep import Keep
from maeast.loaders.loader import StreamingLoader, dist_rank_world
from maeast.loaders.sources import load_sources
from maeast.streams import LOADER_STREAMS, derive_seed
from maeast.loaders.state import LoaderState, SingleStreamState
from maeast.loaders.baddata import Errors
from maeast.loaders.stream import read_shard
from maeast.shards.format import INDEX
from maeast.shards.storage import is_url, join, read_bytes, redact

FORMAT = "maeast-ffcv/1"


def _ffcv():
    threads = torch.get_num_threads()  # importing ffcv sets torch's (process-wide) threads to 1
    try:
        import ffcv  # noqa: F401
        from ffcv.fields import IntField, NDArrayField
        from ffcv.fields.decoders import IntDecoder, NDArrayDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import ToTensor
        from ffcv.writer import DatasetWriter
    except ImportError as e:
        raise MaeastError(f"backend ffcv needs FFCV: pip install 'maeast[ffcv]' ({e})") from None
    finally:
        torch.set_num_threads(threads)
    return IntField, NDArrayField, IntDecoder, NDArrayDecoder, Loader, OrderOption, ToTensor, DatasetWriter


def longest_clip(shard_dir: Path, split: str, cap: float = 10.0) -> float:
    """The split's longest clip in seconds (from the samples' JSON), capped at `cap`."""
    source = load_sources([str(shard_dir)], split)[0]
    errors = Errors("skip")
    longest = max(int(s.meta["num_samples"]) for shard in source.shards for s in read_shard(shard, False, errors))
    return min(longest / source.sample_rate, cap)


class _Rows:
    """The precomputed rows, indexable for ffcv's writer processes (reads a memmap, cannot fail)."""

    def __init__(self, path: Path, n: int):
        self.path, self.n, self.rows = path, n, None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.rows is None:  # opened in the writer's process
            self.rows = np.load(self.path, mmap_mode="r", allow_pickle=False)
        row = self.rows[i]
        return np.array(row["features"]), int(row["frames"]), np.array(row["label"]), i


def beton_name(corpus: str, split: str) -> str:
    """The file name fine-tuning's data.backend ffcv looks for (in data.cache_dir, else beside the shards)."""
    return f"{corpus}-{split}.beton"


def recipe(features: FbankConfig) -> dict:
    """An fbank recipe as the .beton.json records it (statistics included)."""
    return json.loads(json.dumps(dataclasses.asdict(features)))


def index_sha256(shard_dir) -> str:
    return hashlib.sha256(read_bytes(join(shard_dir, INDEX))).hexdigest()


def ensure_beton(shard_dir, split: str, clip_seconds: float, features: FbankConfig, out: Path,
                 workers: int = 2) -> tuple[Path, bool]:
    """The .beton of a split at `out`, reused when its record matches the shards (index.json's sha256), the
    fbank recipe and the clip length, else (re)written; returns it and whether it was written."""
    side = Path(f"{out}.json")
    wanted = {"format": FORMAT, "index_sha256": index_sha256(shard_dir), "features": recipe(features),
              "clip_seconds": clip_seconds, "split": split}
    if out.is_file() and side.is_file():
        record = json.loads(side.read_text())
        if all(record.get(k) == v for k, v in wanted.items()):
            return out, False
    write_beton(shard_dir, split, clip_seconds, out, features, workers)
    return out, True


def write_beton(shard_dir: Path, split: str = "train", clip_seconds: float | None = None, out: Path | None = None,
                fbank: str | FbankConfig = "mae_ast", workers: int = 2) -> dict:
    """Shards of one split -> a .beton of fixed-size fbanks and labels; returns the sidecar record.
    fbank: a preset name or the whole recipe (corpus statistics included)."""
    IntField, NDArrayField, _, _, _, _, _, DatasetWriter = _ffcv()
    if is_url(shard_dir) and out is None:
        raise MaeastError(f"{redact(shard_dir)} is a URL: give --out, the local .beton to write")
    shard_dir = shard_dir if is_url(shard_dir) else Path(shard_dir)
    source = load_sources([str(shard_dir)], split)[0]
    clip_seconds = clip_seconds or longest_clip(shard_dir, split)
    out = Path(out) if out else shard_dir / beton_name(source.corpus, split)
    if out.suffix != ".beton":
        raise MaeastError(f"--out {out} should end in .beton")
    out.parent.mkdir(parents=True, exist_ok=True)
    features = get_config(fbank)
    cfg = LoaderConfig(shards=[str(shard_dir)], split=split, mode="finetune", clip_seconds=clip_seconds,
                       random_crop=False, shuffle_buffer=0, batch_size=16, fbank=features.name,
                       num_workers=min(workers, len(source.shards)))
    loader = StreamingLoader(cfg, 0, 1, features)
    frames = features.num_frames(round(clip_seconds * source.sample_rate), source.sample_rate)
    classes = len(source.labels)
    label = ("label", np.float32, (classes,)) if source.multi_label else ("label", np.int64, ())
    dtype = np.dtype([("features", np.float32, (frames, features.n_mels)), ("frames", np.int64), label])
    tmp = out.with_name(f".{out.name}.rows.npy")
    rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(source.samples,))
    keys: list[str] = []
    seen: set[str] = set()
    for batch in loader:  # one pass; a worker that met bad samples wraps around: keep first sightings
        real = batch.features.shape[1] - (batch.padding_mask.sum(1) if batch.padding_mask is not None else 0)
        for i, key in enumerate(batch.keys):
            if key in seen:
                continue
            seen.add(key)
            row = rows[len(keys)]
            row["features"], row["label"] = batch.features[i].numpy(), batch.labels[i].numpy()
            row["frames"] = int(real[i]) if torch.is_tensor(real) else int(real)
            keys.append(key)
    rows.flush()
    del rows
    label_field = NDArrayField(np.dtype("float32"), (classes,)) if source.multi_label else IntField()
    fields = {"features": NDArrayField(np.dtype("float32"), dtype["features"].shape), "frames": IntField(),
              "label": label_field, "index": IntField()}
    try:
        DatasetWriter(str(out), fields, num_workers=1).from_indexed_dataset(
            _Rows(tmp, len(keys)))
    finally:
        tmp.unlink(missing_ok=True)
    where = str(shard_dir) if is_url(shard_dir) else str(shard_dir.resolve())
    record = {"format": FORMAT, "corpus": source.corpus, "split": split, "shards": where,
              "fbank": features.name, "features": recipe(features), "index_sha256": index_sha256(shard_dir),
              "clip_seconds": clip_seconds, "frames": frames, "n_mels": features.n_mels,
              "sample_rate": source.sample_rate, "labels": list(source.labels), "multi_label": source.multi_label,
              "samples": len(keys), "skipped": loader.stats["bad_samples"] + loader.stats["bad_shards"], "keys": keys}
    write_json(Path(f"{out}.json"), record, sort_keys=True)
    return record


class FFCVLoader(SingleStreamState):
    """Batches from a .beton written by write_beton; same contract as StreamingLoader."""

    def __init__(self, config: LoaderConfig, rank: int | None = None, world_size: int | None = None,
                 features: FbankConfig | None = None, keep: Keep | None = None):
        """features: the fbank recipe the .beton must hold (statistics included; None: config.fbank's preset);
        keep: only these clips of it (by key; maeast.loaders.keep)."""
        _ffcv()
        self.path = Path(config.shards[0])
        side = Path(f"{self.path}.json")
        if not self.path.is_file() or not side.is_file():
            raise MaeastError(f"{self.path} (and {side.name} beside it) not found; write it with `maeast shard ffcv`")
        self.meta = json.loads(side.read_text())
        if self.meta.get("format") != FORMAT:
            raise MaeastError(f"{side} is not a {FORMAT} record; rewrite it with `maeast shard ffcv`")
        if config.fbank != self.meta["fbank"]:
            raise MaeastError(f"{self.path} holds {self.meta['fbank']} fbanks, the config asks for {config.fbank}")
        if abs(config.clip_seconds - self.meta["clip_seconds"]) > 1e-9:
            raise MaeastError(f"{self.path} holds {self.meta['clip_seconds']} s clips, the config asks for "
                              f"{config.clip_seconds} s; rewrite it with --clip-seconds {config.clip_seconds}")
        if features is not None and self.meta.get("features", recipe(features)) != recipe(features):
            raise MaeastError(f"{self.path} holds fbanks of another {features.name} recipe (other statistics); "
                              f"rewrite it with the run's recipe (fine-tuning's data.backend ffcv does)")
        self.config = config
        self.rank, self.world_size = dist_rank_world(rank, world_size)
        keys = self.meta["keys"]
        self.rows = [i for i, key in enumerate(keys) if keep is None or key in keep]  # the clips read, in file order
        self.per_rank = len(self.rows) // self.world_size
        if self.per_rank == 0:
            raise MaeastError(f"{self.path} has {len(self.rows)} clip(s) to read for {self.world_size} ranks")
        self.state = LoaderState.fresh(0, config.seed, self.world_size, 0, self.rank)

    labels = property(lambda self: list(self.meta["labels"]))
    multi_label = property(lambda self: bool(self.meta["multi_label"]))

    def __len__(self) -> int:
        b = self.config.batch_size
        return self.per_rank // b if self.config.drop_last else -(-self.per_rank // b)

    def __getstate__(self):  # ffcv's Loader holds compiled code; a copy makes its own
        return {**self.__dict__, "_loader": None}

    def _order(self) -> np.ndarray:
        """This rank's clips in this epoch's order (all ranks the same count)."""
        order = list(self.rows)
        if self.config.shuffle_buffer:
            random.Random(derive_seed(self.config.seed, self.state.epoch, LOADER_STREAMS["ffcv_order"])).shuffle(order)
        return np.array(order[self.rank::self.world_size][: self.per_rank], dtype=np.uint64)

    def _ffcv_loader(self, indices: np.ndarray):
        """ffcv's Loader, made (and JIT-compiled) once, then pointed at each epoch's order."""
        _, _, IntDecoder, NDArrayDecoder, Loader, OrderOption, ToTensor, _ = _ffcv()
        c = self.config
        if getattr(self, "_loader", None) is None:
            label = [NDArrayDecoder(), ToTensor()] if self.multi_label else [IntDecoder(), ToTensor()]
            from numba import config as numba_config
            workers = min(max(c.num_workers, 1), numba_config.NUMBA_NUM_THREADS)  # ffcv's threads, at most the cores
            self._loader = Loader(str(self.path), batch_size=c.batch_size, num_workers=workers,
                                  order=OrderOption.SEQUENTIAL, indices=indices, drop_last=c.drop_last,
                                  pipelines={"features": [NDArrayDecoder(), ToTensor()],
                                             "frames": [IntDecoder(), ToTensor()], "label": label,
                                             "index": [IntDecoder(), ToTensor()]})
        loader = self._loader
        # SEQUENTIAL walks loader.indices as given; len(loader) reads first_traversal_order
        loader.indices = loader.traversal_order.indices = loader.first_traversal_order = indices
        return loader

    def __iter__(self) -> Iterator[Batch]:
        return self._counted(self._batches())

    def _batches(self) -> Iterator[tuple[int, Batch]]:
        c, done = self.config, self.state.batches[0]
        threads = torch.get_num_threads()  # ffcv sets torch's process-wide threads to its own count
        loader = self._ffcv_loader(self._order()[done * c.batch_size:])
        keys = self.meta["keys"]
        try:
            for features, frames, labels, index in loader:
                torch.set_num_threads(threads)  # the training loop keeps its own
                frames = frames.reshape(-1).long()
                mask = torch.arange(features.shape[1]).unsqueeze(0) >= frames.unsqueeze(1)  # [B, T]
                if not self.multi_label:
                    labels = labels.reshape(-1).long()
                yield done, Batch(features.clone(), mask if bool(mask.any()) else None, labels.clone(),
                                  [keys[i] for i in index.reshape(-1).tolist()])
                done += 1
        finally:
            torch.set_num_threads(threads)
