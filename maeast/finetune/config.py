"""FinetuneConfig: every choice of a fine-tuning run in typed sections.

    cfg = load_finetune_config("finetune_patch", task="esc50", overrides=["--optim.lr", "5e-5"])

Layering: dataclass defaults <- the task's published recipe (maeast.finetune.tasks) <- the YAML
(a shipped name or a path) <- dotted overrides; unknown keys are errors naming the key. The shipped
YAMLs set what does not depend on the task (the model, the head, the run); the recipes set the rest.
The sections themselves are in maeast.finetune.sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from maeast.configio import from_dict, load_yaml, merge, parse_overrides, save_yaml, to_dict
from maeast.train.config import renamed, resolve_config_path, shipped_configs
from maeast.errors import MaeastError
from maeast.finetune.custom import SeededSplit
from maeast.finetune.inputs import check_input
from maeast.finetune.sections import (AugmentSection, DataSection, HeadSection, ModelSection, OptimSection,
                                      RunSection, ScheduleSection)
from maeast.finetune.tasks import get_task
from maeast.model.heads import HeadSpec

@dataclass
class FinetuneConfig:
    task: str = "esc50"
    """audioset, esc50, speechcommands_v1, speechcommands_v2, voxceleb, iemocap, or custom: any labelled
    shard folder given as data.shards (maeast.finetune.custom)."""
    checkpoint: str | None = None
    """An exported encoder (RUN/encoder), a pretraining run folder (its latest checkpoint's encoder)
    or checkpoint folder (RUN/checkpoints/step_N); None: random weights (model.preset)."""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    head: HeadSection = field(default_factory=HeadSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self):
        task = get_task(self.task)
        split = {k: getattr(self.data, k) for k in ("valid_fraction", "test_fraction", "split_seed")}
        if task.from_corpus:
            if not self.data.shards:
                raise MaeastError(f"task {task.name} reads the shard folder given with --data SHARD_DIR; build one "
                                  f"with `{task.build}` (or the tsv recipe)")
            _ = self.seeded_split  # SeededSplit checks the two fractions together
        elif any(v is not None for v in split.values()):
            name = next(k for k, v in split.items() if v is not None)
            raise MaeastError(f"data.{name} carves a split out of a custom corpus; task {task.name} has its own "
                              f"splits: drop it (or use --task custom)")
        if self.run.select == "fold_mean" and not task.cross_validation:
            raise MaeastError(f"run.select fold_mean averages over folds; task {task.name} has fixed splits: use "
                              f"valid or last")
        check_input(self.data.input, task, self.data.fbank)
        self.mode.check(self)
        if self.checkpoint and (self.model.patch_time or self.model.patch_freq):
            raise MaeastError("model.patch_time / model.patch_freq shape a randomly initialized encoder; with "
                              "--checkpoint the tokens are the checkpoint's: drop them")

    @property
    def shards(self) -> str:
        return self.data.shards or get_task(self.task).shards

    @property
    def clip_seconds(self) -> float | None:
        """data.clip_seconds, else the task's; None for custom, whose length the corpus decides."""
        task = get_task(self.task)
        return self.data.clip_seconds or (None if task.from_corpus else task.clip_seconds)

    @property
    def seeded_split(self) -> SeededSplit:
        """Task custom: how a missing valid or test split is carved out of the train split."""
        d, default = self.data, SeededSplit()
        return SeededSplit(default.valid_fraction if d.valid_fraction is None else d.valid_fraction,
                           default.test_fraction if d.test_fraction is None else d.test_fraction,
                           default.seed if d.split_seed is None else d.split_seed)

    @property
    def run_dir(self) -> Path:
        if self.run.dir:
            return Path(self.run.dir)
        init = "random"
        if self.checkpoint:
            parts = [p for p in Path(self.checkpoint).parts if p not in ("runs", "encoder", "checkpoints", ".", "..", "/")]
            init = "_".join(parts[-2:]) or "checkpoint"
        task = f"custom_{Path(self.shards).name}" if get_task(self.task).from_corpus else self.task
        return Path("runs") / "finetune" / f"{task}-{self.mode.name}-{init}"

    @property
    def mode(self):
        """The run's mode (maeast.finetune.modes): FrozenHead or FullFinetune, as run.freeze_encoder says."""
        from maeast.finetune.modes import mode_of  # the modes build on this config's sections
        return mode_of(self)

    @property
    def head_spec(self) -> HeadSpec:
        """The head this run trains: the frozen protocol's (head.frozen) on a frozen encoder, else the
        head section's layers, norm and projector."""
        return self.mode.head_spec(self)

    @property
    def protocol(self) -> str:
        """"full", or the frozen protocol's name ("superb", "linear_probe", "stats")."""
        return self.mode.protocol(self)

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the run: schedule.steps, or its epochs x steps_per_epoch (module docstring)."""
        return self.mode.total_steps(self, steps_per_epoch)

    @property
    def epochs(self) -> int:
        return self.mode.epochs(self)

    @property
    def peak_lr(self) -> float:
        return self.mode.peak_lr(self)


RENAMED = {"run.save_every": "run.save_every_epochs", "run.eval_every": "run.eval_every_epochs"}
"""Keys renamed since a run folder may have been written (old -> new): maeast.train.config.renamed."""


def build_finetune_config(data: dict) -> FinetuneConfig:
    """Defaults <- the task's recipe <- `data` (a partial nested dict that names the task or keeps the default)."""
    data = renamed(data, RENAMED, saved=False)
    task = get_task(str(data.get("task", FinetuneConfig.task)))
    return from_dict(FinetuneConfig, merge(merge(to_dict(FinetuneConfig()), task.recipe), data))


def load_finetune_config(name_or_path: str | Path = "finetune_patch", task: str | None = None,
                         overrides: list[str] | dict | None = None, **flags) -> FinetuneConfig:
    """A shipped name or YAML path, then dotted overrides, then `task` and flags given as keywords
    (checkpoint=..., freeze_encoder=True, shards=..., folds=[...]); None values are not applied."""
    data = load_yaml(finetune_config_path(name_or_path))
    if "task" in data:
        raise MaeastError(f"{name_or_path}: a fine-tuning YAML may not fix the task; give it with --task")
    extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides or []))
    data = merge(data, extra)
    top = {"task": task, "checkpoint": flags.pop("checkpoint", None)}
    sections = {"run": {"freeze_encoder": flags.pop("freeze_encoder", None), "folds": flags.pop("folds", None),
                        "dir": flags.pop("run_dir", None)},
                "data": {"shards": flags.pop("shards", None)}}
    if flags:
        raise MaeastError(f"load_finetune_config: unknown flag {next(iter(flags))!r}")
    data = merge(data, {k: v for k, v in top.items() if v is not None})
    for section, values in sections.items():
        data = merge(data, {section: {k: v for k, v in values.items() if v is not None}})
    return build_finetune_config(data)


def finetune_config_path(name_or_path: str | Path) -> Path:
    """A YAML path or a shipped fine-tuning config name (finetune_patch, finetune_frame, finetune_small, ...)."""
    try:
        return resolve_config_path(name_or_path)
    except MaeastError:
        raise MaeastError(f"config {str(name_or_path)!r} is neither a YAML file nor a shipped fine-tuning config; "
                          f"shipped: {', '.join(shipped_configs('finetune_'))}") from None


def save_finetune_config(cfg: FinetuneConfig, path: Path) -> None:
    save_yaml(cfg, path)
