"""`build_demo`: plan the three demo corpora from the seed, render them in a process pool.

All random choices are drawn in this process, in a fixed order, from one `random.Random` per
corpus; the workers only run the synthesizers on fully specified tasks, so the same seed gives
byte-identical files whatever the number of workers or the order in which tasks finish.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from maeast.demo import events, keywords, recordings, unlabelled
from maeast.demo.noise import make_noise
from maeast.demo.synth import check_tools
from maeast.errors import MaeastError

SIZES = ("tiny", "small", "full")
CORPORA = ("speech_commands", "esc50", "librispeech")
MARKER = "maeast-demo.json"
EVENT_BATCH = 30  # clips per fluidsynth run (each run loads the 140 MB soundfont)


def corpus_rng(corpus: str, seed: int) -> random.Random:
    """The one random stream that plans `corpus` for `seed` (independent of the other corpora)."""
    return random.Random(f"{corpus}/{seed}")


def _timed(fn: Callable, task) -> tuple[float, list[tuple[str, float]]]:
    start = time.perf_counter()
    result = fn(task)
    return time.perf_counter() - start, result


class _Runner:
    """Runs (corpus, fn, task) jobs on a pool of `workers` processes (inline for 1 worker),
    keeping results in submission order and advancing one progress bar per corpus."""

    def __init__(self, workers: int, progress: Progress, bars: dict[str, int]):
        self.pool = None
        if workers > 1:
            ctx = multiprocessing.get_context("forkserver")
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        self.progress, self.bars, self.start = progress, bars, time.perf_counter()
        self.results: list[tuple[str, object, list[tuple[str, float]]]] = []
        self.stats = {c: {"files": 0, "audio_seconds": 0.0, "work_seconds": 0.0, "seconds": 0.0}
                      for c in bars}

    def run(self, jobs: list[tuple[str, Callable, object]]) -> None:
        if self.pool is None:
            for corpus, fn, task in jobs:
                self._done(corpus, task, _timed(fn, task))
            return
        futures: list[Future] = [self.pool.submit(_timed, fn, task) for _, fn, task in jobs]
        for (corpus, _, task), fut in zip(jobs, futures):
            self._done(corpus, task, fut.result())

    def _done(self, corpus: str, task, timed: tuple[float, list[tuple[str, float]]]) -> None:
        took, files = timed
        self.results.append((corpus, task, files))
        s = self.stats[corpus]
        s["files"] += len(files)
        s["audio_seconds"] += sum(sec for _, sec in files)
        s["work_seconds"] += took
        s["seconds"] = time.perf_counter() - self.start
        if _planned_files(task) == 0:  # recordings: how many utterances they make is known once they are read
            bar = next(t for t in self.progress.tasks if t.id == self.bars[corpus])
            self.progress.update(bar.id, total=bar.total + len(files))
        self.progress.advance(self.bars[corpus], len(files))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _prepare(out: Path, corpora: tuple[str, ...]) -> None:
    """Make `out`; replace earlier demo corpora there (also half-built ones: the marker file is
    written before any corpus), refuse to touch anything else."""
    if out.exists() and not out.is_dir():
        raise MaeastError(f"--out {out} is a file: pass a directory for the demo corpora")
    for name in corpora:
        if (out / name).exists():
            if not (out / MARKER).is_file():
                raise MaeastError(f"{out / name} exists and was not made by `maeast data demo`: "
                                  f"pass a new or empty --out directory")
            shutil.rmtree(out / name)
    out.mkdir(parents=True, exist_ok=True)


def build_demo(out: Path, size: str = "small", seed: int = 0, workers: int = 2,
               progress: bool = True, corpora: tuple[str, ...] = CORPORA) -> dict:
    """Write the demo corpora under `out` and return a summary.

    out/speech_commands (keywords), out/esc50 (sound events), out/librispeech (unlabelled).
    Summary: {"size", "seed", "workers", "seconds", "corpora": {name: {"path", "files",
    "hours", "seconds" (wall time until that corpus was done), "work_seconds"}}}.
    """
    _check_arguments(size, seed, workers, corpora)
    check_tools()
    out = Path(out)
    _prepare(out, tuple(corpora))
    (out / MARKER).write_text(json.dumps({"size": size, "seed": seed, "status": "building"}) + "\n")
    start = time.perf_counter()
    plan = _plan(out, size, seed, corpora)
    runner = _render(plan, corpora, workers, progress)
    _write_metadata(out, plan, runner, corpora)
    summary = _summary(out, plan, runner, size, seed, workers, time.perf_counter() - start)
    (out / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _check_arguments(size: str, seed: int, workers: int, corpora: tuple[str, ...]) -> None:
    if size not in SIZES:
        raise MaeastError(f"unknown demo size {size!r}: choose one of {', '.join(SIZES)}")
    if not isinstance(seed, int) or seed < 0:
        raise MaeastError(f"demo seed must be a non-negative integer, got {seed!r}")
    if workers < 1:
        raise MaeastError(f"workers must be at least 1, got {workers}")
    unknown = sorted(set(corpora) - set(CORPORA))
    if unknown or not corpora:
        raise MaeastError(f"unknown demo corpora {unknown}: choose among {', '.join(CORPORA)}")


@dataclass
class _Plan:
    """Every task of the chosen corpora, drawn from the seed, and what their metadata files need after."""

    noise_jobs: list = field(default_factory=list)  # (corpus, fn, task): the keyword corpus' noise, rendered first
    jobs: list = field(default_factory=list)  # (corpus, fn, task): the rest, longer tasks first
    speakers: list = field(default_factory=list)  # keywords.SpeakerTask
    clips: list = field(default_factory=list)  # the esc50 clips (events.plan)
    chapters: list = field(default_factory=list)  # unlabelled.ChapterTask
    recorded: list = field(default_factory=list)  # recordings.RecordingTask
    found: list = field(default_factory=list)  # installed recording sources
    missing: list = field(default_factory=list)  # recording sources not installed


def _plan(out: Path, size: str, seed: int, corpora: tuple[str, ...]) -> _Plan:
    """Draw every corpus' tasks (one random stream per corpus) and make their folders."""
    plan = _Plan()
    if "speech_commands" in corpora:
        kw_root = out / "speech_commands"
        (kw_root / keywords.NOISE_DIR).mkdir(parents=True)
        noises, plan.speakers = keywords.plan(kw_root, size, corpus_rng("speech_commands", seed))
        plan.noise_jobs = [("speech_commands", make_noise, n) for n in noises]
        plan.jobs += [("speech_commands", keywords.speak, t) for t in plan.speakers]
    if "esc50" in corpora:  # longer tasks go first, so that the pool ends evenly
        esc_root = out / "esc50"
        (esc_root / "audio").mkdir(parents=True)
        plan.clips = events.plan(esc_root, size, corpus_rng("esc50", seed))
        batches = [events.RenderTask(str(esc_root / "audio"), tuple(plan.clips[i:i + EVENT_BATCH]))
                   for i in range(0, len(plan.clips), EVENT_BATCH)]
        plan.jobs = [("esc50", events.render, b) for b in batches] + plan.jobs
    if "librispeech" in corpora:
        ls_root = out / "librispeech"
        plan.chapters = unlabelled.plan(ls_root, size, corpus_rng("librispeech", seed))
        plan.jobs = [("librispeech", unlabelled.perform, t) for t in plan.chapters] + plan.jobs
        plan.found, plan.missing = recordings.installed()
        plan.recorded = recordings.plan(ls_root, size, corpus_rng("recordings", seed), plan.found)
        plan.jobs = [("librispeech", recordings.perform, t) for t in plan.recorded] + plan.jobs
    return plan


def _render(plan: _Plan, corpora: tuple[str, ...], workers: int, progress: bool) -> _Runner:
    """Run every task of the plan, noise first (keyword clips mix in these recordings), with a bar per corpus."""
    totals = {c: sum(_planned_files(t) for c2, _, t in plan.noise_jobs + plan.jobs if c2 == c)
              for c in corpora}
    with Progress(TextColumn("[bold]{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=not progress) as bar:
        runner = _Runner(workers, bar, {c: bar.add_task(c, total=totals[c]) for c in corpora})
        try:
            runner.run(plan.noise_jobs)
            runner.run(plan.jobs)
        finally:
            runner.close()
    return runner


def _write_metadata(out: Path, plan: _Plan, runner: _Runner, corpora: tuple[str, ...]) -> None:
    """Each corpus' lists and metadata files, as the real corpus has them."""
    if "speech_commands" in corpora:
        keywords.write_lists(out / "speech_commands", plan.speakers)
    if "esc50" in corpora:
        events.write_meta(out / "esc50", plan.clips)
    if "librispeech" in corpora:
        ls_root = out / "librispeech"
        per_speaker: dict[int, float] = {}
        for corpus, task, files in runner.results:
            if corpus == "librispeech":
                per_speaker[task.speaker] = per_speaker.get(task.speaker, 0.0) + sum(s for _, s in files)
        unlabelled.write_speakers(ls_root, plan.chapters, per_speaker)
        with open(ls_root / "SPEAKERS.TXT", "a") as f:
            f.writelines(recordings.speaker_rows(plan.recorded, per_speaker))


def _summary(out: Path, plan: _Plan, runner: _Runner, size: str, seed: int, workers: int, seconds: float) -> dict:
    summary = {"size": size, "seed": seed, "workers": workers,
               "seconds": round(seconds, 2),
               "corpora": {c: {"path": str(out / c), "files": s["files"],
                               "hours": round(s["audio_seconds"] / 3600, 4),
                               "seconds": round(s["seconds"], 2),
                               "work_seconds": round(s["work_seconds"], 2)}
                           for c, s in runner.stats.items()}}
    if "librispeech" in runner.stats:
        summary["recordings"] = {src.name: round(sum(sec for c, t, files in runner.results if c == "librispeech"
                                                     and getattr(t, "source", None) == src.name
                                                     for _, sec in files) / 3600, 4) for src in plan.found}
        summary["recordings_missing"] = {src.name: src.package for src in plan.missing}
    return summary


def _planned_files(task) -> int:
    """How many audio files a job writes (for the progress bars)."""
    if isinstance(task, keywords.SpeakerTask):
        return len(task.takes)
    if isinstance(task, events.RenderTask):
        return len(task.clips)
    if isinstance(task, unlabelled.ChapterTask):
        return len(task.seconds)
    if isinstance(task, recordings.RecordingTask):
        return 0  # utterances are known once its recordings are read
    return 1  # a background-noise recording
