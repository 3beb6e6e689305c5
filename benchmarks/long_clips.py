"""What the official pretraining lengths cost: the base model's training step on 35 s clips against 10 s clips.

The paper presets pretrain on whole clips (data.max_tokens, max_seconds 2500: docs/recipes.md), so a batch
of long LibriSpeech utterances holds clips of up to about 35 s (3500 fbank frames: 1750 frame tokens, 1744
patch tokens) where the old presets cropped every clip to 10 s. For frame and patch tokens, a step of the
base preset (768 wide, 12 encoder + 2 decoder layers, MAE-AST's 75% random mask) on --batch clips of 10 s
and of 35 s: forward, backward and an AdamW step, each variant in its own subprocess (its peak RSS is its
own: ru_maxrss, and "step MB", its growth over the RSS before the first step), the variants taking turns
step by step (benchmarks/mae_vs_ssast.py's workers and benchmarks/harness.py's timing). Input: the
mae_ast fbank of real synthesized audio (espeak-ng speech, sox plucked chords) looped to the length.
"step s" is the fastest timed step, "median s" the median (min-max); the "35 s / 10 s" lines give the
ratios. Prints tables, then one JSON line. A step of batch 1 takes about 7 s (10 s clips) and 13 s (35 s)
of CPU time: the defaults (1 warm-up and 1 timed step of each of 4 variants) run about 3 minutes on 2 idle
cores, 4-5 on 2 busy ones; `--steps 2` (the figures in docs/recipes.md) ran 6.7 minutes at load 8-10.

    python benchmarks/long_clips.py                          # batch 1, 1 timed step after 1 warm-up, CPU
    python benchmarks/long_clips.py --steps 2                 # 2 timed steps each
    python benchmarks/long_clips.py --batch 2 --tokens frame  # one token kind, 2 clips a step
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from harness import Bench, spread
from mae_vs_ssast import run_workers, synth_features

from maeast.model import make_config

LENGTHS = (10.0, 35.0)
TOKENS = ("frame", "patch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="clips per step (default 1)")
    parser.add_argument("--tokens", choices=TOKENS, action="append", help="frame or patch (default: both)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per variant (default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per worker (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    bench = Bench("long_clips", repeats=args.steps, warmup=args.warmup)
    kinds = tuple(args.tokens or TOKENS)
    bench.update({"preset": "base", "device": args.device, "batch": args.batch,
                  "threads": args.threads or torch.get_num_threads()})
    results, times = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        features = {}
        for seconds in LENGTHS:
            features[seconds] = Path(tmp) / f"features_{seconds:g}.pt"
            synth_features(features[seconds], args.batch, seconds, Path(tmp))
        for tokens in kinds:  # two workers at a time: the base model's memory twice, not four times
            specs = {f"{tokens}_{seconds:g}s": {"kind": "mae", "tokens": tokens, "preset": "base",
                                                "device": args.device, "features": str(features[seconds]),
                                                "warmup": args.warmup, "threads": args.threads}
                     for seconds in LENGTHS}
            r, t = run_workers(bench, specs)
            results.update(r)
            times.update(t)

    cfg = make_config("base")
    bench.table(f"base preset ({cfg.dim} wide, {cfg.depth} + {cfg.decoder_depth} layers), {args.batch} clips a step, "
                f"{args.device}; {args.steps} timed steps each (timings on a shared, busy machine: noisy)",
                ["variant", "tokens", "step s", "median s", "CPU s", "peak MB", "step MB"],
                [(name, r["tokens"], f"{r['step_s']:.2f}", spread(times[name], ".2f"), f"{r['cpu_step_s']:.2f}",
                  f"{r['peak_mem_mb']:.0f}", f"{r['step_mem_mb']:.0f}" if "step_mem_mb" in r else "-")
                 for name, r in results.items()], left=())
    for tokens in kinds:
        short, long = results[f"{tokens}_10s"], results[f"{tokens}_35s"]
        ratios = {"time": long["step_s"] / short["step_s"], "cpu_time": long["cpu_step_s"] / short["cpu_step_s"],
                  "peak_mem": long["peak_mem_mb"] / short["peak_mem_mb"]}
        if "step_mem_mb" in long:
            ratios["step_mem"] = long["step_mem_mb"] / max(short["step_mem_mb"], 1.0)
        bench.note(f"{tokens} tokens, 35 s / 10 s: {ratios['time']:.2f}x the step time "
                   f"({ratios['cpu_time']:.2f}x the CPU time), {ratios['peak_mem']:.2f}x the peak memory"
                   + (f" ({ratios['step_mem']:.2f}x what a step adds)" if "step_mem" in ratios else "")
                   + f"; {long['tokens']} tokens a clip against {short['tokens']}")
        bench.update({f"{tokens}_35s_over_10s_{k}": round(v, 3) for k, v in ratios.items()})
    for name, r in results.items():
        for k, x in r.items():
            bench.record(f"{name}_{k}", times[name] if k == "median_step_s" else x, digits=4)
    bench.finish(own_load=args.threads or torch.get_num_threads())


if __name__ == "__main__":
    main()
