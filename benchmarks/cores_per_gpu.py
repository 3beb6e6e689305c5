"""How many CPU cores feed one H100: CPU time per clip of the data path, for FLAC and wav shards.

A GPU run's data path: shards -> samples (tar, per-sample sha256) -> each clip's window decoded ->
a waveform batch in pinned memory -> (on the GPU) fbank, SpecAugment, masking. Its CPU share is
everything up to the pinned batch. Measured here, in CPU seconds (time.process_time, one torch
thread, so a figure is one core's time) of one process reading real audio:

  GPU route  maeast's StreamingLoader in pretraining mode (num_workers=0: every step in this process)
             with loader.fbank_on "device": it yields cropped waveform batches, and each is copied into a
             staging buffer (pinned on CUDA); the fbank then runs where Batch.to sends the batch
  CPU route  the same loader with fbank_on "loader" (the default): the fbank in the loader's workers

over shards built by `maeast shard build` (the folder recipe) with --codec flac and --codec wav, from
real audio: espeak-ng sentences and sox plucked chords of about 10 s (benchmarks/loader.py's corpus),
with per-sample checksums on (the default) and off; the loaders take turns epoch by epoch. Cores per H100 = clips/s one H100 trains x CPU seconds per clip. The clips/s come from
the last GPU run recorded by `make gpu-check` (benchmarks/results/gpu-check-*.json, its "step flash"
row, base model, 10 s clips) when there is one, else from the analytic FLOPs of a base-model step
(maeast.model.flops, benchmarks/mfu.py's count) at 50% of the H100's dense bf16 peak (989 TFLOP/s), said so in the output.

model.views K (each decoded clip masked K times, encoder and decoder on the K views): the GPU's step does
the work of K clips less K - 1 token projections per decoded clip, so it asks for fewer decoded clips:
clips/s at K = clips/s at 1 x step_flops(views 1) / step_flops(views K) (maeast.model.flops counts the
projection once per clip), while the CPU time per decoded clip is the same; the table's last columns are
the cores per H100 at K = 4 and 8 (VIEWS).

    python benchmarks/cores_per_gpu.py [--clips 32] [--seconds 10] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from harness import Bench, spread
from loader import make_corpus
from mfu import real_waves

from maeast.features import fbank, get_config
from maeast.loaders import LoaderConfig, StreamingLoader
from maeast.model import make_config
from maeast.model.flops import step_flops
from maeast.shards.build import build_shards

H100_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's H100 SXM datasheet (dense, without sparsity)
RESULTS = Path(__file__).resolve().parent / "results"
TARGET_CORES = 8
VIEWS = (4, 8)


def h100_clips_per_s(seconds: float) -> tuple[float, str]:
    """Base-model clips/s one H100 trains at `seconds` clips, and where the figure comes from."""
    for path in sorted(RESULTS.glob("gpu-check-*.json"), reverse=True):
        report = json.loads(path.read_text())
        row = report.get("rows", {}).get("step flash", {})
        if "H100" in report.get("device", "") and row.get("status") == "ok" and row.get("seconds") == seconds:
            return row["clips_per_s"], f"measured by make gpu-check ({path.name}: MFU {row['mfu']:.1%})"
    frames = get_config("mae_ast").num_frames(round(seconds * 16000))
    flops = step_flops(make_config("base"), 1, frames)
    return (0.5 * H100_BF16_DENSE / flops,
            f"analytic: {flops / 1e9:.0f} GFLOP per clip at 50% MFU of 989 TFLOP/s; no GPU run recorded")


def views_factor(seconds: float, views: int) -> float:
    """Decoded clips/s one H100 asks for at model.views `views`, as a fraction of those at one view: a base-model
    step's FLOPs per clip at one view over those at `views` (the token projection once per clip)."""
    frames = get_config("mae_ast").num_frames(round(seconds * 16000))
    return step_flops(make_config("base"), 1, frames) / step_flops(make_config("base", views=views), 1, frames)


def cpu_seconds(fn):
    """fn -> a call returning (CPU seconds of this process during fn(), what fn returned)."""
    def run():
        start = time.process_time()
        value = fn()
        return time.process_time() - start, value
    return run


def loader_epoch(shards: Path, batch: int, seconds: float, verify: bool, gpu_route: bool):
    """One epoch of the stream loader -> its clips; on the GPU route (fbank_on device) each waveform batch
    is copied into a staging buffer (pinned where CUDA is) as the step before the device."""
    config = LoaderConfig(shards=[str(shards)], batch_size=batch, num_workers=0, shuffle_buffer=0, bucket_batches=1,
                          max_seconds=seconds, min_seconds=2.0, verify_checksums=verify,
                          fbank_on="device" if gpu_route else "loader")
    loader = StreamingLoader(config)
    staging = {}

    def run() -> int:
        clips = 0
        for b in loader:
            if gpu_route:
                if b.waveform.shape not in staging:
                    staging[b.waveform.shape] = torch.empty(b.waveform.shape, pin_memory=torch.cuda.is_available())
                staging[b.waveform.shape].copy_(b.waveform)
            clips += len(b)
        return clips
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32, help="clips in the corpus (half speech, half music)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (10 s: the official crops)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # CPU seconds of one core; a GPU run's workers get one thread each
    bench = Bench("cores_per_gpu", repeats=args.repeats, warmup=1)
    clips_per_s, source = h100_clips_per_s(args.seconds)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with bench.status("synthesizing the corpus (espeak-ng, sox) and building shards"):
            make_corpus(tmp / "corpus", args.clips, args.seconds + 1.0, 1)  # a little longer than the crop
            for codec in ("flac", "wav"):
                build_shards("folder", tmp / "corpus", tmp / codec, shard_size_mb=2.0, codec=codec)
        cases = {(codec, verify, route): loader_epoch(tmp / codec, args.batch, args.seconds, verify, route == "GPU")
                 for codec in ("flac", "wav") for verify in (True, False) for route in ("GPU", "CPU")}
        timed = bench.measure({f"{c} {v} {r}": cpu_seconds(fn) for (c, v, r), fn in cases.items()},
                              label=f"{len(cases)} loaders, epochs in turns")
    fbank_s = bench.measure({"fbank": cpu_seconds(lambda: fbank(real_waves(args.batch, args.seconds)))},
                            label="fbank")["fbank"].stats(lambda v: v[0]).median / args.batch

    rows = []
    for (codec, verify, route), _ in cases.items():
        us = timed[f"{codec} {verify} {route}"].stats(lambda v: v[0] / v[1] * 1e6)  # CPU µs per clip
        cores = clips_per_s * us.median / 1e6
        viewed = {k: cores * views_factor(args.seconds, k) for k in VIEWS}
        rows.append((codec, "on" if verify else "off", f"{route} route", spread(us, ",.0f"), f"{cores:.1f}",
                     "yes" if cores <= TARGET_CORES else "no", *(f"{viewed[k]:.2f}" for k in VIEWS)))
        key = f"{codec}.checksums_{'on' if verify else 'off'}.{route.lower()}_route"
        bench.record(f"{key}.cpu_us_per_clip", us, digits=1)
        bench.record(f"{key}.cores_per_h100", round(cores, 2))
        for k in VIEWS:
            bench.record(f"{key}.cores_per_h100_views{k}", round(viewed[k], 2))
    bench.table(f"CPU time per {args.seconds:g} s clip (one thread; median (min-max) of {args.repeats} epochs of "
                f"{args.clips} clips, batch {args.batch}), and CPU cores one H100 needs at {clips_per_s:,.0f} clips/s "
                f"({source}); the last columns at model.views {' and '.join(map(str, VIEWS))} (decoded clips/s x "
                f"{', '.join(f'{views_factor(args.seconds, k):.3f}' for k in VIEWS)})",
                ["shards", "checksums", "route", "CPU µs/clip", "cores per H100", f"<= {TARGET_CORES}",
                 *(f"views {k}" for k in VIEWS)], rows, left=("shards", "checksums", "route"))
    bench.note(f"fbank alone on this CPU: {fbank_s * 1e6:,.0f} µs per {args.seconds:g} s clip (one thread)")
    bench.update({"h100_clips_per_s": round(clips_per_s, 1), "clips_per_s_source": source,
                  **{f"h100_clips_per_s_views{k}": round(clips_per_s * views_factor(args.seconds, k), 1) for k in VIEWS},
                  "fbank_cpu_us_per_clip": round(fbank_s * 1e6, 1), "seconds": args.seconds, "batch": args.batch,
                  "clips": args.clips})
    bench.finish(own_load=1.0)


if __name__ == "__main__":
    main()
