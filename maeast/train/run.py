"""The Run: everything a training run does around its steps, for every recipe.

    start(cfg.run)                                        # the process group, with run.collective_timeout
    run = Run(cfg.run, folder, console, label="pretrain")
    checkpoint = run.resumable(resume)                    # the latest checkpoint, checked against --resume
    run.prepare(saved=..., now=cfg, free=RECIPE_FREE, files={"config.yaml": cfg})
    with run.session(step, last):                         # log cut back, logger, key trace; a dead peer: one line
        record = trainer.step(...)
        run.log(record)
        if run.due(step, every): ...
        run.save(engine, step, state)                     # atomic checkpoint, key trace flushed

A run folder holds config.yaml, log.jsonl, tensorboard/, checkpoints/ (maeast.train.checkpoint) and, with
run.trace_keys, keys/rank{r}.tsv. A recipe (maeast.pretrain, maeast.finetune) hands the Run its config,
folder and checkpoints' contents; the Run owns the folder's rules (a run is resumed only with --resume and
its own config, less the keys that change neither the weights nor the loss curve), the logger, the save,
log and evaluation cadence, where a session stops (run.stop_at), the key trace (run.trace_keys), how long
a collective waits for a dead process (run.collective_timeout) and the one line every surviving process
stops with. Nothing here imports a recipe.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from maeast.artifacts import latest_checkpoint
from maeast.configio import save_yaml, to_dict
from maeast.errors import MaeastError
from maeast.files import write_json
from maeast.train import distributed as dist
from maeast.train.checkpoint import clear_partial, save_checkpoint
from maeast.train.config import RunConfig
from maeast.train.logging import RunLogger, cut_log

RESUME_FREE = ("run.stop_at", "run.log_every", "run.threads", "run.keep", "run.trace_keys", "run.collective_timeout",
               "model.compile")
"""Keys of the run section a resumed run may change: they touch neither the weights nor the loss curve.
Each recipe adds its own (its save and evaluation cadence, its process layout)."""


def start(run: RunConfig) -> None:
    """Start the process group (maeast.train.engine), its collectives giving up after run.collective_timeout."""
    from maeast.train.engine import init_distributed  # deepspeed only from here on
    init_distributed(run.collective_timeout)


class Run:
    """One run folder's session: its rules, logger, cadence, key trace and checkpoints."""

    def __init__(self, cfg: RunConfig, folder: Path, console=None, label: str = "run"):
        self.cfg, self.dir, self.console, self.label = cfg, Path(folder), console, label
        self.logger: RunLogger | None = None
        self.trace = None
        self.step, self.last = 0, 0

    @property
    def name(self) -> str:
        return self.dir.name

    def latest(self) -> Path | None:
        return latest_checkpoint(self.dir)

    def resumable(self, resume: bool, what: str = "a run") -> Path | None:
        """The checkpoint to continue from (None: a new run), after the folder's rules: --resume needs a
        checkpoint, and a folder that holds one needs --resume."""
        checkpoint = self.latest()
        if resume and checkpoint is None:
            raise MaeastError(f"nothing to resume in {self.dir}: it has no complete checkpoint; run without --resume")
        if not resume and checkpoint is not None:
            raise MaeastError(f"{self.dir} already holds {what} (checkpoint {checkpoint.name}); pass --resume to "
                              f"continue it or set run.dir to a new folder")
        return checkpoint

    def prepare(self, files: dict[str, object]) -> None:
        """Every process: rank 0 makes the folder, clears what a kill left half-written and writes `files`
        (name -> a config dataclass, saved as YAML, or a dict, saved as JSON)."""
        dist.barrier()
        if dist.is_main():
            self.dir.mkdir(parents=True, exist_ok=True)
            clear_partial(self.dir)
            dist.clear_roll_call(self.dir)
            for name, value in files.items():
                if name.endswith(".yaml"):
                    save_yaml(value, self.dir / name)
                else:
                    write_json(self.dir / name, value)
        dist.barrier()

    @contextlib.contextmanager
    def session(self, step: int, last: int):
        """Steps step+1 .. last of this session: the log cut back to `step`, rank 0's logger, the key trace
        (run.trace_keys); a collective that fails because a process died or stalled ends every survivor
        with one line (MaeastError) naming the dead ranks, the last step and the last good checkpoint."""
        self.step, self.last = step, last
        if dist.is_main():
            self.dir.mkdir(parents=True, exist_ok=True)
            cut_log(self.dir, step)
        self.trace = trace_keys(self.dir, dist.rank(), step) if self.cfg.trace_keys else None
        self.logger = RunLogger(self.dir, step, last, dist.is_main(), self.console, label=self.label)
        try:
            yield self
        except RuntimeError as e:  # a collective failed: another process died or stalled past run.collective_timeout
            if not dist.is_peer_failure(e):
                raise
            message = peer_failure(self.dir, self.step, e)
            self.logger.write({"kind": "event", "message": message, "step": self.step})  # the console gets the error
            raise MaeastError(message) from None
        finally:
            self.logger.close()
            if self.trace is not None:
                self.trace.close()

    # ---- within a session ----------------------------------------------------------------------

    def due(self, count: int, every: int | None, last: int | None = None) -> bool:
        """Whether something done every `every` steps (0 or None: never) is due after step `count`, always at
        the session's last step; with `last`, the same in other units (fine-tuning's epochs)."""
        return bool(every) and (count % every == 0 or count == (self.last if last is None else last))

    def stopping(self, step: int) -> bool:
        """Whether this session stops after `step` (run.stop_at; a loop that runs to it stops by itself)."""
        return self.cfg.stop_at is not None and step == self.cfg.stop_at

    def log(self, record: dict, **extra) -> None:
        """One optimizer step's figures: the progress line, and the log every run.log_every steps."""
        self.step = record["step"]
        self.logger.train({**record, **extra}, log=self.due(record["step"], self.cfg.log_every))

    def event(self, message: str, **fields) -> None:
        self.logger.event(message, **fields)

    def eval(self, record: dict, message: str, kind: str = "eval") -> None:
        self.logger.eval(record, message, kind)

    def save(self, engine, step: int, state: dict, meta: dict | None = None, extra=None) -> Path:
        """An atomic checkpoint of every process at `step` (maeast.train.checkpoint.save_checkpoint), the key
        trace flushed first so that the checkpoint never holds a step the trace lacks."""
        if self.trace is not None:
            self.trace.flush()
        saved = save_checkpoint(engine, self.dir, step, state, meta, self.cfg.keep, extra=extra)
        self.event(f"checkpoint {saved}", step=step)
        return saved


# ---- the resume guard ---------------------------------------------------------------------------

def config_changes(saved, now, free: tuple[str, ...] = RESUME_FREE) -> list[tuple[str, object, object]]:
    """(key, saved value, now's value) for every dotted key of two configs that differs, less the free keys."""
    a, b = _flat(to_dict(saved)), _flat(to_dict(now))
    return [(k, a.get(k), b[k]) for k in b if b[k] != a.get(k) and k not in free]


def check_resume(saved, now, where: Path, free: tuple[str, ...] = RESUME_FREE) -> None:
    """A resumed run must keep its config (less the free keys); one line names the first change."""
    changed = config_changes(saved, now, free)
    if changed:
        key, was, value = changed[0]
        raise MaeastError(f"--resume with a different config: {key} is {value!r}, the run has {was!r}; resume with "
                          f"the run's config ({where})")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# ---- when a process dies, and the key trace ------------------------------------------------------

def peer_failure(run_dir: Path, step: int, error: RuntimeError) -> str:
    """The one line every surviving process stops with when a collective failed."""
    gone = dist.missing_ranks(run_dir)
    who = (f"rank(s) {', '.join(map(str, gone))} of {dist.world_size()} stopped answering" if gone else
           f"a collective failed on all {dist.world_size()} processes")
    good = latest_checkpoint(run_dir)
    lines = str(error).strip().splitlines()
    first = re.sub(r"\[[^\]]*\]:?\d*", "", lines[0]).split(". ")[0] if lines else type(error).__name__  # no [file:line]
    first = " ".join(first.split())
    return (f"{who} (rank {dist.rank()}: {first[:160]}); the last completed step is {step}, the last good checkpoint "
            f"{good if good else 'none (no checkpoint yet)'}: --resume continues from it, on any number of processes")


def trace_keys(run_dir: Path, rank: int, step: int):
    """RUN/keys/rank{r}.tsv (step, place, key per line), every rank's file cut back to `step` by rank 0 on
    resume (a resume on fewer processes leaves files no process appends to); an open file."""
    folder = Path(run_dir) / "keys"
    if dist.is_main():
        folder.mkdir(parents=True, exist_ok=True)
        for path in folder.glob("rank*.tsv"):
            kept = [line for line in path.read_text().splitlines(keepends=True)
                    if line.endswith("\n") and int(line.split("\t", 1)[0]) <= step]
            path.write_text("".join(kept))
    dist.barrier()
    folder.mkdir(parents=True, exist_ok=True)
    return open(folder / f"rank{rank}.tsv", "a")
