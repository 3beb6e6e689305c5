"""The sections of a fine-tuning config, one typed dataclass per concern: the model and its initialization,
the data, the head, augmentation, the optimizer, the schedule and the run. Each field is documented and
checked here; maeast.finetune.config puts them together (FinetuneConfig) and layers defaults, the
task's recipe, the YAML and the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from maeast.train.config import OptimConfig, RunConfig
from maeast.errors import MaeastError
from maeast.features import get_config as get_fbank
from maeast.loaders.config import StreamConfig
from maeast.model.config import PRESETS
from maeast.model.heads import FROZEN_PROTOCOLS, NORMS

LAYERS = ("last", "weighted")
INPUTS = ("mae_ast", "ssast")
"""data.input's pipelines (maeast.finetune.inputs)."""


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
    input_norm: str | None = None
    """The encoder's input BatchNorm in training (full fine-tuning): None keeps the checkpoint's ("batchnorm":
    statistics over the real frames); "batchnorm_padded": over the zero-padded batch, padded frames counted, as
    s3prl's SUPERB fine-tuning of a trainable upstream (-f) does. A frozen encoder normalizes with its running
    statistics either way (s3prl's frozen upstream runs in eval mode too)."""
    compile: bool = False
    """torch.compile each of the encoder's transformer blocks before training (as pretraining's model.compile);
    the first steps of each clip length pay the compilation. A run choice: the weights and exports are the same."""

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise MaeastError(f"model.preset {self.preset!r} unknown; choose one of {', '.join(PRESETS)}")
        for name in ("dropout", "attn_dropout", "act_dropout", "layerdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise MaeastError(f"model.{name} {getattr(self, name)} must be in [0, 1)")
        if self.input_norm not in (None, "batchnorm", "batchnorm_padded"):
            raise MaeastError(f"model.input_norm {self.input_norm!r} unknown; use batchnorm or batchnorm_padded "
                              f"(or null: the checkpoint's)")
        if not isinstance(self.compile, bool):
            raise MaeastError(f"model.compile {self.compile!r} must be true or false")
        for name in ("patch_time", "patch_freq"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise MaeastError(f"model.{name} {value!r} must be a positive integer (or null: the preset's)")

    def random_init(self) -> dict:
        """The preset's ModelConfig fields with the patch overrides, for an encoder without a checkpoint."""
        patch = {k: getattr(self, k) for k in ("patch_time", "patch_freq") if getattr(self, k) is not None}
        return {**PRESETS[self.preset], **patch}


@dataclass
class DataSection(StreamConfig):
    """Which shards, how clips are cut, how batches are read (the workers' reading: maeast.loaders.StreamConfig,
    as in pretraining)."""

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
    eval_max_seconds: float = 320.0
    """Tasks scored on whole clips (Task.eval_whole, SID and ER): the most padded audio in one evaluation
    batch (clips x its longest clip, in seconds), so long clips come in smaller batches; a clip longer
    than this goes alone."""
    epoch_batches: int | None = None
    """Micro-batches per training epoch and process; None: one pass over the train clips."""
    balanced: bool = False
    """Draw the training clips class-balanced, every class equally often in expectation (SUPERB KS1:
    s3prl's WeightedRandomSampler, weight N / clips of the class; maeast.finetune.data.class_weights)."""
    shuffle_buffer: int = 2000
    """Clips in each worker's shuffle buffer (large enough to mix the folds of a fold-sorted tar)."""
    input: str = "mae_ast"
    """The input pipeline (maeast.finetune.inputs): "mae_ast" (the checkpoint's features, BatchNorm x 0.5, the
    padding masked out, tokens that never overlap) or "ssast" (SSAST's fbank, per-task statistics, fixed
    length with the padding seen by the model, overlapping tokens, waveform mixup: the default of the
    audioset, esc50 and speechcommands_v2 recipes)."""
    label_file: str | None = None
    """A SSAST datafile ({"data": [{"wav": PATH, "labels": "MID,MID"}]}, e.g. AS-20K's label-enhanced
    balanced_train_data_type1_2_mean.json) whose labels replace the shards' for the training clips it
    names (a clip's key is its file name without extension, matched as the shard recipe keys it); None: the
    shards' labels."""
    fbank: str | None = None
    """Fbank preset; None: the checkpoint's own (mae_ast for a random encoder)."""
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
        super().__post_init__()
        if self.clip_seconds is not None and not self.clip_seconds >= 0.1:
            raise MaeastError(f"data.clip_seconds {self.clip_seconds} must be at least 0.1 s")
        for name in ("batch_size", "epoch_batches"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise MaeastError(f"data.{name} {value!r} must be an integer >= 1 (or null)")
        if not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 1:
            raise MaeastError(f"data.eval_batch_size {self.eval_batch_size!r} must be an integer >= 1")
        if not self.eval_max_seconds > 0:
            raise MaeastError(f"data.eval_max_seconds {self.eval_max_seconds} must be positive")
        if self.fbank is not None:
            get_fbank(self.fbank)
        if self.input not in INPUTS:
            raise MaeastError(f"data.input {self.input!r} unknown; use one of: {', '.join(INPUTS)}")
        if self.label_file is not None and not Path(self.label_file).is_file():
            raise MaeastError(f"data.label_file {self.label_file} not found; give a SSAST datafile JSON "
                              f"({{\"data\": [{{\"wav\": ..., \"labels\": ...}}]}}) or null")
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise MaeastError(f"data.{name} {value} must be in [0, 1) (or null: 0.1)")
        if self.balanced and self.backend != "stream":
            raise MaeastError(f"data.balanced draws clips by class, which backend {self.backend} cannot; use data.backend stream")
        if self.split_seed is not None and not isinstance(self.split_seed, int):
            raise MaeastError(f"data.split_seed {self.split_seed!r} must be an integer (or null: 0)")


@dataclass
class HeadSection:
    """The classifier on the encoder: pooled tokens -> (weighted layers) -> norm -> (projector) -> Linear.
    layers, norm and projector shape full fine-tuning's head; a frozen encoder's is `frozen`'s protocol."""

    layers: str = "last"
    """Full fine-tuning: "last": the last layer's tokens, mean-pooled; "weighted": a learned
    softmax-weighted sum of every layer's mean-pooled tokens (SUPERB's featurizer, -s hidden_states)."""
    norm: str | None = None
    """Full fine-tuning, before the linear layers: "layer" (LayerNorm, SSAST's mlp_head), "batch"
    (BatchNorm without affine) or "none"; None: "layer"."""
    projector: int = 0
    """Full fine-tuning: width of SUPERB's projector, a Linear(dim -> projector) before the classifier
    (s3prl projector_dim: 256); 0: none, the classifier reads the pooled features."""
    frozen: str = "superb"
    """The protocol of a frozen encoder (--freeze-encoder): "superb" (the SUPERB benchmark: a softmax-
    weighted sum of every layer, weights starting equal, then Linear(dim -> 256), mean pool, Linear),
    "linear_probe" (MAE's linear probe: the last layer mean-pooled, BatchNorm without affine, Linear) or
    "stats" (every layer's tokens pooled to their mean and std, side by side, BatchNorm without affine,
    Linear: the pooling of the fbank mean+std baseline, on every layer)."""

    def __post_init__(self):
        if self.layers not in LAYERS:
            raise MaeastError(f"head.layers {self.layers!r} unknown; use one of: {', '.join(LAYERS)}")
        if self.norm is not None and self.norm not in NORMS:
            raise MaeastError(f"head.norm {self.norm!r} unknown; use one of: {', '.join(NORMS)}")
        if not isinstance(self.projector, int) or isinstance(self.projector, bool) or self.projector < 0:
            raise MaeastError(f"head.projector {self.projector!r} must be an integer >= 0 (0: no projector)")
        if self.frozen not in FROZEN_PROTOCOLS:
            raise MaeastError(f"head.frozen {self.frozen!r} unknown; use one of: {', '.join(FROZEN_PROTOCOLS)}")


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
    noise: bool = False
    """SSAST's --noise (src/dataloader.py): add uniform noise of a random amplitude in [0, 0.1) normalized
    units to every cell, then roll each clip by a random -10..9 frames (maeast.finetune.augment.noise_roll)."""

    def __post_init__(self):
        for name in ("freq_mask", "time_mask"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise MaeastError(f"augment.{name} {getattr(self, name)!r} must be an integer >= 0")
        if not 0.0 <= self.mixup <= 1.0:
            raise MaeastError(f"augment.mixup {self.mixup} must be a probability in [0, 1]")
        if not self.mixup_alpha > 0:
            raise MaeastError(f"augment.mixup_alpha {self.mixup_alpha} must be positive")
        if not isinstance(self.noise, bool):
            raise MaeastError(f"augment.noise {self.noise!r} must be true or false")


@dataclass
class OptimSection(OptimConfig):
    """Pretraining's AdamW section (maeast.train.config.OptimConfig) with fine-tuning's defaults, and the
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


SCHEDULE_NAMES = ("linear", "step")
SELECT = ("valid", "last", "fold_mean")


@dataclass
class ScheduleSection:
    """Epochs, then the learning-rate schedule over them (maeast.train.optim): "linear" (warmup, linear decay
    to final_lr_scale x lr) or "step" (SSAST's: a staircase warmup, then x decay_gamma per decay_every epochs)."""

    epochs: int = 10
    """Passes over the train clips (full fine-tuning; a frozen encoder too unless frozen_epochs is set)."""
    frozen_epochs: int | None = None
    """Epochs when the encoder is frozen (a linear probe on cached features costs little per epoch);
    None: epochs."""
    steps: int | None = None
    """Optimizer steps of the run, frozen or full (the SUPERB recipes count steps, s3prl's total_steps):
    epochs follow one another until this many steps are done, the last one cut short; None: count
    epochs (schedule.epochs, or frozen_epochs when frozen). A frozen run with frozen_epochs set counts
    those instead."""
    name: str = "linear"
    """"linear": linear warmup over warmup_steps, then linear decay to final_lr_scale x lr at the last step;
    "step": SSAST's fine-tuning schedule (src/traintest.py, maeast.train.optim.StepDecay): a staircase warmup
    over warmup_steps (the lr set every 50 steps), then lr x decay_gamma every decay_every epochs once
    decay_start epochs are done (torch's MultiStepLR stepped per epoch)."""
    warmup_steps: int = 0
    """Optimizer steps of warmup (SSAST's --warmup True: 1000)."""
    final_lr_scale: float = 0.0
    """"linear": learning rate at the last step as a fraction of the peak: 0 decays to zero, 1 keeps it constant."""
    decay_start: int = 10
    """"step": epochs done before the first decay, i.e. epoch decay_start + 1 is the first at lr x decay_gamma
    (SSAST's --lrscheduler_start; its default 10)."""
    decay_every: int = 5
    """"step": epochs between decays (SSAST's --lrscheduler_step; its default 5)."""
    decay_gamma: float = 0.5
    """"step": factor of each decay (SSAST's --lrscheduler_decay; its default 0.5)."""

    def __post_init__(self):
        for name in ("epochs", "frozen_epochs", "steps"):
            value = getattr(self, name)
            if (value is not None or name == "epochs") and (not isinstance(value, int) or value < 1):
                raise MaeastError(f"schedule.{name} {value!r} must be an integer >= 1")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise MaeastError(f"schedule.warmup_steps {self.warmup_steps!r} must be an integer >= 0")
        if not 0.0 <= self.final_lr_scale <= 1.0:
            raise MaeastError(f"schedule.final_lr_scale {self.final_lr_scale} must be in [0, 1]")
        if self.name not in SCHEDULE_NAMES:
            raise MaeastError(f"schedule.name {self.name!r} unknown; use one of: {', '.join(SCHEDULE_NAMES)}")
        if not isinstance(self.decay_start, int) or self.decay_start < 0:
            raise MaeastError(f"schedule.decay_start {self.decay_start!r} must be an integer >= 0")
        if not isinstance(self.decay_every, int) or self.decay_every < 1:
            raise MaeastError(f"schedule.decay_every {self.decay_every!r} must be an integer >= 1")
        if not 0.0 < self.decay_gamma <= 1.0:
            raise MaeastError(f"schedule.decay_gamma {self.decay_gamma} must be in (0, 1]")


@dataclass
class RunSection(RunConfig):
    """Where the run lives, which folds it runs, how often it evaluates and saves."""

    dir: str | None = None
    """RUN: config.yaml, results.json, and per fold RUN/fold{k}/ (RUN/main without folds): log.jsonl,
    tensorboard/, checkpoints/, classifier/ (the selected model), result.json. None:
    runs/finetune/{task}-{frozen|full}-{random|the checkpoint's run name}."""
    seed: int = 0
    """Seed of the random encoder's weights, the head's, dropout, augmentation and the clip order."""
    save_every_epochs: int = 1
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
    eval_every_epochs: int = 1
    """Evaluate every this many epochs (and after the last)."""
    eval_steps: int | None = None
    """Evaluate every this many optimizer steps (s3prl's eval_step; and after the last step): an epoch is
    then this many steps (run.eval_every_epochs, save_every_epochs and schedule.epochs count those), each drawn from a
    freshly shuffled pass of the loader (the feature cache's draws run on across epochs instead); None:
    an epoch is one pass over the train clips."""
    select: str | None = None
    """The epoch reported: "valid" (the best on the task's valid split), "last", or "fold_mean" (cross-
    validation: the epoch whose test metric averaged over the folds is best, every fold reported at that
    epoch, as SSAST's get_esc_result.py; the exported classifiers stay the last epoch's); None: "valid"
    where the task has a valid split, else "last"."""
    average_epochs: list[int] | None = None
    """[first, last]: report the model whose weights are the mean of the weights after each of these epochs
    (1-based, inclusive; SSAST's --wa --wa_start --wa_end); None: off. It replaces `select`. Epochs past the
    run's end are left out: a shorter run averages [first, its last epoch], one that ends before `first`
    reports its last epoch."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("save_every_epochs", "eval_every_epochs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise MaeastError(f"run.{name} {getattr(self, name)!r} must be an integer >= 1")
        if self.eval_steps is not None and (not isinstance(self.eval_steps, int) or self.eval_steps < 1):
            raise MaeastError(f"run.eval_steps {self.eval_steps!r} must be an integer >= 1 (or null: by epochs)")
        if self.select is not None and self.select not in SELECT:
            raise MaeastError(f"run.select {self.select!r} unknown; use one of: {', '.join(SELECT)} (or null)")
        if self.average_epochs is not None:
            window = self.average_epochs
            if (not isinstance(window, (list, tuple)) or len(window) != 2 or not all(isinstance(e, int) for e in window)
                    or not 1 <= window[0] <= window[1]):
                raise MaeastError(f"run.average_epochs {window!r} must be [first, last] epochs with 1 <= first <= "
                                  f"last (or null: off)")
            self.average_epochs = list(window)
        if self.folds is not None:
            if isinstance(self.folds, int):
                self.folds = [self.folds]
            if not self.folds or not all(isinstance(f, int) for f in self.folds):
                raise MaeastError(f"run.folds {self.folds!r} must be a list of fold numbers (or null: all)")
