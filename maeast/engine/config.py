"""TrainConfig: every choice of a pretraining run in typed sections, and the DeepSpeed config made from it.

    cfg = load_config("pretrain_patch_random", ["--optim.lr", "3e-4"])  # a shipped name or a YAML path

Sections: model (maeast.model.ModelConfig; a YAML may name a `preset` whose fields the rest of the
section overrides), data (maeast.loaders.LoaderConfig: the training stream; data.batch_size is the
micro batch of one process), optim, schedule, eval and run. Defaults are the official MAE-AST
pretraining (AlanBaade/MAE-AST-Public config/pretrain/mae_ast.yaml). Layering: dataclass defaults
<- model preset <- YAML <- dotted overrides; unknown keys are errors naming the key.

The DeepSpeed config is generated from these sections by maeast.engine.ds_config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from maeast.configio import from_dict, load_yaml, merge, parse_overrides, save_yaml, to_dict
from maeast.errors import MaeastError
from maeast.features import get_config as get_fbank
from maeast.loaders.config import LoaderConfig
from maeast.model.config import PRESETS, ModelConfig


@dataclass
class OptimConfig:
    """AdamW with decoupled weight decay (fairseq's adam), and the batch it steps on."""

    lr: float = 1e-4
    """Peak learning rate (reached at the end of warmup)."""
    betas: tuple[float, float] = (0.9, 0.98)
    """Adam betas."""
    eps: float = 1e-6
    """Adam epsilon."""
    weight_decay: float = 0.01
    """Decoupled weight decay (p -= lr * wd * p), not on biases, norms and the mask token."""
    clip_grad: float = 10.0
    """Clip the global gradient norm to this; 0 turns clipping off."""
    global_batch: int = 256
    """Clips per optimizer step over all processes together; gradient accumulation follows from it,
    data.batch_size and the number of processes. 256 clips of at most 10 s is 2560 s of audio,
    close to the official 32 GPUs x 1.4M samples (2800 s)."""
    layer_decay: float = 1.0
    """Layer-wise lr decay: encoder layer l (0 = the token projection, depth = the last block) gets
    lr x layer_decay ** (depth + 1 - l); 1 is off (pretraining; SSAST's fine-tuning)."""
    head_lr: float = 1.0
    """lr multiplier of the parameters outside the encoder (a fine-tuning head; in pretraining the decoder)."""

    def __post_init__(self):
        _positive("optim.lr", self.lr)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise MaeastError(f"optim.betas {list(self.betas)} must be two numbers in [0, 1)")
        _positive("optim.eps", self.eps)
        _non_negative("optim.weight_decay", self.weight_decay)
        _non_negative("optim.clip_grad", self.clip_grad)
        _positive_int("optim.global_batch", self.global_batch)
        if not 0.0 < self.layer_decay <= 1.0:
            raise MaeastError(f"optim.layer_decay {self.layer_decay} must be in (0, 1]")
        _positive("optim.head_lr", self.head_lr)


@dataclass
class ScheduleConfig:
    """Linear warmup, then polynomial decay to end_lr at `steps` (fairseq's polynomial_decay)."""

    steps: int = 400_000
    """Optimizer steps of the whole run (the official max_update); the decay ends here."""
    warmup_steps: int = 32_000
    """Steps of linear warmup from lr / warmup_steps to lr."""
    power: float = 1.0
    """Exponent of the decay (1: linear)."""
    end_lr: float = 0.0
    """Learning rate at the last step."""

    def __post_init__(self):
        _positive_int("schedule.steps", self.steps)
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps < self.steps:
            raise MaeastError(f"schedule.warmup_steps {self.warmup_steps} must be in [0, schedule.steps={self.steps})")
        _positive("schedule.power", self.power)
        _non_negative("schedule.end_lr", self.end_lr)


@dataclass
class EvalConfig:
    """Held-out reconstruction loss: the same masked losses on a split the model never trains on."""

    every: int = 10_000
    """Evaluate every this many steps and at the end of the run; 0: never."""
    batches: int = 20
    """Batches per process in each evaluation (the same clips, crops and masks every time)."""
    split: str = "valid"
    """Split of the shard folders to evaluate on."""
    shards: list[str] | None = None
    """Shard folders to evaluate on; None: data.shards."""
    probe_every: int = 0
    """Score the online probe (maeast.engine.probe: a linear and a kNN probe on the frozen encoder's features of
    eval.probe_shards, beside the fbank-statistics baseline) every this many steps and at the end; 0: never."""
    probe_shards: str | None = None
    """A labelled, single-label shard folder (e.g. shards/demo/keywords) for the online probe."""
    probe_train_split: str = "train"
    """Split of probe_shards the probes are fitted on."""
    probe_test_split: str = "test"
    """Split of probe_shards the probes are scored on."""
    probe_clips: int = 2000
    """Clips kept of each probe split at most (a seeded random subset of a larger split; their fbanks are cached)."""
    probe_clip_seconds: float = 1.0
    """Every probe clip is cropped (from its start) or padded to this length."""

    def __post_init__(self):
        if not isinstance(self.every, int) or self.every < 0:
            raise MaeastError(f"eval.every {self.every!r} must be an integer >= 0 (0 turns evaluation off)")
        _positive_int("eval.batches", self.batches)
        if not isinstance(self.probe_every, int) or self.probe_every < 0:
            raise MaeastError(f"eval.probe_every {self.probe_every!r} must be an integer >= 0 (0 turns the probe off)")
        if self.probe_every and not self.probe_shards:
            raise MaeastError("eval.probe_every is set but eval.probe_shards is not: give a labelled shard folder "
                              "(e.g. --eval.probe_shards shards/demo/keywords) or set eval.probe_every 0")
        _positive_int("eval.probe_clips", self.probe_clips)
        _positive("eval.probe_clip_seconds", self.probe_clip_seconds)


@dataclass
class RunCommon:
    """What every run has, pretraining or fine-tuning: its folder, seed, checkpoints, log and threads."""

    dir: str | None = None
    """Run directory."""
    seed: int = 0
    """Seed of the initial weights, the masks, dropout and layerdrop (the loader has data.seed)."""
    save_every: int = 25_000
    """Save a checkpoint every this many steps (and always at the end)."""
    keep: int = 2
    """Checkpoints kept (the oldest are deleted once a newer one is complete)."""
    log_every: int = 1
    """Write the JSONL log and tensorboard every this many steps."""
    threads: int | None = None
    """torch threads per process; None: this process's share of the node's cores, less its loader workers'."""

    def __post_init__(self):
        if self.dir == "":
            raise MaeastError("run.dir is empty; give the run directory")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise MaeastError(f"run.seed {self.seed!r} must be a non-negative integer")
        for name in ("save_every", "keep", "log_every"):
            _positive_int(f"run.{name}", getattr(self, name))
        if self.threads is not None:
            _positive_int("run.threads", self.threads)


@dataclass
class RunConfig(RunCommon):
    """Where the run lives, how often it saves and logs, where this session stops."""

    dir: str = "runs/pretrain"
    """Run directory: config.yaml, ds_config.json, log.jsonl, tensorboard/, checkpoints/, encoder/."""
    stop_at: int | None = None
    """Stop (with a checkpoint) after this step while the schedule still runs to schedule.steps:
    splits a run into sessions that `--resume` continues."""
    trace_keys: bool = False
    """Write the key of every clip each process trains on to keys/rank{r}.tsv (for audits)."""
    collective_timeout: float = 300.0
    """Seconds a collective (all-reduce, barrier) may wait for the other processes before the run stops
    with a line naming the processes that failed, the last step and the last good checkpoint (the
    backend's own default is 30 minutes). Raise it when a save or an evaluation takes longer."""

    def __post_init__(self):
        super().__post_init__()
        if not self.dir:
            raise MaeastError("run.dir is empty; give the run directory")
        if self.stop_at is not None:
            _positive_int("run.stop_at", self.stop_at)
        _positive("run.collective_timeout", self.collective_timeout)


def _default_data() -> LoaderConfig:
    # The official mix: AudioSet and LibriSpeech, in proportion to their clip counts.
    return LoaderConfig(shards=["shards/audioset", "shards/librispeech"], batch_size=8)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: LoaderConfig = field(default_factory=_default_data)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        if self.data.mode != "pretrain":
            raise MaeastError(f"data.mode is {self.data.mode!r}; pretraining reads clips in mode 'pretrain'")
        if self.data.backend != "stream":
            raise MaeastError(f"data.backend {self.data.backend!r}: the pretraining engine resumes exactly only "
                              f"with the 'stream' loader; set data.backend: stream")
        n_mels = get_fbank(self.data.fbank).n_mels
        if n_mels != self.model.n_mels:
            raise MaeastError(f"data.fbank {self.data.fbank!r} gives {n_mels} mel bins but model.n_mels is "
                              f"{self.model.n_mels}; set model.n_mels: {n_mels}")
        if self.optim.global_batch % self.data.batch_size:
            raise MaeastError(f"optim.global_batch {self.optim.global_batch} is not a multiple of data.batch_size "
                              f"{self.data.batch_size} (the micro batch of one process)")
        if self.run.stop_at is not None and self.run.stop_at > self.schedule.steps:
            raise MaeastError(f"run.stop_at {self.run.stop_at} is past schedule.steps {self.schedule.steps}")

    @property
    def global_batch_seconds(self) -> float:
        """Most audio one optimizer step holds (each batch is cropped to its shortest clip, capped)."""
        return self.optim.global_batch * self.data.max_seconds

    @property
    def last_step(self) -> int:
        return self.run.stop_at or self.schedule.steps

    def eval_loader_config(self) -> LoaderConfig:
        """The held-out stream: the eval split, no shuffling, fixed seed, read in the process."""
        return dataclasses.replace(self.data, shards=list(self.eval.shards or self.data.shards), split=self.eval.split,
                                   weights=None if self.eval.shards else self.data.weights, shuffle_buffer=0,
                                   num_workers=0, epoch_batches=self.eval.batches, seed=0)


def accumulation(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Micro-batches each process runs per optimizer step, so that a step sees global_batch clips."""
    per_pass = micro_batch * world_size
    if global_batch % per_pass:
        fits = [w for w in range(1, 257) if global_batch % (micro_batch * w) == 0]
        raise MaeastError(f"optim.global_batch {global_batch} is not a multiple of data.batch_size {micro_batch} x "
                          f"{world_size} processes; use a process count in {fits[:8]} or change data.batch_size")
    return global_batch // per_pass


# ---- loading -----------------------------------------------------------------------------------

def config_dir():
    return resources.files("maeast") / "configs"


def shipped_configs(prefix: str = "pretrain_") -> list[str]:
    """Names of the pretraining YAML configs shipped inside the package (fine-tuning ones have their own)."""
    return sorted(p.name[:-5] for p in config_dir().iterdir() if p.name.endswith(".yaml") and p.name.startswith(prefix))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or a shipped name ('pretrain_patch_random', also '..._config' or '.yaml' as the seed wrote)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml").removesuffix("_config")
    shipped = config_dir() / f"{name}.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    raise MaeastError(f"config {str(name_or_path)!r} is neither a YAML file nor a shipped config; "
                      f"shipped: {', '.join(shipped_configs())}")


def expand_model(section: dict) -> dict:
    """A model section with an optional `preset` -> plain ModelConfig fields (preset, then the rest)."""
    section = dict(section)
    section.pop("autocast", None)  # runs before maeast.precision decided precision in one place
    preset = section.pop("preset", None)
    if preset is None:
        return section
    if preset not in PRESETS:
        raise MaeastError(f"config model.preset {preset!r} unknown; choose one of {', '.join(PRESETS)}")
    return {**PRESETS[preset], **section}


def build_config(data: dict) -> TrainConfig:
    """TrainConfig from a (partial) nested dict over the defaults."""
    data = dict(data)
    if "model" in data:
        if not isinstance(data["model"], dict):
            raise MaeastError("config model must be a mapping of ModelConfig fields (and an optional preset)")
        data["model"] = expand_model(data["model"])
    return from_dict(TrainConfig, merge(to_dict(TrainConfig()), data))


def load_config(name_or_path: str | Path, overrides: list[str] | dict | None = None) -> TrainConfig:
    """A shipped name or YAML path, with dotted overrides (`['--optim.lr', '3e-4']` or a nested dict)."""
    data = load_yaml(resolve_config_path(name_or_path))
    extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides or []))
    if "model" in data and "model" in extra and "preset" in extra["model"]:
        data["model"] = {k: v for k, v in data["model"].items() if k != "preset"}
    return build_config(merge(data, extra))


def save_config(cfg: TrainConfig, path: Path) -> None:
    save_yaml(cfg, path)


def _positive(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise MaeastError(f"{name} {value!r} must be a positive number")


def _non_negative(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise MaeastError(f"{name} {value!r} must be a number >= 0")


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MaeastError(f"{name} {value!r} must be an integer >= 1")
