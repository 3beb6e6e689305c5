"""`--task custom`: fine-tune on any labelled shard folder, with the task read off the corpus itself.

    task, plan = resolve_custom(folder, read_index(folder), train_split=None, seeded=SeededSplit())

What it reads: index.json ("labels", "multi_label", "splits") and the sample JSONs of the splits it
uses (key, duration, label_ids; the FLAC members are skipped over, not read).

  loss, metric  "multi_label" false: softmax cross-entropy and accuracy; true: per-class sigmoid BCE and mAP.
  splits        the corpus's own train, valid and test splits (valid also named val, validation or dev;
                test also eval, as the folder recipe reads split folders). A missing valid or test split
                is carved out of the train split by key hash (SeededSplit: data.valid_fraction,
                data.test_fraction, data.split_seed; the hash is the folder recipe's `seeded_split`). A
                clip's part depends only on its key and the seed: every clip is in exactly one part, the
                same one in every run and in `maeast evaluate`, and adding clips moves no other clip.
                The valid split selects the epoch and the test split is reported; valid_fraction 0
                carves no valid part and the last epoch is reported.
  clip length   the 90th percentile (nearest rank) of the train clips' durations, rounded up to 0.1 s
                and kept within [0.5, 10] s: nine clips in ten are seen whole, longer ones are cropped
                (at random in training, from the start in evaluation), and long recordings cost no
                more than AudioSet's 10 s clips. data.clip_seconds overrides it.
  recipe        none: FinetuneConfig's own defaults, under the YAML and the command line as for every task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from maeast.errors import MaeastError
from maeast.finetune.tasks import CUSTOM, Task
from maeast.shards.format import iter_meta, shard_paths
from maeast.shards.recipes.folder import SPLIT_FOLDERS, seeded_split

PERCENTILE = 90
MIN_CLIP, MAX_CLIP = 0.5, 10.0
ROLES = ("valid", "test")
REBUILD = ("rebuild the shards with `maeast shard build folder` over one subfolder per class, or `maeast shard "
           "build tsv` with a third column of labels")


@dataclass(frozen=True)
class SeededSplit:
    """How a corpus without its own valid or test split has them carved out of its train split."""

    valid_fraction: float = 0.1
    """Share of the train clips held out to select the epoch on; 0: no valid part (report the last epoch)."""
    test_fraction: float = 0.1
    """Share of the train clips held out for the test."""
    seed: int = 0
    """Seed of the key hash (data.split_seed; apart from run.seed, so runs of several seeds share a test set)."""

    def __post_init__(self):
        for name in ("valid_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise MaeastError(f"data.{name} {getattr(self, name)} must be in [0, 1)")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise MaeastError(f"data.valid_fraction + data.test_fraction = {self.valid_fraction + self.test_fraction} "
                              f"leaves no training clips; keep their sum below 1")

    def part(self, key: str, carved: tuple[str, ...]) -> str:
        """"train", "valid" or "test": the part of the train split that clip `key` falls in."""
        return seeded_split(key, self.seed, self.valid_fraction if "valid" in carved else 0.0,
                            self.test_fraction if "test" in carved else 0.0)

    def parts(self, keys: list[str], carved: tuple[str, ...]) -> dict[str, str]:
        return {key: self.part(key, carved) for key in keys}


@dataclass(frozen=True)
class ClipMeta:
    key: str
    seconds: float
    labels: int
    """How many labels the clip has."""


@dataclass
class CustomPlan:
    """What resolve_custom found: where each pass's clips come from, and the clip length."""

    clip_seconds: float
    clip_rule: str
    """How clip_seconds was chosen, for the run's results."""
    splits: dict[str, dict]
    """role (train, valid, test) -> {"split": shard split, "clips": count, "seeded": carved by key hash}."""
    carved: tuple[str, ...] = ()
    """The roles carved out of the train split ("valid", "test"), in that order."""
    seeded: SeededSplit | None = None
    """The split that carved them (None: nothing carved)."""
    part_of: dict[str, str] = field(default_factory=dict)
    """When something is carved: key -> part ("train", "valid", "test") of every clip of the train split."""


def read_clips(folder: Path, split: str, index: dict) -> list[ClipMeta]:
    """Key, duration and label count of every sample of a split, from its JSON members alone."""
    out = []
    for shard in shard_paths(folder, split, index):
        for key, meta in iter_meta(shard):
            try:
                seconds = meta.get("duration") or meta["num_samples"] / meta["sample_rate"]
            except (KeyError, TypeError, ZeroDivisionError) as e:
                raise MaeastError(f"broken shard {shard}: sample {key} has no duration ({e}); rebuild it with "
                                  f"`maeast shard build`") from None
            out.append(ClipMeta(key, float(seconds), len(meta.get("label_ids") or [])))
    return out


def clip_length(durations: list[float]) -> tuple[float, str]:
    """(clip seconds, how they were chosen): the 90th percentile, rounded up to 0.1 s, within [0.5, 10] s."""
    if not durations:
        raise MaeastError("the train split holds no clip; rebuild the shards")
    ranked = sorted(durations)
    p = ranked[math.ceil(PERCENTILE / 100 * len(ranked)) - 1]  # nearest rank: a real clip's duration
    seconds = min(MAX_CLIP, max(MIN_CLIP, math.ceil(round(p * 10, 6)) / 10))
    return seconds, (f"the {PERCENTILE}th percentile of the {len(ranked)} train clips' durations, {p:.3f} s, "
                     f"rounded up to 0.1 s within [{MIN_CLIP:g}, {MAX_CLIP:g}] s")


def own_split(splits: dict, role: str, train: str) -> str | None:
    """The corpus's own split for a role: its name (valid, test) first, then an alias (dev, val, eval...)."""
    names = [role] + sorted(name for name, to in SPLIT_FOLDERS.items() if to == role and name != role)
    return next((name for name in names if name in splits and name != train), None)


def resolve_custom(folder: Path, index: dict, train_split: str | None, seeded: SeededSplit) -> tuple[Task, CustomPlan]:
    """The custom task of this corpus (loss, metric, splits, clip length) and where each pass's clips are."""
    labels, splits = list(index.get("labels") or []), index["splits"]
    if not labels:
        raise MaeastError(f"{folder} has no labels (index.json \"labels\" is empty), so --task custom has nothing "
                          f"to learn; {REBUILD}")
    if len(labels) < 2:
        raise MaeastError(f"{folder} has one class only ({labels[0]!r}); a classifier needs two or more: add a "
                          f"class and rebuild the shards")
    train = train_split or CUSTOM.train_split
    if train not in splits:
        raise MaeastError(f"{folder} has no split {train!r} (it has {', '.join(sorted(splits))}); name the training "
                          f"split with --data.train_split")
    own = {role: own_split(splits, role, train) for role in ROLES}
    carved = tuple(r for r in ROLES if own[r] is None and (r == "test" or seeded.valid_fraction > 0))
    if "test" in carved and seeded.test_fraction == 0:
        raise MaeastError(f"{folder} has no test split and data.test_fraction is 0; set data.test_fraction above 0 "
                          f"(e.g. 0.1) or add a test split to the corpus")
    clips = {}
    for split in [train] + [own[r] for r in ROLES if own[r]]:
        if not splits[split].get("labels"):
            raise MaeastError(f"{folder} split {split!r} has no labels; every clip of the splits fine-tuning uses "
                              f"needs one: {REBUILD}")
        clips[split] = read_clips(folder, split, index)
        bare = [c.key for c in clips[split] if not c.labels]
        if bare:
            raise MaeastError(f"{folder} split {split!r}: {len(bare)} of {len(clips[split])} clips have no label "
                              f"(e.g. {bare[0]}); give each its class and rebuild: {REBUILD}")
    if len(splits[train]["labels"]) < 2:
        raise MaeastError(f"{folder} split {train!r} holds clips of one class only "
                          f"({next(iter(splits[train]['labels']))!r}); a classifier needs two or more to train on")
    part_of = seeded.parts([c.key for c in clips[train]], carved) if carved else {}
    counts = {part: sum(p == part for p in part_of.values()) for part in ("train", *carved)} if carved else {}
    for part, count in counts.items():
        if not count:
            raise MaeastError(f"the seeded split of the {len(part_of)} clips of {folder} split {train!r} put none in "
                              f"{part}; add clips or change data.valid_fraction / data.test_fraction")
    seconds, rule = clip_length([c.seconds for c in clips[train]])
    multi = bool(index.get("multi_label"))
    roles = {"train": train, "valid": own["valid"] or (train if "valid" in carved else None),
             "test": own["test"] or train}
    task = replace(CUSTOM, corpora=(index["corpus"],), metric="map" if multi else "accuracy",
                   loss="bce" if multi else "ce", clip_seconds=seconds, train_split=train,
                   valid_split=roles["valid"], test_split=roles["test"])
    described = {role: {"split": split, "seeded": role in counts, "clips": counts.get(role) or len(clips[split])}
                 for role, split in roles.items() if split is not None}
    return task, CustomPlan(seconds, rule, described, carved, seeded if carved else None, part_of)


def describe(task: Task, plan: CustomPlan, classes: int) -> str:
    """One line for the console: what the custom task resolved to."""
    kind = "multi-label (bce loss, mAP)" if task.metric == "map" else "single-label (ce loss, accuracy)"
    parts = ", ".join(f"{role} {d['clips']} ({'seeded' if d['seeded'] else 'split ' + repr(d['split'])})"
                      for role, d in plan.splits.items())
    line = f"custom task: {classes} classes, {kind}; clips: {parts}"
    if plan.seeded:
        s = plan.seeded
        line += (f"; seeded = carved from split {task.train_split!r} by key hash (valid_fraction {s.valid_fraction:g}, "
                 f"test_fraction {s.test_fraction:g}, split_seed {s.seed})")
    return line
