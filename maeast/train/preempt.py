"""Signals are events, not crashes: SIGTERM and SIGUSR1 (a scheduler's preemption or time limit) ask a run to stop.

    with stop_requests(grace_s, where):          # Run.session (and a recipe's wider scope): handlers in, the
        ...                                       # previous ones back on exit
        votes()                                   # this process's requests, one figure per signal: the trainer
                                                  # sums them in its one per-step all-reduce
    raise Preempted(line)                         # the process exits EXIT_RESTART (75): "restart me"

A signal only records a request. The step loop reads it at the next step boundary, where every process
learns (from the step's all-reduce) whether any of them was asked, so all stop after the same step, save a
checkpoint there and exit with EXIT_RESTART; the launcher (torchrun --max-restarts, Slurm --requeue) decides
what happens next, and `--run.resume auto` continues the run. A second signal (SAME_REQUEST_S or more after the
first), or run.preempt_grace seconds after the first without the process having finished its save, ends the
process at once with the same code.
Nothing is corrupted by that: checkpoints are atomic (maeast.train.checkpoint: a save becomes visible only once
every process has written it), so a kill mid-save leaves the previous checkpoint whole, and the next start
clears the half-written folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Callable

from maeast.errors import MaeastError

EXIT_RESTART = 75
"""The exit code of a run stopped by a signal (EX_TEMPFAIL of sysexits.h: a temporary failure, try again)."""

STOP_SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGUSR1": signal.SIGUSR1}
"""The signals that ask a run to save and stop (Slurm sends SIGTERM at preemption and at the time limit, or
the signal of --signal, e.g. USR1, before it; torchrun forwards SIGTERM to its workers)."""


SAME_REQUEST_S = 5.0
"""Signals within this many seconds of the first are the same request: Slurm signals every process of a job
step, and torchrun forwards the SIGTERM it got to its workers too, so a worker gets it twice at once."""


class Preempted(MaeastError):
    """A signal stopped the run after a checkpoint: exit with `exit_code` so that the launcher restarts it."""

    exit_code = EXIT_RESTART


class _Requests:
    """The process's stop requests and the handlers that record them (one per process: signals are)."""

    def __init__(self):
        self.received: list[str] = []  # the stop signals this process got, in order
        self.scopes: list[tuple[float, Callable[[], str]]] = []  # (grace, where) of each open scope, innermost last
        self.previous: dict[int, object] = {}
        self.pid: int | None = None
        self.timer: threading.Timer | None = None
        self.first = 0.0  # time.monotonic() of the first request


_requests = _Requests()


def votes() -> dict[str, float]:
    """This process's stop requests: 1.0 for each stop signal it received, else 0.0 (summed over processes)."""
    return {name: float(name in _requests.received) for name in STOP_SIGNALS}


def requested() -> list[str]:
    """The stop signals this process received (in the current scope)."""
    return list(_requests.received)


@contextlib.contextmanager
def stop_requests(grace_s: float, where: Callable[[], str] = lambda: "outside the training steps"):
    """Record SIGTERM and SIGUSR1 as stop requests while open (scopes nest: the outermost installs the handlers
    and restores the previous ones on exit, forgetting the requests; `where` describes the run for the line of
    an exit at once). Only the main thread can take signals: elsewhere nothing is installed."""
    r = _requests
    outermost = not r.scopes
    if outermost and threading.current_thread() is not threading.main_thread():
        yield
        return
    if outermost:
        r.pid, r.received = os.getpid(), []
        r.previous = {sig: signal.signal(sig, _on_signal) for sig in STOP_SIGNALS.values()}
    r.scopes.append((grace_s, where))
    try:
        yield
    finally:
        r.scopes.pop()
        if outermost:
            if r.timer is not None:
                r.timer.cancel()
            for sig, handler in r.previous.items():
                signal.signal(sig, handler)
            r.received, r.previous, r.timer = [], {}, None


def _on_signal(signum: int, frame) -> None:
    r = _requests
    if os.getpid() != r.pid:
        # A forked loader worker inherited the handler, and a launcher that signals the whole process group
        # (torchrun closing its workers, Slurm signalling a step) reaches it too: it lets the signal pass, so its
        # main process can finish the step and save; it stops with its main process, as loader workers do.
        return
    name = signal.Signals(signum).name
    if r.received:
        if time.monotonic() - r.first < SAME_REQUEST_S:  # delivered twice: the scheduler's and the launcher's
            r.received += [name] if name not in r.received else []
            return
        r.received.append(name)
        exit_now(f"a second signal ({name}) came")
    r.received, r.first = [name], time.monotonic()
    grace_s = r.scopes[-1][0] if r.scopes else 0.0
    r.timer = threading.Timer(grace_s, exit_now, args=(f"run.preempt_grace ({grace_s:g} s) ran out",))
    r.timer.daemon = True
    r.timer.start()


def exit_now(reason: str) -> None:
    """End the process at once with EXIT_RESTART, after one line on stderr (from the handler or the grace timer,
    whatever the main thread is doing: a save, an evaluation, a collective waiting for a peer)."""
    r = _requests
    where = r.scopes[-1][1]() if r.scopes else "outside the training steps"
    names = ", ".join(dict.fromkeys(r.received))
    sys.stderr.write(f"preempted ({names}) {where}: {reason} before the checkpoint was saved; stopped at once "
                     f"(checkpoints are atomic: nothing half-written is ever loaded); run again with --run.resume "
                     f"auto to continue\n")
    sys.stderr.flush()
    os._exit(EXIT_RESTART)
