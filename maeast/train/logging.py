"""What a run reports, on rank 0 only: rich progress, tensorboard scalars and a JSONL log.

RUN/log.jsonl holds one JSON object per line: {"kind": "train", "step", ..., "eta_s", "time"} with
whatever figures the trainer's step gave (loss, its parts, lr, grad_norm, clips_per_s, data_wait, ...)
every run.log_every steps, {"kind": "eval", "step", ...} at each evaluation, {"kind": "probe", "step", ...} at
each online probe (maeast.pretrain.probe), and {"kind": "event", ...}
for starts, resumes, checkpoints and stops; tensorboard gets every number as train/KEY or eval/KEY.
A resumed run first cuts the log back to its checkpoint's step, so the file is one continuous curve.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from maeast.files import write_text

LOG_NAME = "log.jsonl"


def read_log(run_dir: Path) -> list[dict]:
    """The records of RUN/log.jsonl (a torn last line from a kill is skipped)."""
    path = Path(run_dir) / LOG_NAME
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def cut_log(run_dir: Path, step: int) -> None:
    """Keep only the records up to `step` (a resumed run continues from there)."""
    path = Path(run_dir) / LOG_NAME
    if not path.is_file():
        return
    kept = [r for r in read_log(run_dir) if r.get("step", 0) <= step]
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class RunLogger:
    """Rank 0's reporting; on other ranks every method is a no-op."""

    def __init__(self, run_dir: Path, start_step: int, last_step: int, enabled: bool,
                 console: Console | None = None, tensorboard: bool = True, label: str = "pretrain"):
        self.enabled = enabled
        self.start_step, self.last_step = start_step, last_step
        self.console = console or Console(stderr=True)
        self.started = time.perf_counter()
        if not enabled:
            return
        run_dir = Path(run_dir)
        self.jsonl = open(run_dir / LOG_NAME, "a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
        self.progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                 console=self.console, transient=False, disable=not self.console.is_terminal)
        self.task = self.progress.add_task(label, total=last_step, completed=start_step, info="")
        self.progress.start()
        self.plain_every = max(1, (last_step - start_step) // 10)

    def write(self, record: dict) -> None:
        if self.enabled:
            self.jsonl.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")
            self.jsonl.flush()

    def train(self, record: dict, log: bool) -> None:
        """One optimizer step's figures; written to JSONL/tensorboard when `log`."""
        if not self.enabled:
            return
        step = record["step"]
        done = step - self.start_step
        elapsed = time.perf_counter() - self.started
        record["eta_s"] = round(elapsed / max(done, 1) * (self.last_step - step), 1)
        parts = " ".join(f"{k} {record[k]:.4g}" for k in ("loss", "mse", "infonce") if k in record)
        info = (f"{parts} | lr {record['lr']:.3g} | {record['clips_per_s']:.1f} clips/s | "
                f"data wait {100 * record['data_wait']:.0f}%")
        self.progress.update(self.task, completed=step, info=info)
        if not self.console.is_terminal and (done % self.plain_every == 0 or step == self.last_step):
            self.console.print(f"step {step}/{self.last_step} {info} | eta {_duration(record['eta_s'])}",
                               highlight=False, soft_wrap=True)
        if log:
            self._scalars("train", record)

    def eval(self, record: dict, message: str, kind: str = "eval") -> None:
        """One evaluation's figures (JSONL, tensorboard: kind/KEY) and its line for the console."""
        if not self.enabled:
            return
        self._scalars(kind, record)
        self.console.print(message, highlight=False, soft_wrap=True)

    def _scalars(self, kind: str, record: dict) -> None:
        """The record as a JSONL line, and each of its numbers as a tensorboard scalar kind/key."""
        self.write({"kind": kind, **record})
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{kind}/{key}", value, record["step"])

    def event(self, message: str, **fields) -> None:
        if not self.enabled:
            return
        self.write({"kind": "event", "message": message, **fields})
        self.console.print(message, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self.progress.stop()
        if self.tb is not None:
            self.tb.close()
        self.jsonl.close()
        self.enabled = False


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
