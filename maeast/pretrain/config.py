"""PretrainConfig: every choice of a pretraining run in typed sections.

    cfg = load_config("pretrain_patch_random", ["--optim.lr", "3e-4"])  # a shipped name or a YAML path

Sections: model (maeast.model.ModelConfig; a YAML may name a `preset` whose fields the rest of the
section overrides), data (maeast.loaders.LoaderConfig: the training stream; data.batch_size is the
micro batch of one process), optim and schedule (maeast.train.config), eval and run (maeast.train.config's
RunConfig with pretraining's save cadence, in steps). Defaults are the official MAE-AST pretraining
(AlanBaade/MAE-AST-Public config/pretrain/mae_ast.yaml). Layering: dataclass defaults <- model preset <-
YAML <- dotted overrides; unknown keys are errors naming the key.

The DeepSpeed config is generated from these sections by maeast.train.ds_config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from maeast.configio import from_dict, load_yaml, merge, parse_overrides, save_yaml, to_dict
from maeast.errors import MaeastError
from maeast.features import get_config as get_fbank
from maeast.loaders.config import BatchConfig, LoaderConfig
from maeast.model.config import PRESETS, ModelConfig
from maeast.train.config import (OptimConfig, RunConfig, ScheduleConfig, positive, positive_int, renamed,
                                 resolve_config_path, shipped_configs)

__all__ = ["PretrainConfig", "EvalConfig", "PretrainRun", "build_config", "load_config", "save_config",
           "shipped_configs", "resolve_config_path"]


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
    """Score the online probe (maeast.pretrain.probe: a linear and a kNN probe on the frozen encoder's features of
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
        positive_int("eval.batches", self.batches)
        if not isinstance(self.probe_every, int) or self.probe_every < 0:
            raise MaeastError(f"eval.probe_every {self.probe_every!r} must be an integer >= 0 (0 turns the probe off)")
        if self.probe_every and not self.probe_shards:
            raise MaeastError("eval.probe_every is set but eval.probe_shards is not: give a labelled shard folder "
                              "(e.g. --eval.probe_shards shards/demo/keywords) or set eval.probe_every 0")
        positive_int("eval.probe_clips", self.probe_clips)
        positive("eval.probe_clip_seconds", self.probe_clip_seconds)


@dataclass
class PretrainRun(RunConfig):
    """Where the pretraining run lives and how often it saves, in optimizer steps."""

    dir: str = "runs/pretrain"
    """Run directory: config.yaml, ds_config.json, log.jsonl, tensorboard/, checkpoints/, encoder/."""
    save_every_steps: int = 25_000
    """Save a checkpoint every this many optimizer steps (and always at the end)."""

    def __post_init__(self):
        super().__post_init__()
        if not self.dir:
            raise MaeastError("run.dir is empty; give the run directory")
        positive_int("run.save_every_steps", self.save_every_steps)


def _default_data() -> BatchConfig:
    # The official mix: AudioSet and LibriSpeech, in proportion to their clip counts.
    return BatchConfig(shards=["shards/audioset", "shards/librispeech"], batch_size=8)


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: BatchConfig = field(default_factory=_default_data)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: PretrainRun = field(default_factory=PretrainRun)

    def __post_init__(self):
        n_mels = get_fbank(self.data.fbank).n_mels
        if n_mels != self.model.n_mels:
            raise MaeastError(f"data.fbank {self.data.fbank!r} gives {n_mels} mel bins but model.n_mels is "
                              f"{self.model.n_mels}; set model.n_mels: {n_mels}")
        if self.optim.global_batch % self.data.batch_size:
            raise MaeastError(f"optim.global_batch {self.optim.global_batch} is not a multiple of data.batch_size "
                              f"{self.data.batch_size} (the micro batch of one process)")
        if self.model.views > 1 and self.data.max_tokens is not None:
            raise MaeastError(f"model.views {self.model.views} with data.max_tokens: a max_tokens batch's clip count "
                              f"varies with length, so it cannot be split into views; set data.max_tokens null "
                              f"(a fixed data.batch_size) or model.views 1")
        for key, size in (("optim.global_batch", self.optim.global_batch), ("data.batch_size", self.data.batch_size)):
            if size % self.model.views:
                raise MaeastError(f"{key} {size} is not a multiple of model.views {self.model.views} (batch sizes "
                                  f"count masked views: {key} / model.views clips are read); make it one")
        if self.run.stop_at is not None and self.run.stop_at > self.schedule.steps:
            raise MaeastError(f"run.stop_at {self.run.stop_at} is past schedule.steps {self.schedule.steps}")
        self.loader_config()  # what data.backend cannot do is refused now, in one line

    @property
    def clips_per_step(self) -> int:
        """Clips one optimizer step reads: optim.global_batch counts views, model.views of each clip."""
        return self.optim.global_batch // self.model.views

    @property
    def global_batch_seconds(self) -> float:
        """Most audio one optimizer step holds (each batch is cropped to its shortest clip, capped); with
        data.max_tokens, the audio fairseq counts in it, at 16 kHz (its batches x max_tokens; a clip counts at most
        data.size_cap samples, so one longer than that holds more than it counts)."""
        if self.data.max_tokens is not None:
            return self.optim.global_batch // self.data.batch_size * self.data.max_tokens / 16000
        return self.clips_per_step * self.data.max_seconds

    @property
    def last_step(self) -> int:
        return self.run.stop_at or self.schedule.steps

    def loader_config(self) -> LoaderConfig:
        """The training stream's loader config (mode pretrain, on data.backend): data.batch_size / model.views
        clips a batch, each the model's micro-batch of data.batch_size views."""
        if self.model.views == 1:
            return self.data.loader()
        return self.data.loader(batch_size=self.data.batch_size // self.model.views)

    def eval_loader_config(self) -> LoaderConfig:
        """The held-out stream: the eval split, no shuffling, fixed seed, read in the process by the stream
        backend whatever data.backend is (the same features; a DALI pipeline per evaluation would cost more)."""
        return self.data.loader(backend="stream", shards=list(self.eval.shards or self.data.shards), split=self.eval.split,
                                weights=None if self.eval.shards else self.data.weights, shuffle_buffer=0,
                                num_workers=0, epoch_batches=self.eval.batches, seed=0)


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


RENAMED = {"run.save_every": "run.save_every_steps", **{f"data.{k}": None for k in (
    "mode", "clip_seconds", "random_crop", "pad_to_longest", "class_weights")}}
"""Keys renamed since a run folder may have been written (old -> new; None: a key pretraining never used,
no longer offered): maeast.train.config.renamed."""


def build_config(data: dict, saved: bool = False) -> PretrainConfig:
    """PretrainConfig from a (partial) nested dict over the defaults; saved: a run folder's config.yaml (keys
    renamed since are read under their new names)."""
    data = renamed(data, RENAMED, saved)
    if "model" in data:
        if not isinstance(data["model"], dict):
            raise MaeastError("config model must be a mapping of ModelConfig fields (and an optional preset)")
        data["model"] = expand_model(data["model"])
    return from_dict(PretrainConfig, merge(to_dict(PretrainConfig()), data))


def load_config(name_or_path: str | Path, overrides: list[str] | dict | None = None) -> PretrainConfig:
    """A shipped name or YAML path, with dotted overrides (`['--optim.lr', '3e-4']` or a nested dict)."""
    data = load_yaml(resolve_config_path(name_or_path))
    extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides or []))
    if "model" in data and "model" in extra and "preset" in extra["model"]:
        data["model"] = {k: v for k, v in data["model"].items() if k != "preset"}
    return build_config(merge(data, extra))


def save_config(cfg: PretrainConfig, path: Path) -> None:
    save_yaml(cfg, path)
