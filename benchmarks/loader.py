"""Loader throughput: clips/s of four loaders over the same clips, and the loader against training.

Builds a corpus of real synthesized audio (espeak-ng sentences, sox plucked chords, 16 kHz mono wav)
in a temporary folder, packs it into shards, and writes a TSV manifest and an FFCV .beton of it.
Every loader then yields the same Batch (fine-tuning mode: every clip cropped from its start or
padded to --clip-seconds, mae_ast fbank, --workers workers, one torch thread per worker):

  (a) map-style: the seed's design, a TSV manifest, each wav read and featurized per item, a DataLoader
  (b) stream:    maeast's webdataset loader over the shards (FLAC, the default codec)
  (b) stream wav: the same over shards built with --codec wav (16-bit PCM: no decoding)
  (c) dali:      DALI's webdataset reader and decoder (CPU mode without a GPU), our fbank
  (d) ffcv:      precomputed fbanks from the .beton (its writing time is reported apart)

Each loader is warmed up (two batches), then runs --epochs timed epochs (worker start-up included),
the loaders taking turns epoch by epoch (benchmarks/harness.py); the table shows the median epoch's
clips/s, with min-max beside it.
Then the storage rows (benchmarks/loader_remote.py): the FLAC shards read from local disk, loopback S3
(moto) and loopback HTTP (http.server) by (e) maeast's stream and, on the same objects, (f) webdataset's
own WebDataset pipeline with the same decode and fbank, epochs in turns; targets: remote >= 0.9x local,
(e) >= 1.0x (f) at each place. Beside clips/s: the steady clips/s after an epoch's first batch, the
seconds to that first batch (a fixed cost that short epochs feel, long ones do not: its own column), and
the CPU ms per clip of each loader's worker processes and receiving thread (on a shared machine the
clips/s of one epoch swing with other work, the CPU cost much less; ratio_cpu_* compare them). Then a
remote shard's first whole sample with the first ranged read of storage.FIRST_CHUNK against a whole
storage.CHUNK, as every read went before.
Then (a) and (b) in pretraining mode (crop to the batch's shortest clip, at most 10 s, clips under
2 s skipped; the "vs (a)" of those rows is against (a) in pretraining mode), and the streaming loader
feeding the small and base MAE-AST presets for a few training steps (the model gets the cores the
workers leave, at least one thread; one untimed step first): the median step time, and the time
spent waiting for data as a share of the step time. The machine's load average before and after
goes into the JSON: on a shared machine it moves the figures more than anything else.
Prints a table, then one JSON line with the figures.

    python benchmarks/loader.py [--clips 160] [--copies 4] [--clip-seconds 4] [--epochs 3] [--steps 4]
                                [--only storage]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from harness import Bench, Stats, spread
from loader_remote import first_sample_cases, loaders as storage_loaders, served

from maeast.errors import MaeastError
from maeast.loaders import LoaderConfig, StreamingLoader
from maeast.loaders.mapstyle import MapStyleLoader, write_manifest
from maeast.shards.build import build_shards

WORDS = ("the quick brown fox jumps over lazy dogs while seven wizards pack boxes of liquor jugs "
         "and five zebras vex a daft quiz king").split()
NOTES = ["C3", "D3", "E3", "F3", "G3", "A3", "B3", "C4", "D4", "E4"]
VOICES = ["en", "en-us+f3", "en-gb+m3", "en+klatt", "en-us+f1", "en+m7"]


def make_corpus(root: Path, clips: int, seconds: float, copies: int) -> list[Path]:
    """Speech of about `seconds` and plucked chords of `seconds` +- 1 s, 16 kHz mono wav; each file
    is then hard-linked `copies` - 1 more times, so that epochs are long enough to time."""
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
    for k in range(1, copies):
        for f in files[:clips]:
            files.append(f.with_name(f"{f.stem}_{k}.wav"))
            os.link(f, files[-1])
    return files


def warm_up(loader) -> None:
    """Two batches (page cache, JIT, first worker start), then back to the start of an epoch."""
    it = iter(loader)
    next(it), next(it)
    del it
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(loader.epoch + 1)


def epoch(loader) -> int:
    """One epoch; the clips it yielded."""
    return sum(len(b) for b in loader)


def training(bench: Bench, shards: Path, preset: str, steps: int, batch_size: int, workers: int) -> dict:
    """A few pretraining steps of `preset` fed by the streaming loader, after an untimed one: step
    time (the median), the share of it spent waiting for data, the clips/s the model consumes."""
    from maeast.model import build_model

    torch.manual_seed(0)
    model = build_model(preset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = StreamingLoader(LoaderConfig(shards=[str(shards)], batch_size=batch_size, num_workers=workers,
                                          shuffle_buffer=64, epoch_batches=steps + 1, seed=1))
    it = iter(loader)

    def step() -> tuple[float, int]:
        """One step; the seconds it waited for the batch, and the batch's clips."""
        start = time.perf_counter()
        batch = next(it)
        wait = time.perf_counter() - start
        loss = model(batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return wait, len(batch)

    r = bench.measure({preset: step}, repeats=steps, warmup=1, label=f"training steps: {preset}")[preset]
    wait, clips = (sum(v[i] for v in r.values) for i in (0, 1))
    return {"step_s": r.seconds, "wait_share": wait / sum(r.times), "consumes_clips_per_s": clips / (sum(r.times) - wait)}


def epoch_cpu(loader) -> tuple[int, float, float, float]:
    """One epoch; the clips it yielded, the CPU seconds its worker processes (and theirs, e.g. curl)
    spent, counted when the epoch's workers exit, and this thread's, which receives the batches (a cost
    that other work on the machine moves less than clips/s; the loopback servers' threads are not in it),
    the seconds to its first batch (worker start, first request, shuffle buffer), and the clips/s after
    that first batch (the steady rate, which start-up does not touch)."""
    before, start, main = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter(), time.thread_time()
    first, clips, first_clips = None, 0, 0
    for batch in loader:
        if first is None:
            first, first_clips = time.perf_counter() - start, len(batch)
        clips += len(batch)
    end = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    steady = (clips - first_clips) / (end - first) if end > first else float("nan")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime + time.thread_time() - main
    return clips, cpu, first, steady


def storage(bench: Bench, shards: Path, common: dict) -> None:
    """(e) maeast's stream and (f) webdataset's pipeline over the same shards on local disk, loopback S3
    and loopback HTTP, epochs in turns: a table, the clips/s and the ratios against the targets, and
    the workers' CPU ms per clip."""
    with served(shards) as places:
        made, notes = storage_loaders(places, common)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the main process only receives batches
        results = bench.measure({name: (lambda loader=loader: epoch_cpu(loader)) for name, loader in made.items()},
                                warm_up={name: (lambda loader=loader: warm_up(loader)) for name, loader in made.items()},
                                label=f"storage: {len(made)} loaders, epochs in turns")
        torch.set_num_threads(threads)
        firsts = bench.measure(first_sample_cases(places), repeats=2 * bench.repeats, label="first sample of a shard")
    rates = {name: Stats.of(clips / t for (clips, *_), t in zip(r.values, r.times)) for name, r in results.items()}
    cpu = {name: Stats.of(1000 * s / clips for clips, s, *_ in r.values) for name, r in results.items()}
    first = {name: Stats.of(v[2] for v in r.values) for name, r in results.items()}
    steady = {name: Stats.of(v[3] for v in r.values) for name, r in results.items()}
    rows = []
    for name, rate in rates.items():
        who, place = name.split(" ", 1)[1].split(", ")
        bench.record(f"{place}_{who}_clips_per_s", rate, digits=1)
        bench.record(f"{place}_{who}_steady_clips_per_s", steady[name], digits=1)
        bench.record(f"{place}_{who}_cpu_ms_per_clip", cpu[name], digits=2)
        bench.record(f"{place}_{who}_first_batch_s", first[name], digits=3)
        ratios = [f"{table[name].median / table[name.replace(place, 'local')].median:.2f}x / "
                  f"{table[name].median / table[name.replace('(e) stream', '(f) webdataset')].median:.2f}x"
                  if who == "stream" else "" for table in (rates, steady)]
        rows.append((name, spread(rate, ".1f"), spread(steady[name], ".1f"), *ratios, spread(cpu[name], ".2f"),
                     spread(first[name], ".2f"), notes[name]))
    figures = {}
    for key, table in (("", rates), ("steady_", steady)):
        for place in ("s3", "http"):
            figures[f"ratio_{key}{place}_vs_local"] = round(
                table[f"(e) stream, {place}"].median / table["(e) stream, local"].median, 3)
        for place in ("local", "s3", "http"):
            figures[f"ratio_{key}stream_vs_webdataset_{place}"] = round(
                table[f"(e) stream, {place}"].median / table[f"(f) webdataset, {place}"].median, 3)
    for place in ("local", "s3", "http"):  # clips per CPU second, stream over webdataset: > 1, the stream is cheaper
        figures[f"ratio_cpu_stream_vs_webdataset_{place}"] = round(
            cpu[f"(f) webdataset, {place}"].median / cpu[f"(e) stream, {place}"].median, 3)
    bench.update(figures)
    for name, r in firsts.items():
        bench.record(f"first_sample_ms.{name.split(' (')[0].replace(', first read ', '_')}",
                     Stats.of(1000 * t for t in r.times), digits=1)
    bench.table(f"a remote shard's first whole sample, median (min-max) of {2 * bench.repeats}",
                ["place, first ranged read", "ms"], [(name, spread(Stats.of(1000 * t for t in r.times), ".1f"))
                                                     for name, r in firsts.items()])
    bench.table("storage: the same FLAC shards on local disk, loopback S3 (moto) and loopback HTTP, median (min-max) "
                "epoch; steady: clips/s after the first batch; CPU: workers' and the receiving thread's; targets: "
                "remote >= 0.9x local, maeast >= 1.0x webdataset",
                ["loader", "clips/s", "steady clips/s", "vs local / webdataset", "steady vs local / webdataset",
                 "CPU ms/clip", "first batch s", "notes"], rows, left=("loader", "notes"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=160, help="distinct synthesized clips")
    parser.add_argument("--copies", type=int, default=4, help="times each clip appears in the corpus")
    parser.add_argument("--clip-seconds", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="training steps per model preset (0: skip)")
    parser.add_argument("--only", choices=["storage"], help="only the storage rows (local disk, S3, HTTP)")
    args = parser.parse_args()
    bench = Bench("loader", repeats=args.epochs, warmup=1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with bench.status("synthesizing the corpus"):
            files = make_corpus(tmp / "corpus", args.clips, args.clip_seconds, args.copies)
            mb = sum(f.stat().st_size for f in files) / 1e6
            build_shards("folder", tmp / "corpus", tmp / "shards", shard_size_mb=mb / 8 / 2.5, workers=2)
            build_shards("folder", tmp / "corpus", tmp / "shards_wav", shard_size_mb=mb / 8, workers=2, codec="wav")
            manifest = write_manifest(tmp / "corpus", files, tmp / "train.tsv")
        gpu = torch.cuda.is_available()
        bench.update({"clips": len(files), "distinct_clips": args.clips, "clip_seconds": args.clip_seconds,
                      "batch_size": args.batch_size, "workers": args.workers, "gpu": gpu})
        for name in ("shards", "shards_wav"):
            bench.record(f"{name}_mb", sum(p.stat().st_size for p in (tmp / name).glob("*.tar")) / 1e6, digits=1)
        common = dict(mode="finetune", clip_seconds=args.clip_seconds, random_crop=False, batch_size=args.batch_size,
                      num_workers=args.workers, threads_per_worker=1, shuffle_buffer=64, fbank="mae_ast")
        shards, wav_shards = [str(tmp / "shards")], [str(tmp / "shards_wav")]
        storage(bench, tmp / "shards", common)
        if args.only == "storage":
            bench.finish(own_load=args.workers + 1)
            return
        loaders = {"(a) map-style": MapStyleLoader(manifest, LoaderConfig(shards=shards, **common)),
                   "(b) stream": StreamingLoader(LoaderConfig(shards=shards, **common)),
                   "(b) stream wav": StreamingLoader(LoaderConfig(shards=wav_shards, **common))}
        notes = {"(a) map-style": "TSV + a wav file per clip + per-item fbank",
                 "(b) stream": "webdataset shards (FLAC), checksums verified, batched fbank",
                 "(b) stream wav": "the same, shards built with --codec wav"}
        try:
            from maeast.loaders.dali import DaliLoader
            loaders["(c) dali"] = DaliLoader(LoaderConfig(shards=shards, **common))
            notes["(c) dali"] = (f"DALI {'GPU' if gpu else 'CPU mode'}: {args.workers} DALI threads, fbank on "
                                 f"{'the GPU' if gpu else 'the main thread'}")
        except MaeastError as e:
            notes["(c) dali"] = str(e)
        try:
            from maeast.loaders.ffcv import FFCVLoader, write_beton
            write = bench.measure({"beton": lambda: write_beton(tmp / "shards", "train", args.clip_seconds,
                                                                tmp / "train.beton", "mae_ast", args.workers)},
                                  repeats=1, warmup=0, label="writing the .beton")["beton"]
            bench.record("ffcv_write_s", write.seconds, digits=2)
            loaders["(d) ffcv"] = FFCVLoader(LoaderConfig(shards=[str(tmp / "train.beton")], backend="ffcv", **common))
            notes["(d) ffcv"] = f"precomputed fbanks (writing them took {write.seconds.median:.1f} s)"
        except MaeastError as e:
            notes["(d) ffcv"] = str(e)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the main process's share: DALI's fbank runs there; the others only receive
        results = bench.measure({name: (lambda loader=loader: epoch(loader)) for name, loader in loaders.items()},
                                warm_up={name: (lambda loader=loader: warm_up(loader)) for name, loader in loaders.items()},
                                label=f"{len(loaders)} loaders, epochs in turns")
        rates = {name: r.rate() for name, r in results.items()}
        torch.set_num_threads(threads)
        rows = [(name, rates.get(name), notes[name]) for name in notes]
        for name, rate, _ in rows:
            key = f"{''.join(name.split()[1:]).replace('-', '')}_clips_per_s"
            bench.record(key, rate if rate is not None else float("nan"), digits=1)

        pretraining = dict(mode="pretrain", batch_size=args.batch_size, num_workers=args.workers, threads_per_worker=1,
                           shuffle_buffer=64, max_seconds=10.0, min_seconds=2.0)
        pre = {"(a) map-style, pretraining": MapStyleLoader(manifest, LoaderConfig(shards=shards, **pretraining)),
               "(b) stream, pretraining": StreamingLoader(LoaderConfig(shards=shards, **pretraining)),
               "(b) stream wav, pretraining": StreamingLoader(LoaderConfig(shards=wav_shards, **pretraining))}
        torch.set_num_threads(1)
        pre_results = bench.measure({name: (lambda loader=loader: epoch(loader)) for name, loader in pre.items()},
                                    warm_up={name: (lambda loader=loader: warm_up(loader)) for name, loader in pre.items()},
                                    label="(a) and (b) in pretraining mode")
        pre_rates = {name: r.rate() for name, r in pre_results.items()}
        torch.set_num_threads(threads)
        rows.append(("(a) map-style, pretraining", pre_rates["(a) map-style, pretraining"],
                     "whole-clip fbank, then crop to the batch's shortest clip"))
        rows.append(("(b) stream, pretraining", pre_rates["(b) stream, pretraining"],
                     "length buckets; decodes and featurizes only the kept window"))
        rows.append(("(b) stream wav, pretraining", pre_rates["(b) stream wav, pretraining"],
                     "the same, shards built with --codec wav"))
        bench.record("mapstyle_pretrain_clips_per_s", pre_rates["(a) map-style, pretraining"], digits=1)
        bench.record("stream_pretrain_clips_per_s", pre_rates["(b) stream, pretraining"], digits=1)
        bench.record("streamwav_pretrain_clips_per_s", pre_rates["(b) stream wav, pretraining"], digits=1)
        train_rows = {}
        cores = len(os.sched_getaffinity(0))
        torch.set_num_threads(max(1, cores - args.workers))  # the cores the workers leave to the model
        for preset, steps in (("small", args.steps), ("base", max(1, args.steps // 2))) if args.steps else ():
            try:
                train_rows[preset] = training(bench, tmp / "shards", preset, steps, 8, args.workers)
            except ImportError:
                break
        torch.set_num_threads(threads)
    base, base_pre = rows[0][1].median, pre_rates["(a) map-style, pretraining"].median
    bench.table(f"loaders: {len(files)} clips ({args.clips} distinct) of about {args.clip_seconds:g} s, "
                f"batch {args.batch_size}, {args.workers} workers x 1 thread, mae_ast fbank; median (min-max) "
                f"of {args.epochs} epochs", ["loader", "clips/s", "vs (a)", "notes"],
                [(name, spread(rate, ".1f"), f"{rate.median / (base_pre if 'pretraining' in name else base):.2f}x", note)
                 if rate is not None else (name, "nan", "nanx", note) for name, rate, note in rows],
                left=("loader", "notes"))
    if train_rows:
        for preset, r in train_rows.items():
            for k, v in r.items():
                bench.record(f"{preset}_{k}", v, digits=4)
        bench.table(f"pretraining on this machine: batch 8 from the streaming loader ({args.workers} workers), "
                    f"which alone gives {bench.figures['stream_pretrain_clips_per_s']:.1f} clips/s; the model gets "
                    f"{max(1, len(os.sched_getaffinity(0)) - args.workers)} torch thread(s)",
                    ["model", "step s", "model consumes clips/s", "data wait share"],
                    [(preset, spread(r["step_s"], ".2f"), f"{r['consumes_clips_per_s']:.1f}",
                      f"{100 * r['wait_share']:.1f}%") for preset, r in train_rows.items()])
    else:
        bench.note("training steps skipped (--steps 0 or maeast.model missing)")
    f = bench.figures
    bench.update({"ratio_stream_vs_mapstyle": round(f["stream_clips_per_s"] / base, 3),
                  "ratio_stream_vs_mapstyle_pretrain": round(f["stream_pretrain_clips_per_s"] / base_pre, 3),
                  "ratio_streamwav_vs_mapstyle": round(f["streamwav_clips_per_s"] / base, 3),
                  "ratio_streamwav_vs_mapstyle_pretrain": round(f["streamwav_pretrain_clips_per_s"] / base_pre, 3)})
    bench.finish(own_load=args.workers + 1)


if __name__ == "__main__":
    main()
