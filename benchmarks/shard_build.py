"""Shard building throughput: files/s and MB/s of input with 1 and 2 workers.

Builds a corpus of real synthesized audio (espeak-ng speech at 22.05 kHz, sox plucked-string chords
at 44.1 kHz stereo) in a temporary folder, then packs it with the folder recipe. Prints a table,
then one JSON line with the figures.

    python benchmarks/shard_build.py [--clips 120] [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

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
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        with console.status("synthesizing the corpus"):
            make_corpus(root, args.clips, args.seconds)
        in_mb = sum(p.stat().st_size for p in root.rglob("*.wav")) / 1e6
        rows = {}
        for workers in (1, 2):
            out = Path(tmp) / f"out{workers}"
            start = time.perf_counter()
            index = build_shards("folder", root, out, shard_size_mb=16, workers=workers)
            elapsed = time.perf_counter() - start
            hours = sum(s["hours"] for s in index["splits"].values())
            rows[workers] = {"seconds": elapsed, "files_per_s": args.clips / elapsed,
                             "input_mb_per_s": in_mb / elapsed, "audio_hours_per_s": hours / elapsed}
    table = Table(title=f"shard build: {args.clips} clips, {in_mb:.1f} MB of wav input")
    for column in ("workers", "seconds", "files/s", "input MB/s", "audio h/s", "speed-up"):
        table.add_column(column, justify="right")
    for workers, r in rows.items():
        table.add_row(str(workers), f"{r['seconds']:.2f}", f"{r['files_per_s']:.1f}", f"{r['input_mb_per_s']:.1f}",
                      f"{r['audio_hours_per_s']:.3f}", f"{rows[1]['seconds'] / r['seconds']:.2f}x")
    console.print(table)
    print(json.dumps({"benchmark": "shard_build", "clips": args.clips, "input_mb": round(in_mb, 2),
                      **{f"workers{w}_{k}": round(v, 3) for w, r in rows.items() for k, v in r.items()}}))


if __name__ == "__main__":
    main()
