"""The Run: everything a training run does around its steps, for every recipe.

    start(cfg.run)                                        # the process group, with run.collective_timeout
    run = Run(cfg.run, folder, console, label="pretrain")
    checkpoint = run.resumable(resume)                    # the latest checkpoint, after run.resume / --resume
    check_resume(saved_cfg, cfg, where, RESUME_FREE + RECIPE_FREE)   # when it continues a run
    run.prepare({"config.yaml": cfg})                     # the folder made, half-written saves cleared, files written
    with run.session(step, last):                         # log cut back, logger, key trace, stop signals; a dead
        record = trainer.step(...)                        # peer: one line; a signal: Preempted, one line
        run.log(record)
        if run.due(step, every) or run.stopping(step): ...
        run.save(engine, step, state)                     # atomic checkpoint, key trace flushed

A run folder holds config.yaml, log.jsonl, tensorboard/, checkpoints/ (maeast.train.checkpoint) and, with
run.trace_keys, keys/rank{r}.tsv. A recipe (maeast.pretrain, maeast.finetune) hands the Run its config,
folder and checkpoints' contents; the Run owns the folder's rules (run.resume: a folder holding a run is
refused, continued, or continued if it holds one, always with the run's own config, less the keys that
change neither the weights nor the loss curve), the logger, the save, log and evaluation cadence, where a
session stops (run.stop_at, or a stop signal: maeast.train.preempt), the key trace (run.trace_keys), how
long a collective waits for a dead process (run.collective_timeout) and the one line every surviving
process stops with. Nothing here imports a recipe.
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
from maeast.train.checkpoint import clear_partial, save_checkpoint, tag_of
from maeast.train.config import RunConfig
from maeast.train.logging import RunLogger, cut_log
from maeast.train.preempt import Preempted, stop_requests, votes

RESUME_FREE = ("run.stop_at", "run.log_every", "run.threads", "run.keep", "run.trace_keys", "run.collective_timeout",
               "run.resume", "run.preempt_grace", "model.compile")
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
        self.preempted: list[str] = []  # the stop signals any process got, agreed at step self.preempted_at
        self.preempted_at: int | None = None
        self.saved: Path | None = None  # the checkpoint this session saved last

    @property
    def name(self) -> str:
        return self.dir.name

    def latest(self) -> Path | None:
        return latest_checkpoint(self.dir)

    def resumable(self, resume: bool = False, what: str = "a run") -> Path | None:
        """The checkpoint to continue from (None: a new run), after the folder's rules (run.resume; the --resume
        flag means "must"): see `continues`."""
        checkpoint = self.latest()
        held = None if checkpoint is None else f"checkpoint {checkpoint.name}"
        go = continues(resume_mode(self.cfg, resume), self.dir, held, what, "it has no complete checkpoint")
        return checkpoint if go else None

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
        (run.trace_keys), SIGTERM and SIGUSR1 taken as stop requests (maeast.train.preempt); a collective that
        fails because a process died or stalled ends every survivor with one line (MaeastError) naming the dead
        ranks, the last step and the last good checkpoint; a session that a stop request ended (after its
        checkpoint) raises Preempted, one line, on every process."""
        self.step, self.last = step, last
        if dist.is_main():
            self.dir.mkdir(parents=True, exist_ok=True)
            cut_log(self.dir, step)
        self.trace = trace_keys(self.dir, dist.rank(), step) if self.cfg.trace_keys else None
        self.logger = RunLogger(self.dir, step, last, dist.is_main(), self.console, label=self.label)
        try:
            with stop_requests(self.cfg.preempt_grace, self.where):
                yield self
            if self.preempted:
                message = self.preempted_line()
                self.logger.write({"kind": "event", "message": message, "step": self.step})  # the console: the error
                raise Preempted(message)
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

    def where(self) -> str:
        """Where the session is, for the line of a process that a signal ends at once."""
        good = self.latest()
        return f"at step {self.step} of {self.dir} (its last complete checkpoint: {good.name if good else 'none'})"

    def preempted_line(self) -> str:
        signals = ", ".join(self.preempted)
        if self.saved is None or self.saved.name != tag_of(self.preempted_at):
            good = self.latest()
            return (f"preempted ({signals}) at step {self.preempted_at}: no checkpoint saved there, the last good one "
                    f"is {good if good else 'none'}; run again with --run.resume auto to continue")
        return (f"preempted ({signals}) at step {self.preempted_at}: checkpoint {self.saved} saved; run again with "
                f"--run.resume auto to continue")

    # ---- within a session ----------------------------------------------------------------------

    def due(self, count: int, every: int | None, last: int | None = None) -> bool:
        """Whether something done every `every` steps (0 or None: never) is due after step `count`, always at
        the session's last step; with `last`, the same in other units (fine-tuning's epochs)."""
        return bool(every) and (count % every == 0 or count == (self.last if last is None else last))

    def stopping(self, step: int) -> bool:
        """Whether this session stops after `step` (with a checkpoint): run.stop_at (a loop that runs to it stops
        by itself), or a stop request that the processes agreed on at this step."""
        return (self.cfg.stop_at is not None and step == self.cfg.stop_at) or step == self.preempted_at

    def stop_votes(self) -> dict[str, float]:
        """This process's stop requests (signal name -> 1.0 if it got that signal), for the step's all-reduce."""
        return votes()

    def agree(self, step: int, summed: dict[str, float]) -> None:
        """After step `step`'s all-reduce: the stop requests summed over the processes; any -> every process
        stops after this step (stopping(step) is true)."""
        got = [name for name, count in summed.items() if count > 0]
        if got and self.preempted_at is None:
            self.preempted, self.preempted_at = got, step

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
        self.saved = saved
        self.event(f"checkpoint {saved}", step=step)
        return saved


# ---- the resume guard ---------------------------------------------------------------------------

def resume_mode(cfg: RunConfig, flag: bool = False) -> str:
    """run.resume, with the --resume flag folded in: the flag means "must", and run.resume auto wins over it."""
    return "must" if flag and cfg.resume != "auto" else cfg.resume


def continues(mode: str, folder: Path, held: str | None, what: str = "a run", lacking: str = "it holds no run",
              resumable: bool | None = None) -> bool:
    """The folder rules of every recipe, one decision: whether this session continues the run that `folder`
    holds. held: what the folder holds (a checkpoint, a fold), None: nothing to continue; resumable: whether
    "must" finds something to continue (default: held). "no" refuses a folder that holds a run, "must" one
    that holds nothing to continue (`lacking` says why), "auto" continues what is there, else starts fresh.
    Continuing then checks the config against the run's (check_resume)."""
    resumable = held is not None if resumable is None else resumable
    if mode == "must" and not resumable:
        raise MaeastError(f"nothing to resume in {folder}: {lacking}; run without --resume (or with --run.resume "
                          f"auto, which starts it fresh)")
    if mode == "no" and held is not None:
        raise MaeastError(f"{folder} already holds {what} ({held}); pass --resume (or --run.resume auto) to continue "
                          f"it or set run.dir to a new folder")
    return mode == "must" or held is not None


def config_changes(saved, now, free: tuple[str, ...] = RESUME_FREE) -> list[tuple[str, object, object]]:
    """(key, saved value, now's value) for every dotted key of two configs that differs, less the free keys."""
    a, b = _flat(to_dict(saved)), _flat(to_dict(now))
    return [(k, a.get(k), b[k]) for k in b if b[k] != a.get(k) and k not in free]


def check_resume(saved, now, where: Path, free: tuple[str, ...] = RESUME_FREE) -> None:
    """A resumed run must keep its config (less the free keys); one line names the first change."""
    changed = config_changes(saved, now, free)
    if changed:
        key, was, value = changed[0]
        raise MaeastError(f"{where.parent} holds a run with a different config (resuming it: --resume or run.resume "
                          f"auto): {key} is {value!r}, the run has {was!r}; resume with the run's config ({where}) "
                          f"or set run.dir to a new folder")


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
