"""The training backends side by side: the same shards, the same model step, the same workers or threads.

Pretraining (`maeast pretrain`, the tiny model, --steps steps of --batch clips cropped to at most
--max-seconds, bucket_batches 1 for every row since DALI does not bucket, no evaluation): clips/s and the
share of each step spent waiting for data (the training log's clips_per_s and data_wait, median over
the steps after the first), the seconds before the first step (loader start-up: DALI's survey of the
shards included) and the peak resident memory, on
  stream                 the webdataset loader, --workers worker processes computing the fbank
  stream + fbank_on device   the same workers yielding waveforms, the fbank in the step (the GPU route)
  dali                   DALI's reader, decoder and crop on --workers threads, the fbank in torch after it
Fine-tuning (`maeast finetune --task custom` on a labelled shard folder, full fine-tuning of the tiny model,
--epochs epochs): the median epoch's training time (the sum of its steps) and data wait, and the peak
resident memory, on
  stream                 as above
  ffcv                   the split's precomputed fbanks in a .beton (its one-off writing time is timed apart)

Each case runs in a process of its own (peak RSS: that process, plus the largest of its worker processes),
the cases taking turns run by run (benchmarks/harness.py). On CPU every backend computes the same fbank on
the same cores, so the figures say what each costs on this machine; the CUDA rows are `make gpu-check`'s.
The machine's load average before and after goes into the JSON: on a shared machine it moves the figures
more than anything else.

`route_shards` and `route_epoch` are the GPU rows' measurement: launch/gpu_check.py's dali row times one epoch
of DALI's pipeline and of the stream loader's fbank_on device route on the same shards, clips/s and host cores.

    python benchmarks/backends.py [--unlabelled shards/demo/unlabelled] [--labelled shards/demo/events]
                                  [--steps 12] [--epochs 2] [--workers 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import Bench, Stats, spread

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = {"stream": [], "stream + fbank_on device": ["data.fbank_on=device"], "dali": ["data.backend=dali"]}
FINETUNE = {"stream": [], "ffcv": ["--data.backend", "ffcv"]}


def child(kind: str, args: list[str]) -> dict:
    """In the case's own process: run it and report its figures and peak RSS (MiB) as one JSON line."""
    started = time.perf_counter()
    if kind == "pretrain":
        from maeast.pretrain import load_config, pretrain
        run_dir = Path(args[0])
        pretrain(load_config("pretrain_tiny", args[1:]))
    else:
        from maeast.finetune import finetune, load_finetune_config
        run_dir, shards, cache = Path(args[0]), args[1], args[2]
        finetune(load_finetune_config("finetune_tiny", task="custom", shards=shards, run_dir=str(run_dir),
                                      overrides=["--data.cache_dir", cache, *args[3:]]))
        run_dir = run_dir / "main"
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"wall_s": wall, "steps": [{k: r.get(k) for k in ("step", "clips_per_s", "data_wait", "step_s", "epoch")}
                                      for r in train], "rss_mib": own + workers}


def run_case(kind: str, args: list[str]) -> dict:
    code = f"import sys, json; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); from backends import child; " \
           f"print('@@' + json.dumps(child({kind!r}, {args!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in out.stdout.splitlines() if line.startswith("@@")]
    if out.returncode or not lines:
        raise SystemExit(f"{kind} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][2:])


def pretrain_cases(args, tmp: Path) -> dict:
    common = [f"data.shards=[{args.unlabelled}]", f"schedule.steps={args.steps}", "schedule.warmup_steps=1",
              f"data.batch_size={args.batch}", f"optim.global_batch={args.batch}", "eval.every=0",
              f"run.save_every_steps={args.steps}", "run.log_every=1", f"data.num_workers={args.workers}",
              "data.bucket_batches=1", f"data.max_seconds={args.max_seconds}", "data.min_seconds=2.0",
              f"data.shuffle_buffer={4 * args.batch}", "run.threads=1"]
    runs = iter(range(10**6))

    def case(extra):
        folder = tmp / f"p{next(runs)}"
        return run_case("pretrain", [str(folder), f"run.dir={folder}", *common, *extra])
    return {name: (lambda extra=extra: case(extra)) for name, extra in PRETRAIN.items()}


def finetune_cases(args, tmp: Path) -> dict:
    common = ["--schedule.epochs", str(args.epochs), "--data.valid_fraction", "0", "--data.test_fraction", "0.1",
              "--data.num_workers", str(args.workers), "--optim.global_batch", str(args.batch),
              "--data.clip_seconds", str(args.clip_seconds), "--run.save_every_epochs", "100", "--run.log_every", "1"]
    runs = iter(range(10**6))
    return {name: (lambda extra=extra: run_case("finetune", [str(tmp / f"f{next(runs)}"), str(args.labelled),
                                                              str(tmp / "cache"), *common, *extra]))
            for name, extra in FINETUNE.items()}


def pretrain_figures(out: dict) -> dict:
    steps = out["steps"][1:]  # the first step warms the model and the loader up
    first = out["wall_s"] - sum(s["step_s"] for s in out["steps"])
    return {"clips_per_s": statistics.median(s["clips_per_s"] for s in steps),
            "data_wait": statistics.median(s["data_wait"] for s in steps), "startup_s": first, "rss": out["rss_mib"]}


def finetune_figures(out: dict) -> dict:
    epochs: dict[int, list[dict]] = {}
    for i, s in enumerate(out["steps"]):
        epochs.setdefault(s.get("epoch", i), []).append(s)
    times = [sum(s["step_s"] for s in e) for e in epochs.values()]
    waits = [sum(s["step_s"] * s["data_wait"] for s in e) / sum(s["step_s"] for s in e) for e in epochs.values()]
    return {"epoch_s": statistics.median(times), "data_wait": statistics.median(waits), "rss": out["rss_mib"]}


def route_shards(folder: Path, clips: int, seconds: float) -> Path:
    """Shards of `clips` real clips (benchmarks/mfu.py's speech and music fixture, looped to `seconds` and shifted
    per clip), FLAC, with DALI's .idx files where DALI is installed: what the GPU routes read."""
    import soundfile as sf
    from mfu import real_waves

    from maeast.shards.build import build_shards
    (folder / "corpus" / "clips").mkdir(parents=True, exist_ok=True)
    for i, wave in enumerate(real_waves(clips, seconds)):
        sf.write(folder / "corpus" / "clips" / f"c{i:04d}.wav", wave.numpy(), 16000, subtype="PCM_16")
    build_shards("folder", folder / "corpus", folder / "shards", shard_size_mb=clips * seconds * 0.032 / 8)  # ~8+ shards
    return folder / "shards"


def route_epoch(shards: Path, route: str, batch: int, seconds: float, device: str, workers: int = 2) -> dict:
    """One pretraining epoch of a GPU route, its features made on `device`: "device" (the stream loader's workers
    yield waveforms, Batch.to computes the fbank there) or "dali" (DALI's pipeline on `workers` threads, our fbank
    after it). Returns clips/s and the host cores it kept busy (CPU seconds of this process and its workers over
    the wall time), after one untimed batch."""
    import torch

    from maeast.loaders import LoaderConfig, build_loader
    config = LoaderConfig(shards=[str(shards)], batch_size=batch, num_workers=workers, shuffle_buffer=4 * batch,
                          bucket_batches=1, max_seconds=seconds, min_seconds=1.0, backend="dali" if route == "dali"
                          else "stream", fbank_on="device" if route == "device" else "loader")
    loader = build_loader(config, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    it = iter(loader)
    next(it).to(device)  # warm: worker start-up, DALI's pipeline, cuFFT plans
    sync()
    own, kids = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    started, clips = time.perf_counter(), 0
    for b in it:
        clips += len(b.to(device).features)
    sync()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - own + (after.ru_utime + after.ru_stime) - (kids.ru_utime + kids.ru_stime)
    return {"clips": clips, "clips_per_s": clips / wall, "host_cores": cpu / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unlabelled", type=Path, default=ROOT / "shards/demo/unlabelled")
    parser.add_argument("--labelled", type=Path, default=ROOT / "shards/demo/events")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=4.0)
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (stream) or threads (dali)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    bench = Bench("backends", repeats=args.repeats, warmup=0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from maeast.features import get_config
        from maeast.finetune.data import open_corpus
        from maeast.finetune.tasks import get_task
        from maeast.loaders.ffcv import ensure_beton
        corpus = open_corpus(get_task("custom"), args.labelled)
        started = time.perf_counter()
        ensure_beton(args.labelled, corpus.train_split, args.clip_seconds, get_config("mae_ast"),
                     tmp / "cache" / f"{corpus.index['corpus']}-{corpus.train_split}.beton", args.workers)
        beton_s = time.perf_counter() - started
        pre = bench.measure(pretrain_cases(args, tmp), label="pretraining runs")
        fine = bench.measure(finetune_cases(args, tmp), label="fine-tuning runs")
    rows = []
    for name, result in pre.items():
        figs = [pretrain_figures(v) for v in result.values]
        stats = {k: Stats.of(f[k] for f in figs) for k in figs[0]}
        key = name.replace(" + ", "_").replace(" ", "_")
        for k, v in stats.items():
            bench.record(f"pretrain.{key}.{k}", v, digits=3)
        rows.append([name, spread(stats["clips_per_s"], ".1f"), spread(Stats.of(100 * f["data_wait"] for f in figs), ".0f"),
                     spread(stats["startup_s"], ".1f"), spread(stats["rss"], ",.0f")])
    bench.table(f"Pretraining, tiny model, {args.steps} steps of {args.batch} clips (<= {args.max_seconds:g} s), "
                f"{args.workers} workers/threads, {args.unlabelled.name}: median (min-max) of {args.repeats} runs",
                ["backend", "clips/s", "data wait %", "start-up s", "peak RSS MiB"], rows, left=("backend",))
    rows = []
    for name, result in fine.items():
        figs = [finetune_figures(v) for v in result.values]
        stats = {k: Stats.of(f[k] for f in figs) for k in figs[0]}
        for k, v in stats.items():
            bench.record(f"finetune.{name}.{k}", v, digits=3)
        rows.append([name, spread(stats["epoch_s"], ".2f"), spread(Stats.of(100 * f["data_wait"] for f in figs), ".0f"),
                     spread(stats["rss"], ",.0f")])
    bench.table(f"Fine-tuning (full, tiny model), {args.labelled.name}, clips of {args.clip_seconds:g} s, batch "
                f"{args.batch}, {args.workers} workers: median (min-max) of {args.repeats} runs",
                ["backend", "epoch s", "data wait %", "peak RSS MiB"], rows, left=("backend",))
    bench.note(f"the .beton of {args.labelled.name}'s {corpus.train_split} split took {beton_s:.1f} s to write, once")
    bench.update({"beton_write_s": round(beton_s, 2), "steps": args.steps, "epochs": args.epochs, "batch": args.batch,
                  "workers": args.workers})
    bench.finish(own_load=float(args.workers))


if __name__ == "__main__":
    main()
