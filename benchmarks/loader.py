"""Loader throughput: clips/s of four loaders over the same clips, and the loader against training.

Builds a corpus of real synthesized audio (espeak-ng sentences, sox plucked chords, 16 kHz mono wav)
in a temporary folder, packs it into shards, and writes a TSV manifest and an FFCV .beton of it.
Every loader then yields the same Batch (fine-tuning mode: every clip cropped from its start or
padded to --clip-seconds, mae_ast fbank, --workers workers, one torch thread per worker):

  (a) map-style: the seed's design, a TSV manifest, each wav read and featurized per item, a DataLoader
  (b) stream:    maeast's webdataset loader over the shards
  (c) dali:      DALI's webdataset reader and decoder (CPU mode without a GPU), our fbank
  (d) ffcv:      precomputed fbanks from the .beton (its writing time is reported apart)

Each loader runs one untimed warm-up epoch, then --epochs timed epochs (worker start-up included).
Then the streaming loader in pretraining mode feeds the small and base MAE-AST presets for a few
training steps: the time spent waiting for data is reported as a share of the step time.
Prints a table, then one JSON line with the figures.

    python benchmarks/loader.py [--clips 160] [--clip-seconds 4] [--epochs 3] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from maeast.loaders import LoaderConfig, StreamingLoader
from maeast.loaders.mapstyle import MapStyleLoader, write_manifest
from maeast.shards.build import build_shards

WORDS = ("the quick brown fox jumps over lazy dogs while seven wizards pack boxes of liquor jugs "
         "and five zebras vex a daft quiz king").split()
NOTES = ["C3", "D3", "E3", "F3", "G3", "A3", "B3", "C4", "D4", "E4"]
VOICES = ["en", "en-us+f3", "en-gb+m3", "en+klatt", "en-us+f1", "en+m7"]


def make_corpus(root: Path, clips: int, seconds: float) -> list[Path]:
    """Speech of about `seconds` and plucked chords of exactly `seconds` +- 1 s, 16 kHz mono wav."""
    files = []
    for i in range(clips):
        folder = root / ("speech" if i % 2 else "music")
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / f"c{i:04d}.wav"
        if i % 2:
            text = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(int(seconds * 2.6)))
            raw = folder / f".raw{i}.wav"
            subprocess.run(["espeak-ng", "-v", VOICES[i % 6], "-s", "150", "-w", str(raw), text], check=True)
            subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(out)], check=True)
            raw.unlink()
        else:
            notes = [x for n in (NOTES[i % 10], NOTES[(i + 3) % 10]) for x in ("pluck", n)]
            length = seconds - 1 + (i % 5) / 2
            subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(out), "synth", f"{length}", *notes,
                            "fade", "0", f"{length}", "0.4"], check=True)
        files.append(out)
    return files


def clips_per_second(loader, epochs: int) -> tuple[float, int]:
    sum(len(b) for b in loader)  # warm-up: page cache, JIT, first worker start
    start, clips = time.perf_counter(), 0
    for _ in range(epochs):
        clips += sum(len(b) for b in loader)
    return clips / (time.perf_counter() - start), clips


def training(shards: Path, preset: str, steps: int, batch_size: int, workers: int) -> dict:
    """A few pretraining steps of `preset` fed by the streaming loader: step time and data wait."""
    from maeast.model import build_model

    torch.manual_seed(0)
    model = build_model(preset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = StreamingLoader(LoaderConfig(shards=[str(shards)], batch_size=batch_size, num_workers=workers,
                                          shuffle_buffer=64, epoch_batches=steps + 1, seed=1))
    wait = busy = 0.0
    clips = 0
    it = iter(loader)
    next(it)  # workers started, first batch ready: not timed
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        loss = model(batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        wait, busy, clips = wait + t1 - t0, busy + t2 - t1, clips + len(batch)
    return {"step_s": (wait + busy) / steps, "wait_share": wait / (wait + busy), "consumes_clips_per_s": clips / busy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=160)
    parser.add_argument("--clip-seconds", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="training steps per model preset (0: skip)")
    args = parser.parse_args()
    console = Console()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with console.status("synthesizing the corpus"):
            files = make_corpus(tmp / "corpus", args.clips, args.clip_seconds)
            mb = sum(f.stat().st_size for f in files) / 1e6
            build_shards("folder", tmp / "corpus", tmp / "shards", shard_size_mb=mb / 8 / 2.5, workers=2)
            manifest = write_manifest(tmp / "corpus", files, tmp / "train.tsv")
        common = dict(mode="finetune", clip_seconds=args.clip_seconds, random_crop=False, batch_size=args.batch_size,
                      num_workers=args.workers, threads_per_worker=1, shuffle_buffer=64, fbank="mae_ast")
        rows: list[tuple[str, float, str]] = []

        def measure(name: str, make, note: str = "") -> None:
            with console.status(f"timing {name}"):
                try:
                    rate, _ = clips_per_second(make(), args.epochs)
                except ImportError as e:
                    rows.append((name, float("nan"), f"not installed ({e.name})"))
                    return
            figures[f"{name.split()[0]}_clips_per_s"] = round(rate, 1)
            rows.append((name, rate, note))

        measure("(a) map-style", lambda: MapStyleLoader(manifest, LoaderConfig(shards=[str(tmp / "shards")], **common)),
                "TSV + per-file wav + per-item fbank")
        measure("(b) stream", lambda: StreamingLoader(LoaderConfig(shards=[str(tmp / "shards")], **common)),
                "webdataset shards, checksums verified")

        def dali():
            from maeast.loaders.dali import DaliLoader
            return DaliLoader(LoaderConfig(shards=[str(tmp / "shards")], **common))
        gpu = torch.cuda.is_available()
        measure("(c) dali", dali, f"DALI {'GPU' if gpu else 'CPU mode'}, fbank on {'GPU' if gpu else 'the main process'}")

        def ffcv():
            from maeast.loaders.ffcv import write_beton
            start = time.perf_counter()
            write_beton(tmp / "shards", "train", args.clip_seconds, tmp / "train.beton", "mae_ast", args.workers)
            figures["ffcv_write_s"] = round(time.perf_counter() - start, 2)
            return build_ffcv(LoaderConfig(shards=[str(tmp / "train.beton")], backend="ffcv", **common))
        measure("(d) ffcv", ffcv, "precomputed fbanks")
        if "ffcv_write_s" in figures:
            rows[-1] = (*rows[-1][:2], f"precomputed fbanks (writing took {figures['ffcv_write_s']:.1f} s)")

        with console.status("timing the streaming loader in pretraining mode"):
            pretrain = StreamingLoader(LoaderConfig(shards=[str(tmp / "shards")], batch_size=8, num_workers=args.workers,
                                                    shuffle_buffer=64))
            figures["stream_pretrain_clips_per_s"] = round(clips_per_second(pretrain, args.epochs)[0], 1)
        train_rows = {}
        for preset in ("small", "base") if args.steps else ():
            with console.status(f"training steps: {preset}"):
                try:
                    train_rows[preset] = training(tmp / "shards", preset, args.steps, 8, args.workers)
                except ImportError:
                    break
    base = rows[0][1]
    table = Table(title=f"loaders: {args.clips} clips of {args.clip_seconds:g} s, batch {args.batch_size}, "
                        f"{args.workers} workers x 1 thread, mae_ast fbank")
    for column in ("loader", "clips/s", "vs (a)", "notes"):
        table.add_column(column, justify="left" if column in ("loader", "notes") else "right")
    for name, rate, note in rows:
        table.add_row(name, f"{rate:.1f}", f"{rate / base:.2f}x", note)
    console.print(table)
    if train_rows:
        t = Table(title=f"pretraining on this machine: batch 8, streaming loader at "
                        f"{figures['stream_pretrain_clips_per_s']:.1f} clips/s alone")
        for column in ("model", "step s", "model consumes clips/s", "data wait share"):
            t.add_column(column, justify="left" if column == "model" else "right")
        for preset, r in train_rows.items():
            t.add_row(preset, f"{r['step_s']:.2f}", f"{r['consumes_clips_per_s']:.1f}", f"{100 * r['wait_share']:.1f}%")
            figures.update({f"{preset}_{k}": round(v, 4) for k, v in r.items()})
        console.print(t)
    else:
        console.print("training steps skipped (--steps 0 or maeast.model missing)")
    figures.update({"ratio_stream_vs_mapstyle": round(figures.get("(b)_clips_per_s", 0) / base, 3)})
    print(json.dumps({"benchmark": "loader", "clips": args.clips, "clip_seconds": args.clip_seconds,
                      "batch_size": args.batch_size, "workers": args.workers, "gpu": gpu, **figures}))


def build_ffcv(config):
    from maeast.loaders.ffcv import FFCVLoader
    return FFCVLoader(config)


if __name__ == "__main__":
    main()
