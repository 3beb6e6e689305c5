"""The one way the benchmarks time things, print a table and report their figures.

    bench = Bench("fbank", repeats=5, warmup=1)         # reads the 1-minute load average
    results = bench.measure({"a": fn_a, "b": fn_b})      # or measure(cases, repeats=..., warmup=...)
    bench.record("a_clips_per_s", results["a"].rate(clips), digits=1)
    bench.table("title", ["case", "clips/s"], [["a", spread(results["a"].rate(clips), ",.0f")]])
    bench.finish()                                      # load warning, then the JSON line, last on stdout

`measure` warms every case up (`warmup` untimed calls, or a warm_up function of its own), then times
`repeats` calls of each with time.perf_counter, the cases taking turns call by call, so that load that
comes and goes on a shared machine falls on all of them alike. A case may return a number (the work
it did, e.g. clips): `Result.rate()` divides it by each call's time. Every figure is the median of the
repeats; `record` also keeps its min and max, which go into the JSON's "spread" ({key: [min, max]}).

The 1-minute load average is read when the Bench is made and again in `finish`, and printed; above
half the cores before the run (other work on the machine), or after it above half the cores plus
what the benchmark itself adds (`own_load`), a warning says that the figures run low. The JSON object, always the last line of stdout, holds
"benchmark", the recorded figures, "spread", "repeats" and "warmup" (the Bench's defaults),
"load_avg" [before, after], "cpu_cores" and "busy" (whether the warning was printed).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Stats:
    """Median, extremes and quartiles of some samples."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, samples: Iterable[float]) -> Stats:
        xs = sorted(samples)
        if not xs:
            raise ValueError("no samples")
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0],) * 3
        return cls(statistics.median(xs), xs[0], xs[-1], q1, q3, len(xs))


@dataclass
class Result:
    """The timed calls of one case: their seconds and what each returned."""

    times: list[float]
    values: list[Any]

    @property
    def seconds(self) -> Stats:
        return Stats.of(self.times)

    def rate(self, units: float | None = None) -> Stats:
        """Units per second of each call: `units` per call, or the number each call returned."""
        done = [units] * len(self.times) if units is not None else self.values
        return Stats.of(u / t for u, t in zip(done, self.times))

    def stats(self, key: Callable[[Any], float] = float) -> Stats:
        """Statistics of what the calls returned (or of key(returned))."""
        return Stats.of(key(v) for v in self.values)


def spread(stats: Stats, fmt: str = ".3g") -> str:
    """'median (min-max)' for a table cell; the bare median when there was one sample."""
    if stats.n == 1:
        return format(stats.median, fmt)
    return f"{stats.median:{fmt}} ({stats.min:{fmt}}-{stats.max:{fmt}})"


def add_arguments(parser, repeats: int, warmup: int) -> None:
    """The --repeats and --warmup options, with this benchmark's defaults."""
    parser.add_argument("--repeats", type=int, default=repeats, help=f"timed runs of each case (default {repeats})")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed runs of each case first (default {warmup})")


class Bench:
    """One benchmark run: timing, the table, the figures, the load average and the final JSON line."""

    def __init__(self, name: str, repeats: int = 5, warmup: int = 1, console: Console | None = None) -> None:
        self.name, self.repeats, self.warmup = name, repeats, warmup
        self.console = console or Console(width=max(120, Console().width))
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.load_before = os.getloadavg()[0]
        self.figures: dict[str, Any] = {}
        self.spreads: dict[str, list[float]] = {}

    def status(self, text: str):
        return self.console.status(text) if self.console.is_terminal else nullcontext()

    def measure(self, cases: Mapping[str, Callable[[], Any]], repeats: int | None = None, warmup: int | None = None,
                warm_up: Mapping[str, Callable[[], Any]] | None = None,
                sync: Callable[[], None] | None = None, label: str = "timing") -> dict[str, Result]:
        """Warm up, then `repeats` timed calls of every case, the cases taking turns; sync() (e.g.
        torch.cuda.synchronize) runs after each call, inside the timing. warm_up[name], where given,
        replaces the case in its warm-up calls. repeats and warmup default to the Bench's."""
        repeats = self.repeats if repeats is None else repeats
        warmup = self.warmup if warmup is None else warmup
        if repeats < 1:
            raise ValueError("repeats must be at least 1")
        sync = sync or (lambda: None)
        results = {name: Result([], []) for name in cases}
        with self.status(f"{label}: {warmup} warm-up run(s), then {repeats} of each of {len(cases)}, in turns"):
            for _ in range(warmup):
                for name, fn in cases.items():
                    (warm_up or {}).get(name, fn)()
            sync()
            for _ in range(repeats):
                for name, fn in cases.items():
                    start = time.perf_counter()
                    value = fn()
                    sync()
                    results[name].times.append(time.perf_counter() - start)
                    results[name].values.append(value)
        return results

    def record(self, key: str, value: Stats | Any, digits: int | None = 3) -> None:
        """A figure for the JSON: a Stats goes in as its median, its min and max into "spread".
        A dotted key ("threads.1.ours") nests."""
        *path, last = key.split(".")
        node = self.figures
        for part in path:
            node = node.setdefault(part, {})
        if isinstance(value, Stats):
            r = (lambda x: round(x, digits)) if digits is not None else (lambda x: x)
            node[last] = r(value.median)
            if value.n > 1:
                self.spreads[key] = [r(value.min), r(value.max)]
        else:
            node[last] = round(value, digits) if isinstance(value, float) and digits is not None else value

    def update(self, figures: Mapping[str, Any]) -> None:
        for key, value in figures.items():
            self.record(key, value)

    def table(self, title: str, columns: list[str], rows: Iterable[Iterable[Any]], left: Iterable[str] = ()) -> None:
        """A table of strings; the columns in `left` (by default the first) are left-aligned."""
        left = set(left) or {columns[0]}
        table = Table(title=title)
        for column in columns:
            table.add_column(column, justify="left" if column in left else "right")
        for row in rows:
            table.add_row(*map(str, row))
        self.console.print(table)

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def finish(self, own_load: float = 1.0, hint: str = "") -> dict:
        """The load average note (a warning on a busy machine), then the JSON line, last on stdout.
        own_load: about how much of the load after the run is the benchmark's own (its busy cores);
        hint: what to try on a busy machine, added to the warning."""
        after = os.getloadavg()[0]
        half = 0.5 * self.cores
        busy = self.load_before > half or after - own_load > half
        line = (f"load average (1 min): {self.load_before:.2f} before, {after:.2f} after, on {self.cores} cores")
        if busy:
            self.console.print(f"[yellow]warning:[/] {line}: other work shares these CPUs (above {half:g}), "
                               f"so the figures run low and vary{'; ' + hint if hint else ''}", highlight=False)
        else:
            self.note(line)
        report = {"benchmark": self.name, **self.figures, "spread": self.spreads, "repeats": self.repeats,
                  "warmup": self.warmup, "load_avg": [round(self.load_before, 2), round(after, 2)],
                  "cpu_cores": self.cores, "busy": busy}
        self.console.file.flush()
        print(json.dumps(report), flush=True)
        return report
