"""Shard building throughput: files/s and MB/s of input with 1 and 2 workers.

Builds a corpus of real synthesized audio (espeak-ng speech at 22.05 kHz, sox plucked-string chords
at 44.1 kHz stereo) in a temporary folder, then packs it with the folder recipe into a fresh folder
per run: --warmup untimed builds, then --repeats timed ones, 1 and 2 workers taking turns
(benchmarks/harness.py). The figures are the median run's, with min-max beside them. Prints a table,
then one JSON line with the figures.

    python benchmarks/shard_build.py [--clips 120] [--seconds 6] [--repeats 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness import Bench, add_arguments, spread

from maeast.shards.build import build_shards

WORDS = "the quick brown fox jumps over lazy dogs while seven wizards pack boxes of liquor jugs".split()
NOTES = ["C3", "D3", "E3", "F3", "G3", "A3", "B3", "C4"]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=120)
    parser.add_argument("--seconds", type=float, default=6.0)
    add_arguments(parser, repeats=3, warmup=1)
    args = parser.parse_args()
    bench = Bench("shard_build", args.repeats, args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        with bench.status("synthesizing the corpus"):
            make_corpus(root, args.clips, args.seconds)
        in_mb = sum(p.stat().st_size for p in root.rglob("*.wav")) / 1e6
        runs = itertools.count()

        def build(workers: int):
            out = Path(tmp) / f"out{next(runs)}"
            index = build_shards("folder", root, out, shard_size_mb=16, workers=workers)
            shutil.rmtree(out)
            return sum(s["hours"] for s in index["splits"].values())

        results = bench.measure({w: (lambda w=w: build(w)) for w in (1, 2)}, label="building shards")
    bench.update({"clips": args.clips, "input_mb": round(in_mb, 2)})
    rows = []
    for workers, r in results.items():
        hours = r.values[0]
        figures = {"seconds": r.seconds, "files_per_s": r.rate(args.clips), "input_mb_per_s": r.rate(in_mb),
                   "audio_hours_per_s": r.rate(hours)}
        for key, stats in figures.items():
            bench.record(f"workers{workers}_{key}", stats)
        rows.append([workers, spread(r.seconds, ".2f"), spread(figures["files_per_s"], ".1f"),
                     spread(figures["input_mb_per_s"], ".1f"), spread(figures["audio_hours_per_s"], ".3f"),
                     f"{results[1].seconds.median / r.seconds.median:.2f}x"])
    bench.table(f"shard build: {args.clips} clips, {in_mb:.1f} MB of wav input; median (min-max) of "
                f"{args.repeats} run(s)", ["workers", "seconds", "files/s", "input MB/s", "audio h/s", "speed-up"], rows)
    bench.finish(own_load=2.0)


if __name__ == "__main__":
    main()
