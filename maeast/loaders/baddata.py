"""Bad data as the loaders report it: skipped (one line on stderr naming shard and key, and a counter)
or failed (a MaeastError), by loader.on_error; quiet while a resumed worker replays its plan."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from maeast.errors import MaeastError
from maeast.loaders.state import new_stats

log = logging.getLogger("maeast.data")
"""One line each on stderr: "maeast: skipped sample KEY of shard NAME: why"."""


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a line is logged (test captures included)."""

    stream = property(lambda self: sys.stderr, lambda self, value: None)


if not log.handlers:
    _handler = _Stderr()
    _handler.setFormatter(logging.Formatter("maeast: %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False


@dataclass
class Errors:
    """Skip-or-fail policy and the counters; quiet while a resumed worker replays its plan."""

    on_error: str
    stats: dict[str, int] = field(default_factory=new_stats)
    live: bool = True

    def bad(self, kind: str, what: str, why: str) -> None:
        if self.on_error == "fail":
            raise MaeastError(f"{what}: {why} (set loader.on_error: skip to skip bad data)")
        if self.live:
            self.stats[kind] += 1
            log.warning("skipped %s: %s", what, " ".join(why.split()))

    def count(self, kind: str) -> None:
        if self.live:
            self.stats[kind] += 1

    def note(self, kind: str, line: str) -> None:
        """Count and report something recovered from (never a failure)."""
        if self.live:
            self.stats[kind] += 1
            log.warning("%s", line)
