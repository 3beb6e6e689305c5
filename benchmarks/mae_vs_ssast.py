"""MAE-AST against an SSAST-style model: training step time and peak memory, patch and frame tokens.

Same width, depth, input and losses; MAE-AST runs its encoder on the 25% visible tokens and a
shallow decoder on all of them, the SSAST-style model runs the encoder on every token (masked ones
replaced by a mask token) and puts the two heads on its outputs at the masked positions. A step is
forward, backward and an AdamW step. The variants take turns step by step after --warmup untimed
steps each (benchmarks/harness.py times each step from the request to the worker's reply, CUDA
synchronized); "step s" is the fastest of the timed steps (the least disturbed by other load on the
machine), "median s" their median (min-max beside it), "CPU s" the least process CPU time of a step
(less sensitive to a busy machine). Each variant runs in its own subprocess so that its peak
memory is its own: on CPU the process's peak RSS (ru_maxrss) and its growth over the RSS before the
first step ("step MB"); on CUDA torch.cuda.max_memory_allocated. The input is the log-mel fbank of
real synthesized 10 s clips (espeak-ng speech, sox plucked chords). The paper reports 3x faster and
2x less memory for its 12-layer models. Prints a table, then one JSON line.

    python benchmarks/mae_vs_ssast.py            # small preset (256 wide, 4 layers), 8 x 10 s, CPU: < 1 min
    python benchmarks/mae_vs_ssast.py --full     # base preset (768 wide, 12 layers)
    python benchmarks/mae_vs_ssast.py --threads 1   # one thread per worker: steadier on a busy machine
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn as nn
from harness import Bench, Stats, spread

from maeast.features import fbank
from maeast.model import MAEAST, make_config, param_groups
from maeast.model.decoder import gather_tokens
from maeast.model.encoder import Encoder
from maeast.model.flops import encoder_parts, mae_parts, visible_tokens
from maeast.model.init import init_weights
from maeast.model.losses import mae_loss
from maeast.model.masking import MASKS
from maeast.precision import autocast
from maeast.train.mfu import mfu

TOKENS = {"patch": {"patch_time": 16, "patch_freq": 16}, "frame": {"patch_time": 2, "patch_freq": 128}}
VARIANTS = [("mae", "patch"), ("ssast", "patch"), ("mae", "frame"), ("ssast", "frame")]
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


class SSASTStyle(nn.Module):
    """Joint encoder over all tokens, masked ones replaced by a learned token; heads on its outputs."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.mask_token = nn.Parameter(torch.empty(cfg.dim))
        self.head_recon = nn.Linear(cfg.dim, cfg.patch_dim)
        self.head_nce = nn.Linear(cfg.dim, cfg.patch_dim)
        init_weights(self, cfg.init)

    def forward(self, features, padding_mask=None, generator=None):
        tokens = self.encoder.tokenize(features, padding_mask)
        m = MASKS[self.cfg.mask_type](tokens.rows_real, tokens.grid, self.cfg.mask_ratio, generator=generator)
        x = torch.where(m.mask[..., None].bool(), self.mask_token, tokens.x)  # [B, N, D]
        x, _ = self.encoder.transformer(self.encoder.add_positions(x), m.token_pad if tokens.padded else None,
                                        generator)
        x = gather_tokens(x, m.ids_masked)  # [B, M, D]
        recon, classify = self.head_recon(x), self.head_nce(x)
        target = gather_tokens(tokens.patches, m.ids_masked)
        loss, _ = mae_loss(recon, classify, target, ~m.masked_pad, self.cfg.mse_weight, self.cfg.infonce_weight)
        return loss


def step_flops(cfg, kind: str, batch: int, n: int) -> int:
    """Training FLOPs (3 x forward matmuls, maeast.model.flops' convention) of one step on batch x n
    tokens. MAE-AST: the model's own count (mae_parts, K = visible_tokens); SSAST-style: the projection
    and the encoder on all n tokens (encoder_parts), the two heads at the encoder's width and InfoNCE's
    logits on the same M = n - K masked tokens."""
    k = visible_tokens(cfg, n)
    if kind == "mae":
        return 3 * batch * sum(mae_parts(cfg, n, k).values())
    m, p = n - k, cfg.patch_dim
    return 3 * batch * (sum(encoder_parts(cfg, n).values()) + 2 * 2 * m * cfg.dim * p + 2 * m * m * p)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def worker(spec: dict) -> None:
    """Set up one variant, then run a step for every "step" line on stdin (replying with the step's
    process CPU time); "done" replies with the variant's sizes and memory figures.

    Workers take turns (the parent sends one "step" at a time, round robin), so a busy machine slows
    every variant alike; a waiting worker is blocked on stdin and uses nothing. CUDA's peak memory
    counts from the end of the last warm-up step.
    """
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cfg = make_config(spec["preset"], **TOKENS[spec["tokens"]], layerdrop=0.0)
    features = torch.load(spec["features"]).to(device)  # [B, T, 128]
    model = (MAEAST(cfg) if spec["kind"] == "mae" else SSASTStyle(cfg)).to(device).train()
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    gen = torch.Generator(device).manual_seed(0)
    rss_before = rss_bytes()
    steps = 0
    print(json.dumps({"ready": True}), flush=True)
    for command in sys.stdin:
        if command.strip() == "done":
            break
        cpu_start = time.process_time()
        with autocast(device):  # bf16 on CUDA, as the engine trains; nothing on CPU
            out = model(features, generator=gen)
        (out.loss if spec["kind"] == "mae" else out).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        cpu = time.process_time() - cpu_start
        steps += 1
        if steps == spec["warmup"] and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        print(json.dumps({"cpu_s": cpu}), flush=True)
    else:
        return  # the parent went away

    batch, frames = features.shape[:2]
    n = cfg.tokens_for(frames)
    result = {"tokens": n, "batch": batch, "flops": step_flops(cfg, spec["kind"], batch, n),
              "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if device.type == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["device_name"] = torch.cuda.get_device_name()
    else:
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result["peak_mem_mb"] = peak_rss / 2**20
        result["step_mem_mb"] = (peak_rss - rss_before) / 2**20
    print(json.dumps(result), flush=True)


def run_workers(bench: Bench, specs: dict[str, dict]) -> tuple[dict[str, dict], dict[str, Stats]]:
    """One subprocess per variant, stepped round robin by the harness; each variant's figures and
    step times."""
    procs = {name: subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True) for name, spec in specs.items()}

    def ask(name: str, command: str | None) -> dict:
        proc = procs[name]
        if command:
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"the {name} worker failed (its error is above)")
        return json.loads(line)

    try:
        for name in procs:
            ask(name, None)  # ready
        timed = bench.measure({name: (lambda name=name: ask(name, "step")["cpu_s"]) for name in procs},
                              label="training steps, round robin")
        results = {name: ask(name, "done") for name in procs}
    finally:
        for proc in procs.values():
            proc.stdin.close()  # end of input ends a worker that was not told "done"
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    for name, r in results.items():
        seconds, flops = timed[name].seconds, r.pop("flops")
        r.update(step_s=seconds.min, median_step_s=seconds.median, max_step_s=seconds.max,
                 tokens_per_s=r["batch"] * r["tokens"] / seconds.min, cpu_step_s=timed[name].stats().min,
                 tflops_per_s=flops / seconds.min / 1e12)
        if "device_name" in r:
            peak = next((v for k, v in PEAK_BF16.items() if k in r["device_name"]), None)
            r["mfu"] = mfu(flops, seconds.min, peak) if peak else None
    return results, {name: t.seconds for name, t in timed.items()}


def synth_features(path: Path, batch: int, seconds: float, tmp: Path) -> None:
    """Alternate espeak-ng speech and sox plucked chords, 16 kHz, looped to `seconds`, as fbank."""
    text = "the quick brown fox jumps over the lazy dog while five boxing wizards pack my box with liquor jugs"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(tmp / "speech.wav"), text], check=True, capture_output=True)
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(tmp / "music.wav"), "synth", str(seconds),
                    "pluck", "C3", "pluck", "E3", "pluck", "G3", "gain", "-6"], check=True, capture_output=True)
    n = int(seconds * 16000)
    clips = []
    for name in ("speech.wav", "music.wav"):
        audio, rate = sf.read(tmp / name, dtype="float32")
        audio = soxr.resample(audio, rate, 16000) if rate != 16000 else audio
        clips.append(np.resize(audio, n))  # loop up to the clip length
    waves = np.stack([np.roll(clips[i % 2], 1601 * i) for i in range(batch)])
    torch.save(fbank(torch.from_numpy(waves), 16000, preset="mae_ast"), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the base preset (768 wide, 12 + 2 layers)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (4 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (1 on CPU, 5 on CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads per worker (0: torch's default; 1 holds up best on a busy machine)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    cuda = args.device.startswith("cuda")
    preset = "base" if args.full else "small"
    warmup, steps = args.warmup or (5 if cuda else 1), args.steps or (20 if cuda else 4)
    bench = Bench("mae_vs_ssast", repeats=steps, warmup=warmup)
    bench.update({"preset": preset, "device": args.device, "batch": args.batch, "seconds": args.seconds,
                  "threads": args.threads or torch.get_num_threads()})
    with tempfile.TemporaryDirectory() as tmp:
        features = Path(tmp) / "features.pt"
        synth_features(features, args.batch, args.seconds, Path(tmp))
        specs = {f"{kind}_{tokens}": {"kind": kind, "tokens": tokens, "preset": preset, "device": args.device,
                                      "features": str(features), "warmup": warmup, "threads": args.threads}
                 for kind, tokens in VARIANTS}
        results, times = run_workers(bench, specs)

    cfg = make_config(preset)
    bench.table(f"MAE-AST vs SSAST-style, {preset} ({cfg.dim} wide, {cfg.depth} layers; MAE decoder "
                f"{cfg.decoder_depth}), {args.batch} x {args.seconds:g} s, {args.device}; {steps} timed steps",
                ["variant", "tokens", "step s", "median s", "CPU s", "tokens/s", "TFLOP/s", "MFU", "peak MB",
                 "step MB", "params M"],
                [(name, r["tokens"], f"{r['step_s']:.3f}", spread(times[name], ".3f"),
                  f"{r['cpu_step_s']:.3f}", f"{r['tokens_per_s']:.0f}", f"{r['tflops_per_s']:.3f}",
                  f"{r['mfu']:.1%}" if r.get("mfu") else "-", f"{r['peak_mem_mb']:.0f}",
                  f"{r['step_mem_mb']:.0f}" if "step_mem_mb" in r else "-", f"{r['params_m']:.1f}")
                 for name, r in results.items()], left=())
    ratios = {}
    for tokens in ("patch", "frame"):
        mae, ssast = results[f"mae_{tokens}"], results[f"ssast_{tokens}"]
        ratios[f"{tokens}_speedup"] = ssast["step_s"] / mae["step_s"]
        ratios[f"{tokens}_cpu_time_ratio"] = ssast["cpu_step_s"] / mae["cpu_step_s"]
        ratios[f"{tokens}_memory_ratio"] = ssast["peak_mem_mb"] / mae["peak_mem_mb"]
        if "step_mem_mb" in mae:
            ratios[f"{tokens}_step_memory_ratio"] = ssast["step_mem_mb"] / max(mae["step_mem_mb"], 1.0)
        bench.note(f"{tokens}: MAE-AST is {ratios[f'{tokens}_speedup']:.2f}x faster "
                   f"({ratios[f'{tokens}_cpu_time_ratio']:.2f}x less CPU time), SSAST-style uses "
                   f"{ratios[f'{tokens}_memory_ratio']:.2f}x the peak memory"
                   + (f" ({ratios[f'{tokens}_step_memory_ratio']:.2f}x the memory a step adds)"
                      if f"{tokens}_step_memory_ratio" in ratios else "")
                   + " (paper: 3x faster, 2x less memory)")
    bench.update({k: round(v, 3) for k, v in ratios.items()})
    for v, r in results.items():
        for k, x in r.items():
            bench.record(f"{v}_{k}", times[v] if k == "median_step_s" else x, digits=4)  # min-max: "spread"
    bench.finish(own_load=1.0 if cuda else args.threads or torch.get_num_threads(),
                 hint="try --threads 1" if not cuda and args.threads != 1 else "")


if __name__ == "__main__":
    main()
