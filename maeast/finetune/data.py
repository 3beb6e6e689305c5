"""A task's shards: the corpus check, the folds, and the loaders of each pass (train, valid, test).

Cross-validation corpora (ESC-50, IEMOCAP) keep every clip in split "train" with its `fold` in the
sample JSON. `open_corpus` reads those folds once (key -> fold); a fold's training pass streams the
split and drops the held-out fold's clips from each batch (`Selection.rows`), its test pass keeps
only them. So no clip is ever in both the training and the test pass of a fold. The training
loader's batch is enlarged by 1 / (share of clips kept), so the batches that reach the model hold
about data.batch_size clips.

A custom corpus without its own valid or test split (maeast.finetune.custom) has them carved out of
its train split the same way: `part_of` (key -> "train", "valid" or "test", by key hash) takes the
place of the folds, and each pass keeps its part's clips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from maeast.batch import Batch
from maeast.errors import MaeastError
from maeast.features import FbankConfig, get_config
from maeast.finetune.custom import CustomPlan, SeededSplit, resolve_custom
from maeast.finetune.tasks import Task
from maeast.loaders import LoaderConfig, StreamingLoader
from maeast.shards.format import INDEX, iter_meta, read_index, shard_paths


@dataclass
class Corpus:
    """One task's shard folder, checked against the task (for custom: the task resolved on it)."""

    dir: Path
    task: Task
    index: dict
    train_split: str
    fold_of: dict[str, int] = field(default_factory=dict)
    """Cross-validation tasks: key -> fold of every clip of the train split."""
    plan: CustomPlan | None = None
    """Custom task: its splits, seeded parts and clip length."""

    @property
    def part_of(self) -> dict[str, str]:
        """Custom task with a carved valid or test: key -> part of every clip of the train split, else {}."""
        return self.plan.part_of if self.plan else {}

    @property
    def carved(self) -> tuple[str, ...]:
        """The roles ("valid", "test") carved out of the train split (custom task), else ()."""
        return self.plan.carved if self.plan else ()

    @property
    def clip_rule(self) -> str:
        """How the task's clip length was chosen."""
        return self.plan.clip_rule if self.plan else f"task {self.task.name}'s recipe"

    @property
    def labels(self) -> list[str]:
        return list(self.index["labels"])

    @property
    def multi_label(self) -> bool:
        return bool(self.index["multi_label"])

    @property
    def folds(self) -> list[int]:
        """The folds present (cross-validation tasks), else [] ."""
        return sorted(set(self.fold_of.values()))

    def shard_count(self, split: str) -> int:
        return len(self.index["splits"][split]["shards"])

    def samples(self, split: str) -> int:
        return int(self.index["splits"][split]["samples"])


def open_corpus(task: Task, shards: str | Path, train_split: str | None = None,
                seeded: SeededSplit | None = None) -> Corpus:
    """Read and check the task's shard folder (and, for cross-validation, every clip's fold; for the
    custom task, resolve the task on it, carving a missing valid or test split as `seeded` says)."""
    folder = Path(shards)
    if not (folder / INDEX).is_file():
        raise MaeastError(f"no shards for task {task.name} in {folder}: build them with `{task.build}` "
                          f"or give --data SHARD_DIR")
    index = read_index(folder)
    if task.from_corpus:
        resolved, plan = resolve_custom(folder, index, train_split, seeded or SeededSplit())
        return Corpus(folder, resolved, index, resolved.train_split, plan=plan)
    if index["corpus"] not in task.corpora:
        raise MaeastError(f"{folder} holds corpus {index['corpus']!r}; task {task.name} reads "
                          f"{' or '.join(task.corpora)} shards: build them with `{task.build}`")
    split = train_split or task.train_split
    for needed in (split, task.valid_split, task.test_split):
        if needed and needed not in index["splits"]:
            raise MaeastError(f"{folder} has no split {needed!r} (it has {', '.join(sorted(index['splits']))}), "
                              f"which task {task.name} needs")
    corpus = Corpus(folder, task, index, split)
    if task.cross_validation:
        corpus.fold_of = read_folds(folder, split)
    return corpus


def read_folds(folder: Path, split: str) -> dict[str, int]:
    """key -> fold for every sample of a split (a clip without a fold is an error)."""
    out: dict[str, int] = {}
    for shard in shard_paths(folder, split):
        for key, meta in iter_meta(shard):
            fold = meta.get("fold")
            if fold is None:
                raise MaeastError(f"{shard}: sample {key} has no fold; cross-validation needs shards built by the "
                                  f"esc50 or iemocap recipe")
            out[key] = int(fold)
    return out


@dataclass(frozen=True)
class Selection:
    """The clips of one pass: a split, and for cross-validation the folds it keeps, or for a custom
    corpus's carved split the part ("train", "valid", "test") it keeps."""

    split: str
    folds: frozenset[int] | None = None  # None: every clip of the split (or of its part)
    part: str | None = None  # None: every clip of the split (or of its folds)

    def rows(self, keys: list[str], corpus: Corpus) -> list[int]:
        """Indices of the batch rows this pass keeps."""
        if self.part is not None:
            return [i for i, k in enumerate(keys) if corpus.part_of.get(k) == self.part]
        if self.folds is None:
            return list(range(len(keys)))
        return [i for i, k in enumerate(keys) if corpus.fold_of[k] in self.folds]

    def share(self, corpus: Corpus) -> float:
        """Fraction of the split's clips kept."""
        if self.part is not None:
            return sum(p == self.part for p in corpus.part_of.values()) / max(len(corpus.part_of), 1)
        if self.folds is None:
            return 1.0
        kept = sum(f in self.folds for f in corpus.fold_of.values())
        return kept / max(len(corpus.fold_of), 1)


def selections(corpus: Corpus, fold: int | None) -> dict[str, Selection]:
    """{"train", "valid" (if the task has one), "test"} for one fold (None: the task's fixed splits)."""
    task = corpus.task

    def pick(role: str, split: str) -> Selection:
        return Selection(split, part=role if role in corpus.carved else None)

    if fold is None:
        out = {"train": Selection(corpus.train_split, part="train" if corpus.carved else None),
               "test": pick("test", task.test_split)}
    else:
        rest = frozenset(f for f in corpus.folds if f != fold)
        out = {"train": Selection(corpus.train_split, rest), "test": Selection(corpus.train_split, frozenset([fold]))}
    if task.valid_split:
        out["valid"] = pick("valid", task.valid_split)
    return out


def make_loader(corpus: Corpus, selection: Selection, *, train: bool, batch_size: int, clip_seconds: float,
                fbank: str | FbankConfig, seed: int, workers: int, shuffle_buffer: int, epoch_batches: int | None,
                on_error: str, rank: int = 0, world_size: int = 1) -> StreamingLoader:
    """A finetune-mode loader over a selection's split: random crops and shuffling in training,
    crops from the start in shard order for evaluation (pass rank 0 of 1 to read all of it).
    fbank: a preset name or the whole recipe (dataset statistics included)."""
    per_rank = corpus.shard_count(selection.split) // world_size
    if per_rank < 1:
        raise MaeastError(f"{corpus.dir} split {selection.split!r} has {corpus.shard_count(selection.split)} shard(s) "
                          f"for {world_size} processes; rebuild with a smaller --shard-size or use fewer processes")
    enlarged = math.ceil(batch_size / selection.share(corpus)) if train else batch_size
    config = LoaderConfig(shards=[str(corpus.dir)], split=selection.split, mode="finetune", clip_seconds=clip_seconds,
                          random_crop=train, batch_size=enlarged, num_workers=min(workers, per_rank),
                          shuffle_buffer=shuffle_buffer if train else 0, seed=seed, fbank=get_config(fbank).name,
                          epoch_batches=epoch_batches if train else None, on_error=on_error)
    return StreamingLoader(config, rank, world_size, get_config(fbank))


def take_rows(batch: Batch, rows: list[int]) -> Batch:
    if len(rows) == len(batch):
        return batch
    index = torch.tensor(rows, dtype=torch.long)
    mask = None if batch.padding_mask is None else batch.padding_mask[index]
    labels = None if batch.labels is None else batch.labels[index]
    return Batch(batch.features[index], mask, labels, [batch.keys[i] for i in rows])


def selected(loader, selection: Selection, corpus: Corpus) -> Iterator[Batch]:
    """The loader's batches with only the selection's clips (possibly empty batches)."""
    for batch in loader:
        yield take_rows(batch, selection.rows(batch.keys, corpus))
