"""Shard building throughput: clips/s per core, FLAC and wav, and the projected time to pack AudioSet-2M.

Builds a corpus of real synthesized audio (espeak-ng speech at 22.05 kHz, sox plucked-string chords
at 44.1 kHz stereo, --seconds long: AudioSet's clips are 10 s) in a temporary folder, then packs it with
the folder recipe into a fresh folder per run, resampled to 16 kHz mono, as FLAC (the default codec)
and as wav: --warmup untimed builds, then --repeats timed ones, the cases (1 and 2 workers x the two
codecs) taking turns (benchmarks/harness.py). The figures are the median run's, with min-max beside
them. A core's rate is clips per CPU second (this process and its workers, by getrusage) of the 2-worker
builds: wall-clock rates on these shared cores swing with other work, the CPU cost much less.

The projection: AudioSet-2M (--project-clips 2,000,000 clips, --project-hours 5,800 h) on --cores 32
cores, from a core's audio hours (and clips) per CPU second, assuming the build scales linearly with cores (its workers
share nothing but the output folder) and wav input: AudioSet's own files are compressed (AAC in m4a,
or Opus), whose decoding this corpus does not include. Prints a table, then one JSON line with the figures.

    python benchmarks/shard_build.py [--clips 120] [--seconds 10] [--repeats 3] [--warmup 1] [--cores 32]
"""

from __future__ import annotations

import argparse
import itertools
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness import Bench, add_arguments, spread

from maeast.shards.build import build_shards

WORDS = "the quick brown fox jumps over lazy dogs while seven wizards pack boxes of liquor jugs".split()
NOTES = ["C3", "D3", "E3", "F3", "G3", "A3", "B3", "C4"]
CODECS = ("flac", "wav")


def make_corpus(root: Path, clips: int, seconds: float) -> None:
    for i in range(clips):
        folder = root / ("speech" if i % 2 else "music")
        folder.mkdir(parents=True, exist_ok=True)
        if i % 2:
            text = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(int(seconds * 2.5)))
            subprocess.run(["espeak-ng", "-s", "140", "-w", str(folder / f"c{i:04d}.wav"), text], check=True)
        else:
            notes = [NOTES[i % 8], NOTES[(i + 2) % 8], NOTES[(i + 4) % 8]]
            synth = [x for n in notes for x in ("pluck", n)]
            subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", str(folder / f"c{i:04d}.wav"), "synth",
                            str(seconds), *synth], check=True)


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished child processes (the build's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=120)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cores", type=int, default=32, help="cores of the projected AudioSet-2M build")
    parser.add_argument("--project-clips", type=int, default=2_000_000)
    parser.add_argument("--project-hours", type=float, default=5800.0)
    add_arguments(parser, repeats=3, warmup=1)
    args = parser.parse_args()
    bench = Bench("shard_build", args.repeats, args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        with bench.status("synthesizing the corpus"):
            make_corpus(root, args.clips, args.seconds)
        in_mb = sum(p.stat().st_size for p in root.rglob("*.wav")) / 1e6
        runs = itertools.count()

        def build(workers: int, codec: str) -> tuple[float, float]:
            """One build: its audio hours, and the CPU seconds it took (this process and its workers)."""
            out = Path(tmp) / f"out{next(runs)}"
            before = cpu_seconds()
            index = build_shards("folder", root, out, shard_size_mb=16, workers=workers, codec=codec)
            cpu = cpu_seconds() - before
            shutil.rmtree(out)
            return sum(s["hours"] for s in index["splits"].values()), cpu

        cases = {(w, c): (lambda w=w, c=c: build(w, c)) for c in CODECS for w in (1, 2)}
        results = bench.measure(cases, label="building shards")
    bench.update({"clips": args.clips, "clip_seconds": args.seconds, "input_mb": round(in_mb, 2), "cores": args.cores})
    rows = []
    for (workers, codec), r in results.items():
        hours = r.values[0][0]
        figures = {"seconds": r.seconds, "clips_per_s": r.rate(args.clips), "input_mb_per_s": r.rate(in_mb),
                   "audio_hours_per_s": r.rate(hours), "clips_per_cpu_s": r.stats(lambda v: args.clips / v[1])}
        for key, stats in figures.items():
            bench.record(f"{codec}.workers{workers}_{key}", stats)
        rows.append([codec, workers, spread(r.seconds, ".2f"), spread(figures["clips_per_s"], ".1f"),
                     spread(figures["input_mb_per_s"], ".1f"), spread(figures["audio_hours_per_s"], ".4f"),
                     f"{results[(1, codec)].seconds.median / r.seconds.median:.2f}x",
                     spread(figures["clips_per_cpu_s"], ".1f")])
    bench.table(f"shard build: {args.clips} clips of {args.seconds:g} s, {in_mb:.1f} MB of wav input; median (min-max) "
                f"of {args.repeats} run(s)", ["codec", "workers", "seconds", "clips/s", "input MB/s", "audio h/s",
                                              "speed-up", "clips per CPU s"], rows)
    projection = []
    for codec in CODECS:  # a core's rate: clips per CPU second of the 2-worker builds (other work moves it less)
        r = results[(2, codec)]
        per_core_clips = r.stats(lambda v: args.clips / v[1]).median
        per_core_hours = r.stats(lambda v: v[0] / v[1]).median
        wall_h = args.project_hours / (per_core_hours * args.cores) / 3600
        bench.update({f"{codec}.clips_per_s_per_core": round(per_core_clips, 2),
                      f"{codec}.audio_hours_per_s_per_core": round(per_core_hours, 5),
                      f"{codec}.audioset_wall_hours": round(wall_h, 2),
                      f"{codec}.audioset_wall_hours_by_clips": round(
                          args.project_clips / (per_core_clips * args.cores) / 3600, 2)})
        projection.append([codec, f"{per_core_clips:.1f}", f"{per_core_hours * 3600:.0f}", f"{wall_h:.1f}",
                           f"{args.project_clips / (per_core_clips * args.cores) / 3600:.1f}"])
    bench.table(f"projected: AudioSet-2M ({args.project_clips:,} clips, {args.project_hours:,.0f} h) on {args.cores} "
                f"cores, linear in cores, wav input (no AAC/Opus decoding)",
                ["codec", "clips per CPU s", "audio s per CPU s", "wall h (by hours)", "wall h (by clips)"],
                projection)
    bench.finish(own_load=2.0)


if __name__ == "__main__":
    main()
