"""A task's shards: the corpus check, the folds, and the loaders of each pass (train, valid, test).

Cross-validation corpora (ESC-50, IEMOCAP) keep every clip in split "train" with its `fold` in the
sample JSON. `open_corpus` reads those folds once (key -> fold); a fold's training pass streams the
split keeping only the other folds' clips, its test pass only the fold's (`Selection.keep_rule`: the
loader's keep-rule, maeast.loaders.keep, applied by key where each worker plans its stream, before
shuffling and batching). So no clip is ever in both the training and the test pass of a fold, a
held-out clip is never decoded, and every batch holds data.batch_size kept clips.

A custom corpus without its own valid or test split (maeast.finetune.custom) has them carved out of
its train split the same way: `part_of` (key -> "train", "valid" or "test", by key hash) takes the
place of the folds, and each pass keeps its part's clips. A cross-validation task with a dev share
(Task.dev_fraction, SUPERB ER) carves its dev clips out of the training folds by the same key hash:
a fold's training pass keeps the other folds' "train" part, its valid pass their "valid" part, so
the dev clips are never trained on and never come from the tested fold.

What the passes need of every clip (its shard, fold, length and class) is read once from the
samples' JSON (`scan_shards`), and only when the run needs it: folds, a dev share, whole clips in
training (the longest clip sets the padding cap) or class-balanced sampling (the class counts set
the weights); a carved part of a custom corpus reads its clips' shards when its pass first needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from maeast.errors import MaeastError
from maeast.features import FbankConfig, get_config
from maeast.finetune.custom import CustomPlan, SeededSplit, resolve_custom
from maeast.finetune.tasks import Task
from maeast.loaders import Keep, LoaderConfig, StreamConfig, build_loader
from maeast.shards.format import INDEX, iter_meta, read_index, shard_paths
from maeast.shards.storage import exists, is_url, join, redact


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
    dev_of: dict[str, str] = field(default_factory=dict)
    """Task with a dev share: key -> "train" or "valid" of every clip of the train split."""
    label_of: dict[str, int] = field(default_factory=dict)
    """Opened for class-balanced training (data.balanced): key -> class id of every clip of the train split."""
    longest: float | None = None
    """Task without a crop (clip_seconds None): the longest clip of the train split, in seconds."""
    shard_keys: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """Split -> shard name -> its sample keys in order, for the splits read so far (keys_by_shard)."""

    @property
    def part_of(self) -> dict[str, str]:
        """A carved valid or test (custom task, dev share): key -> part of every clip of the train split, else {}."""
        return self.plan.part_of if self.plan else self.dev_of

    @property
    def carved(self) -> tuple[str, ...]:
        """The roles ("valid", "test") carved out of the train split (custom task, dev share), else ()."""
        return self.plan.carved if self.plan else (("valid",) if self.dev_of else ())

    @property
    def clip_rule(self) -> str:
        """How the task's clip length was chosen."""
        if self.plan:
            return self.plan.clip_rule
        return f"task {self.task.name}'s recipe" + (": no crop, the longest clip" if self.longest else "")

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

    def keys_by_shard(self, split: str) -> dict[str, list[str]]:
        """Shard name -> its sample keys of a split (from the samples' JSON, read once per split)."""
        if split not in self.shard_keys:
            _scanned(self, split)
        return self.shard_keys[split]

    def shard_count(self, split: str) -> int:
        return len(self.index["splits"][split]["shards"])

    def samples(self, split: str) -> int:
        return int(self.index["splits"][split]["samples"])


def open_corpus(task: Task, shards: str | Path, train_split: str | None = None,
                seeded: SeededSplit | None = None, balanced: bool = False) -> Corpus:
    """Read and check the task's shard folder (and, for cross-validation, every clip's fold; for the
    custom task, resolve the task on it, carving a missing valid or test split as `seeded` says;
    balanced: every train clip's class, for class_weights)."""
    folder = shards if is_url(shards) else Path(shards)
    if not exists(join(folder, INDEX)):
        raise MaeastError(f"no shards for task {task.name} in {redact(folder)}: build them with `{task.build}` "
                          f"or give --data SHARD_DIR (a folder or URL)")
    index = read_index(folder)
    if balanced and index["multi_label"]:
        raise MaeastError(f"{folder} is multi-label; data.balanced draws single-label clips by their class: "
                          f"set --data.balanced false")
    if task.from_corpus:
        resolved, plan = resolve_custom(folder, index, train_split, seeded or SeededSplit())
        corpus = Corpus(folder, resolved, index, resolved.train_split, plan=plan)
        if balanced:
            clips = _scanned(corpus, corpus.train_split)
            corpus.label_of = {key: int(meta["label_ids"][0]) for key, meta in clips.items()}
        return corpus
    if index["corpus"] not in task.corpora:
        raise MaeastError(f"{folder} holds corpus {index['corpus']!r}; task {task.name} reads "
                          f"{' or '.join(task.corpora)} shards: build them with `{task.build}`")
    split = train_split or task.train_split
    for needed in (split, task.valid_split, task.test_split):
        if needed and needed not in index["splits"]:
            raise MaeastError(f"{folder} has no split {needed!r} (it has {', '.join(sorted(index['splits']))}), "
                              f"which task {task.name} needs")
    corpus = Corpus(folder, task, index, split)
    if task.cross_validation or task.dev_fraction or balanced or task.clip_seconds is None:
        clips = _scanned(corpus, split)
        if task.cross_validation:
            corpus.fold_of = folds_of(clips, folder)
        if task.dev_fraction:
            corpus.dev_of = SeededSplit(task.dev_fraction, 0.0).parts(list(clips), ("valid",))
        if balanced:
            corpus.label_of = {key: int(meta["label_ids"][0]) for key, meta in clips.items()}
        if task.clip_seconds is None:
            corpus.longest = max(int(m["num_samples"]) / int(index["sample_rate"]) for m in clips.values())
    return corpus


def scan_shards(folder: Path, split: str) -> dict[str, dict[str, dict]]:
    """Shard name -> key -> JSON of every sample of a split, in index order (the audio members are seeked
    over, never read)."""
    index = read_index(folder)
    names = [entry["name"] for entry in index["splits"][split]["shards"]]
    return {name: dict(iter_meta(path)) for name, path in zip(names, shard_paths(folder, split, index))}


def scan(folder: Path, split: str) -> dict[str, dict]:
    """key -> JSON of every sample of a split (the audio members are seeked over, never read)."""
    return {key: meta for clips in scan_shards(folder, split).values() for key, meta in clips.items()}


def _scanned(corpus: Corpus, split: str) -> dict[str, dict]:
    """scan, keeping each shard's keys in the corpus (Corpus.keys_by_shard) for the passes' keep-rules."""
    shards = scan_shards(corpus.dir, split)
    corpus.shard_keys[split] = {name: list(clips) for name, clips in shards.items()}
    return {key: meta for clips in shards.values() for key, meta in clips.items()}


def folds_of(clips: dict[str, dict], folder: Path) -> dict[str, int]:
    """key -> fold of every clip (a clip without a fold is an error)."""
    bare = next((key for key, meta in clips.items() if meta.get("fold") is None), None)
    if bare is not None:
        raise MaeastError(f"{folder}: sample {bare} has no fold; cross-validation needs shards built by the esc50 "
                          f"or iemocap recipe")
    return {key: int(meta["fold"]) for key, meta in clips.items()}


def class_weights(corpus: Corpus, selection: "Selection") -> list[float]:
    """Per class, the expected draws per pass of each of its clips under s3prl's class-balanced sampler:
    torch's WeightedRandomSampler with weight N / n_c draws N clips a pass, each of class c with
    probability 1 / (C n_c), so a clip of class c is drawn N / (C n_c) times (C: classes present)."""
    keys = list(corpus.label_of)
    labels = [corpus.label_of[keys[i]] for i in selection.rows(keys, corpus)]
    counts = torch.bincount(torch.tensor(labels), minlength=len(corpus.labels)).double()
    present = int((counts > 0).sum())
    weights = len(labels) / (present * counts.clamp(min=1))
    return torch.where(counts > 0, weights, torch.zeros_like(weights)).tolist()


@dataclass(frozen=True)
class Selection:
    """The clips of one pass: a split, and the folds it keeps (cross-validation) and/or the part ("train",
    "valid", "test") of a carved split it keeps (a custom corpus; a dev share: both)."""

    split: str
    folds: frozenset[int] | None = None  # None: every clip of the split (or of its part)
    part: str | None = None  # None: every clip of the split (or of its folds)

    def keeps(self, key: str, corpus: Corpus) -> bool:
        return ((self.folds is None or corpus.fold_of[key] in self.folds)
                and (self.part is None or corpus.part_of.get(key) == self.part))

    def rows(self, keys: list[str], corpus: Corpus) -> list[int]:
        """Indices of the keys this pass keeps (rows of cached features, of the class counts)."""
        if self.folds is None and self.part is None:
            return list(range(len(keys)))
        return [i for i, k in enumerate(keys) if self.keeps(k, corpus)]

    def keep_rule(self, corpus: Corpus) -> Keep | None:
        """The loader's keep-rule for this pass (maeast.loaders.keep); None when it reads every clip of its split."""
        if self.folds is None and self.part is None:
            return None
        return Keep.of(corpus.keys_by_shard(self.split), lambda key: self.keeps(key, corpus))


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
        out = {"train": Selection(corpus.train_split, rest, "train" if corpus.carved else None),
               "test": Selection(corpus.train_split, frozenset([fold]))}
        if corpus.carved:  # the dev share of the training folds (Task.dev_fraction)
            out["valid"] = Selection(corpus.train_split, rest, "valid")
    if task.valid_split and "valid" not in out:
        out["valid"] = pick("valid", task.valid_split)
    return out


def make_loader(corpus: Corpus, selection: Selection, *, train: bool, batch_size: int, clip_seconds: float,
                fbank: str | FbankConfig, seed: int, shuffle_buffer: int, epoch_batches: int | None,
                stream: StreamConfig, rank: int = 0, world_size: int = 1, balanced: bool = False,
                fbank_on: str = "loader", from_start: bool = False):
    """A finetune-mode loader over a selection's clips (its split, only the clips it keeps, chosen before
    batching: every batch holds batch_size of them): random crops and shuffling in training,
    crops from the start in shard order for evaluation (pass rank 0 of 1 to read all of it).
    fbank: a preset name or the whole recipe (dataset statistics included). A task without a crop
    pads each batch to its longest clip only; balanced training draws its clips by class_weights
    (the corpus opened with balanced=True). stream: how the workers read (the run's data section; its
    num_workers capped at the split's shards per process) and on which backend (data.backend: stream; dali,
    DALI's reader and decoder with the fbank on the device; ffcv, the split's precomputed fbanks, a .beton
    written on first use and refreshed when stale). fbank_on "device" (stream backend): the batches hold the
    cropped waveforms with their labels, and compute their fbank where they go (Batch.to; waveform mixup).
    from_start: training crops from each clip's start too (SSAST's input cuts every fbank at its start)."""
    stream_backend = stream.backend == "stream"
    per_rank = corpus.shard_count(selection.split) // world_size
    if per_rank < 1 and stream_backend:
        raise MaeastError(f"{corpus.dir} split {selection.split!r} has {corpus.shard_count(selection.split)} shard(s) "
                          f"for {world_size} processes; rebuild with a smaller --shard-size or use fewer processes")
    workers = min(stream.num_workers, per_rank) if stream_backend else stream.num_workers  # dali: its threads
    shards = _beton(corpus, selection.split, clip_seconds, get_config(fbank), stream) if stream.backend == "ffcv" \
        else corpus.dir
    config = LoaderConfig(**{**stream.stream_fields(), "num_workers": workers},
                          shards=[str(shards)], split=selection.split, mode="finetune", clip_seconds=clip_seconds,
                          random_crop=train and not from_start, batch_size=batch_size,
                          shuffle_buffer=shuffle_buffer if train else 0, seed=seed, fbank=get_config(fbank).name,
                          epoch_batches=epoch_batches if train else None,
                          pad_to_longest=corpus.task.clip_seconds is None, fbank_on=fbank_on,
                          class_weights=class_weights(corpus, selection) if train and balanced else None)
    return build_loader(config, rank, world_size, get_config(fbank), keep=selection.keep_rule(corpus))


def _beton(corpus: Corpus, split: str, clip_seconds: float, features: FbankConfig, stream: StreamConfig) -> Path:
    """data.backend ffcv: the split's .beton of precomputed fbanks (maeast.loaders.ffcv.ensure_beton), in
    data.cache_dir or beside local shards, written by the first process when missing or stale (other shards,
    fbank recipe or clip length) while the others wait."""
    from maeast.loaders.ffcv import beton_name, ensure_beton
    from maeast.train import distributed as dist

    if stream.cache_dir is None and is_url(corpus.dir):
        raise MaeastError(f"data.backend ffcv writes a .beton of {redact(corpus.dir)}'s fbanks; give data.cache_dir, "
                          f"a local folder for it")
    folder = Path(stream.cache_dir) if stream.cache_dir else Path(corpus.dir)
    out = folder / beton_name(corpus.index["corpus"], split)
    if dist.is_main():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            ensure_beton(corpus.dir, split, clip_seconds, features, out, workers=max(stream.num_workers, 1))
        except PermissionError as e:  # e.g. a read-only shard folder: one line, not ffcv's traceback
            raise MaeastError(f"data.backend ffcv cannot write {e.filename or out} ({e.strerror}); give "
                              f"data.cache_dir, a writable local folder for the .beton") from None
    dist.barrier()
    return out
