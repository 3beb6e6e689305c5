"""The shared sections of every run's config: the optimizer, its schedule and the run itself.

    OptimConfig      AdamW and the global batch it steps on
    ScheduleConfig   warmup, then polynomial decay over optimizer steps
    RunConfig        the folder, seed, checkpoints kept, log cadence, threads, where a session stops, the key
                     trace, the collective timeout, what a folder holding a run means (resume) and the
                     grace of a stop signal: what maeast.train.run.Run owns for every recipe

A recipe's config (maeast.pretrain.config, maeast.finetune.config) embeds these, with its own defaults where
they differ, and adds its own sections; the loaders' LoaderConfig is its data section. Defaults here are
the official MAE-AST pretraining's (AlanBaade/MAE-AST-Public config/pretrain/mae_ast.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from maeast.errors import MaeastError

RESUME_MODES = ("no", "must", "auto")
"""run.resume: refuse a folder that holds a run, continue it (refuse one without), continue it if there is one."""


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
    data.batch_size and the number of processes. With data.max_tokens, clips of batch_size-clip batches:
    global_batch / batch_size batches a step (the paper presets: 160 / 5 = 32, the official 32 GPUs)."""
    layer_decay: float = 1.0
    """Layer-wise lr decay: encoder layer l (0 = the token projection, depth = the last block) gets
    lr x layer_decay ** (depth + 1 - l); 1 is off (pretraining; SSAST's fine-tuning)."""
    head_lr: float = 1.0
    """lr multiplier of the parameters outside the encoder (a fine-tuning head; in pretraining the decoder)."""

    def __post_init__(self):
        positive("optim.lr", self.lr)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise MaeastError(f"optim.betas {list(self.betas)} must be two numbers in [0, 1)")
        positive("optim.eps", self.eps)
        non_negative("optim.weight_decay", self.weight_decay)
        non_negative("optim.clip_grad", self.clip_grad)
        positive_int("optim.global_batch", self.global_batch)
        if not 0.0 < self.layer_decay <= 1.0:
            raise MaeastError(f"optim.layer_decay {self.layer_decay} must be in (0, 1]")
        positive("optim.head_lr", self.head_lr)


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
        positive_int("schedule.steps", self.steps)
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps < self.steps:
            raise MaeastError(f"schedule.warmup_steps {self.warmup_steps} must be in [0, schedule.steps={self.steps})")
        positive("schedule.power", self.power)
        non_negative("schedule.end_lr", self.end_lr)


@dataclass
class RunConfig:
    """What every run has, pretraining or fine-tuning: its folder, seed, checkpoints, log, threads, where this
    session stops, the key trace, how long a collective waits for a dead process, whether it continues the run
    its folder holds and how long a stop signal may take."""

    dir: str | None = None
    """Run directory."""
    seed: int = 0
    """Seed of the initial weights, the masks, dropout and layerdrop (the loader has data.seed)."""
    keep: int = 2
    """Checkpoints kept (the oldest are deleted once a newer one is complete)."""
    log_every: int = 1
    """Write the JSONL log and tensorboard every this many optimizer steps."""
    threads: int | None = None
    """torch threads per process; None: this process's share of the node's cores, less its loader workers'."""
    stop_at: int | None = None
    """Stop (with a checkpoint) after this optimizer step while the schedule still runs to its end: splits a
    run into sessions that `--resume` continues (fine-tuning: a step of the fold being trained)."""
    trace_keys: bool = False
    """Write the key of every clip each process trains on to keys/rank{r}.tsv (step, micro-batch place, key;
    for audits: every clip exactly once per epoch, across resumes)."""
    collective_timeout: float = 300.0
    """Seconds a collective (all-reduce, barrier) may wait for the other processes before the run stops
    with a line naming the processes that failed, the last step and the last good checkpoint (the
    backend's own default is 30 minutes). Raise it when a save or an evaluation takes longer."""
    resume: str = "no"
    """What to do with a run folder that already holds a run: "no" (refuse it: a new run needs a new
    folder), "must" (continue its latest checkpoint, refuse a folder without one; what --resume sets), "auto"
    (continue it when it has a complete checkpoint, else start fresh: for launchers that restart or requeue
    the same command, e.g. torchrun --max-restarts or Slurm --requeue). Continuing checks the config against
    the run's; --resume with run.resume auto is auto."""
    preempt_grace: float = 120.0
    """Seconds after a SIGTERM or SIGUSR1 (preemption, a time limit) within which the run must have saved its
    checkpoint at the next step boundary and exited (code 75, "restart me"); past it, or on a second signal
    (5 s or more after the first), the process exits at once with the same code (checkpoints are atomic: the
    last complete one stays whole).
    Keep it under the scheduler's kill delay (Slurm's --signal=B:TERM@SECONDS, KillWait)."""

    def __post_init__(self):
        if self.dir == "":
            raise MaeastError("run.dir is empty; give the run directory")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise MaeastError(f"run.seed {self.seed!r} must be a non-negative integer")
        for name in ("keep", "log_every"):
            positive_int(f"run.{name}", getattr(self, name))
        if self.threads is not None:
            positive_int("run.threads", self.threads)
        if self.stop_at is not None:
            positive_int("run.stop_at", self.stop_at)
        positive("run.collective_timeout", self.collective_timeout)
        if not isinstance(self.trace_keys, bool):
            raise MaeastError(f"run.trace_keys {self.trace_keys!r} must be true or false")
        if str(self.resume).lower() in ("no", "false", "off"):  # YAML reads a bare no as false
            self.resume = "no"
        if self.resume not in RESUME_MODES:
            raise MaeastError(f"run.resume {self.resume!r} unknown; use one of: {', '.join(RESUME_MODES)}")
        positive("run.preempt_grace", self.preempt_grace)


def accumulation(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Micro-batches each process runs per optimizer step, so that a step sees global_batch clips."""
    per_pass = micro_batch * world_size
    if global_batch % per_pass:
        fits = [w for w in range(1, 257) if global_batch % (micro_batch * w) == 0]
        raise MaeastError(f"optim.global_batch {global_batch} is not a multiple of data.batch_size {micro_batch} x "
                          f"{world_size} processes; use a process count in {fits[:8]} or change data.batch_size")
    return global_batch // per_pass


# ---- shipped YAMLs ------------------------------------------------------------------------------

def config_dir():
    return resources.files("maeast") / "configs"


def shipped_configs(prefix: str = "pretrain_") -> list[str]:
    """Names of the YAML configs shipped inside the package whose name starts with prefix."""
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


def renamed(data: dict, names: dict[str, str | None], saved: bool) -> dict:
    """A config dict with the keys renamed since (names: old "section.key" -> new "section.key", or None for a
    key no longer offered) moved to their new names, or dropped, when `saved` (a run folder's config.yaml,
    written in its day); else refused in one line naming the fix (a YAML or an override of today)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old, new in names.items():
        section, key = old.split(".")
        if isinstance(out.get(section), dict) and key in out[section]:
            if not saved:
                raise MaeastError(f"config key {old} is now {new} (its unit is in its name): rename it" if new else
                                  f"config key {old} is not one of this recipe's (it never had an effect here): "
                                  f"delete it")
            value = out[section].pop(key)
            if new:
                out[section][new.split(".")[1]] = value
    return out


# ---- checks -------------------------------------------------------------------------------------

def positive(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise MaeastError(f"{name} {value!r} must be a positive number")


def non_negative(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise MaeastError(f"{name} {value!r} must be a number >= 0")


def positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MaeastError(f"{name} {value!r} must be an integer >= 1")
