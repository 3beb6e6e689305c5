"""FinetuneConfig: every choice of a fine-tuning run in typed sections.

    cfg = load_finetune_config("finetune_patch", task="esc50", overrides=["--optim.lr", "5e-5"])

Layering: dataclass defaults <- the task's published recipe (maeast.finetune.tasks) <- the YAML
(a shipped name or a path) <- dotted overrides; unknown keys are errors naming the key. The shipped
YAMLs set what does not depend on the task (the model, the head, the run); the recipes set the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from maeast.configio import from_dict, load_yaml, merge, parse_overrides, save_yaml, to_dict
from maeast.engine.config import OptimConfig, RunCommon, resolve_config_path, shipped_configs
from maeast.errors import MaeastError
from maeast.features import get_config as get_fbank
from maeast.finetune.custom import SeededSplit
from maeast.model.heads import NORMS
from maeast.finetune.tasks import get_task
from maeast.model.config import PRESETS

LAYERS = ("last", "weighted")


@dataclass
class ModelSection:
    """The encoder: its architecture when no checkpoint is given, and its fine-tuning regularization."""

    preset: str = "base"
    """maeast.model preset of a randomly initialized encoder (no --checkpoint): the baseline. With a
    checkpoint the architecture is the checkpoint's, and only the four rates below apply."""
    patch_time: int | None = None
    """Random init only: frames per token (None: the preset's; 2 with patch_freq = n_mels: frame tokens)."""
    patch_freq: int | None = None
    """Random init only: mel bins per token (None: the preset's)."""
    dropout: float = 0.1
    """Dropout on residual branches (full fine-tuning)."""
    attn_dropout: float = 0.1
    """Dropout on attention weights (full fine-tuning)."""
    act_dropout: float = 0.0
    """Dropout after the FFN activation (full fine-tuning)."""
    layerdrop: float = 0.0
    """Probability of skipping an encoder layer in training (off: SSAST fine-tunes without it)."""

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise MaeastError(f"model.preset {self.preset!r} unknown; choose one of {', '.join(PRESETS)}")
        for name in ("dropout", "attn_dropout", "act_dropout", "layerdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise MaeastError(f"model.{name} {getattr(self, name)} must be in [0, 1)")
        for name in ("patch_time", "patch_freq"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise MaeastError(f"model.{name} {value!r} must be a positive integer (or null: the preset's)")

    def random_init(self) -> dict:
        """The preset's ModelConfig fields with the patch overrides, for an encoder without a checkpoint."""
        patch = {k: getattr(self, k) for k in ("patch_time", "patch_freq") if getattr(self, k) is not None}
        return {**PRESETS[self.preset], **patch}


@dataclass
class DataSection:
    """Which shards, how clips are cut, how batches are read."""

    shards: str | None = None
    """Shard folder of the task's corpus; None: the task's default (shards/{corpus}; custom has none)."""
    clip_seconds: float | None = None
    """Crop or pad every clip to this; None: the task's (10 s AudioSet, 5 s ESC-50, 1 s keywords, 8 s;
    custom: the 90th percentile of the train clips' durations, rounded up to 0.1 s, within [0.5, 10] s)."""
    train_split: str | None = None
    """None: the task's (e.g. balanced_train for AudioSet-20K; unbalanced_train for the full set)."""
    batch_size: int | None = None
    """Micro-batch per process; None: optim.global_batch / processes (no accumulation)."""
    eval_batch_size: int = 32
    """Clips per evaluation batch."""
    epoch_batches: int | None = None
    """Micro-batches per training epoch and process; None: one pass over the train clips."""
    num_workers: int = 2
    """Loader worker processes (capped at the shard count of a split)."""
    shuffle_buffer: int = 2000
    """Clips in each worker's shuffle buffer (large enough to mix the folds of a fold-sorted tar)."""
    fbank: str | None = None
    """Fbank preset; None: the checkpoint's own (mae_ast for a random encoder)."""
    on_error: str = "skip"
    """Bad data: "skip" (warn, count) or "fail"."""
    valid_fraction: float | None = None
    """Task custom, a corpus without its own valid split: share of its train clips carved out (by key
    hash) to select the epoch on; None: 0.1; 0: no valid pass, the last epoch is reported."""
    test_fraction: float | None = None
    """Task custom, a corpus without its own test split: share of its train clips carved out (by key hash)
    for the test; None: 0.1."""
    split_seed: int | None = None
    """Task custom: seed of that key-hash split; None: 0 (apart from run.seed, so that runs of several seeds
    share one test set)."""

    def __post_init__(self):
        if self.clip_seconds is not None and not self.clip_seconds >= 0.1:
            raise MaeastError(f"data.clip_seconds {self.clip_seconds} must be at least 0.1 s")
        for name in ("batch_size", "epoch_batches"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise MaeastError(f"data.{name} {value!r} must be an integer >= 1 (or null)")
        if not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 1:
            raise MaeastError(f"data.eval_batch_size {self.eval_batch_size!r} must be an integer >= 1")
        if self.fbank is not None:
            get_fbank(self.fbank)
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise MaeastError(f"data.{name} {value} must be in [0, 1) (or null: 0.1)")
        if self.split_seed is not None and not isinstance(self.split_seed, int):
            raise MaeastError(f"data.split_seed {self.split_seed!r} must be an integer (or null: 0)")


@dataclass
class HeadSection:
    """The classifier on the encoder: pooled tokens -> (weighted layers) -> norm -> Linear."""

    layers: str = "last"
    """"last": the last layer's tokens, mean-pooled; "weighted": a learned softmax-weighted sum of
    every layer's mean-pooled tokens (SUPERB's featurizer)."""
    norm: str | None = None
    """Before the linear layer: "layer" (LayerNorm, SSAST's mlp_head), "batch" (BatchNorm without
    affine, MAE's linear probe: each feature standardized over the clips) or "none"; None: "batch"
    on a frozen encoder, "layer" in full fine-tuning."""

    def __post_init__(self):
        if self.layers not in LAYERS:
            raise MaeastError(f"head.layers {self.layers!r} unknown; use one of: {', '.join(LAYERS)}")
        if self.norm is not None and self.norm not in NORMS:
            raise MaeastError(f"head.norm {self.norm!r} unknown; use one of: {', '.join(NORMS)}")


@dataclass
class AugmentSection:
    """Training augmentation of full fine-tuning (a frozen encoder sees its clips unaugmented)."""

    freq_mask: int = 0
    """SpecAugment: one frequency mask per clip, width uniform in [0, freq_mask) bins (SSAST's freqm)."""
    time_mask: int = 0
    """SpecAugment: one time mask per clip, width uniform in [0, time_mask) frames (SSAST's timem)."""
    mixup: float = 0.0
    """Chance that a clip is mixed with another clip of its batch (SSAST's mixup)."""
    mixup_alpha: float = 10.0
    """Mixing weight ~ Beta(alpha, alpha) (SSAST: 10)."""

    def __post_init__(self):
        for name in ("freq_mask", "time_mask"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise MaeastError(f"augment.{name} {getattr(self, name)!r} must be an integer >= 0")
        if not 0.0 <= self.mixup <= 1.0:
            raise MaeastError(f"augment.mixup {self.mixup} must be a probability in [0, 1]")
        if not self.mixup_alpha > 0:
            raise MaeastError(f"augment.mixup_alpha {self.mixup_alpha} must be positive")


@dataclass
class OptimSection(OptimConfig):
    """Pretraining's AdamW section (maeast.engine.config.OptimConfig) with fine-tuning's defaults, and the
    head's learning rate on a frozen encoder."""

    lr: float = 1e-4
    """Peak learning rate of full fine-tuning."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW's epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay, not on biases and norms."""
    clip_grad: float = 0.0
    """Clip the global gradient norm; 0: off."""
    global_batch: int = 32
    """Clips per optimizer step over all processes."""
    frozen_lr: float = 1e-3
    """Peak learning rate of the head when the encoder is frozen (layer_decay and head_lr then do not apply)."""

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.frozen_lr, (int, float)) or not self.frozen_lr > 0:
            raise MaeastError(f"optim.frozen_lr {self.frozen_lr!r} must be a positive number")


@dataclass
class ScheduleSection:
    """Epochs, then the engine's schedule over them: linear warmup, linear decay to final_lr_scale x lr."""

    epochs: int = 10
    """Passes over the train clips (full fine-tuning; a frozen encoder too unless frozen_epochs is set)."""
    frozen_epochs: int | None = None
    """Epochs when the encoder is frozen (a linear probe on cached features costs little per epoch);
    None: epochs."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup (SSAST's warmup: 1000)."""
    final_lr_scale: float = 0.0
    """Learning rate at the last step as a fraction of the peak: 0 decays to zero, 1 keeps it constant."""

    def __post_init__(self):
        for name in ("epochs", "frozen_epochs"):
            value = getattr(self, name)
            if (value is not None or name == "epochs") and (not isinstance(value, int) or value < 1):
                raise MaeastError(f"schedule.{name} {value!r} must be an integer >= 1")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise MaeastError(f"schedule.warmup_steps {self.warmup_steps!r} must be an integer >= 0")
        if not 0.0 <= self.final_lr_scale <= 1.0:
            raise MaeastError(f"schedule.final_lr_scale {self.final_lr_scale} must be in [0, 1]")


@dataclass
class RunSection(RunCommon):
    """Where the run lives, which folds it runs, how often it evaluates and saves."""

    dir: str | None = None
    """RUN: config.yaml, results.json, and per fold RUN/fold{k}/ (RUN/main without folds): log.jsonl,
    tensorboard/, checkpoints/, classifier/ (the selected model), result.json. None:
    runs/finetune/{task}-{frozen|full}-{random|the checkpoint's run name}."""
    seed: int = 0
    """Seed of the random encoder's weights, the head's, dropout, augmentation and the clip order."""
    save_every: int = 1
    """Checkpoint every this many epochs (and after the last)."""
    keep: int = 1
    """Checkpoints kept per fold (the newest)."""
    log_every: int = 10
    """Write the training log every this many optimizer steps."""
    freeze_encoder: bool = False
    """Train only the head on a frozen encoder (eval mode, no gradients)."""
    cache_features: bool = True
    """Frozen encoder: encode every clip once and train the head on the cached pooled features."""
    folds: list[int] | None = None
    """Cross-validation tasks: the folds to hold out (None: every fold of the shards)."""
    eval_every: int = 1
    """Evaluate every this many epochs (and after the last)."""

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.eval_every, int) or self.eval_every < 1:
            raise MaeastError(f"run.eval_every {self.eval_every!r} must be an integer >= 1")
        if self.folds is not None:
            if isinstance(self.folds, int):
                self.folds = [self.folds]
            if not self.folds or not all(isinstance(f, int) for f in self.folds):
                raise MaeastError(f"run.folds {self.folds!r} must be a list of fold numbers (or null: all)")


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
        return Path("runs") / "finetune" / f"{task}-{'frozen' if self.run.freeze_encoder else 'full'}-{init}"

    @property
    def head_norm(self) -> str:
        return self.head.norm or ("batch" if self.run.freeze_encoder else "layer")

    @property
    def epochs(self) -> int:
        return (self.schedule.frozen_epochs or self.schedule.epochs) if self.run.freeze_encoder else self.schedule.epochs

    @property
    def peak_lr(self) -> float:
        return self.optim.frozen_lr if self.run.freeze_encoder else self.optim.lr


def build_finetune_config(data: dict) -> FinetuneConfig:
    """Defaults <- the task's recipe <- `data` (a partial nested dict that names the task or keeps the default)."""
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
