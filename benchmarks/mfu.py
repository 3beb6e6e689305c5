"""MFU of one MAE-AST pretraining step: FLOPs counted from the config, time measured, and the peak that
this same run measures on this same device, so that the ratio means as much on a 2-core CPU as on an H100.

FLOPs (maeast.model.flops.step_flops, the count behind the training log's MFU): 2 per multiply-add,
matrix products only: the token projection (on every token, as MAEAST.forward runs it), the encoder's
layers on the K visible tokens, the decoder's layers on all N tokens, each layer's q/k/v/out and FFN
linears plus attention's scores (QK^T) and values (AV), the two heads on the M masked tokens and
InfoNCE's M x M logits. LayerNorm, softmax, GELU, dropout, the losses' elementwise work and the
optimizer are left out. A training step counts 3 x the forward (backward = 2 x forward, the usual MFU
convention of Kaplan et al. and PaLM; the projection's input gradient, which autograd skips, is counted
all the same). Layerdrop is off here, so every step runs every layer.

Peak: the FLOP/s of a large square matmul (maeast.train.mfu.matmul_case, 2048 on CPU, 8192 on CUDA),
timed in turns with the steps (so that load from elsewhere falls on both alike): fp32 on CPU (what the
step runs in there), bf16 on CUDA (the step runs under bf16 autocast there).

The input is the log-mel fbank of real audio: the committed fixture clips (espeak-ng speech and a
fluidsynth chord, tests/fixtures/fbank/reference.npz), looped to the clip length, each row shifted,
so that the check needs no synthesizer on a bare GPU machine. A step is forward, backward and an
AdamW step; the step time is the median of the timed steps (benchmarks/harness.py).

    python benchmarks/mfu.py                              # CPU: the small preset, 8 x 10 s clips
    python benchmarks/mfu.py --preset base --batch 64     # on CUDA: bf16 autocast, SDPA's choice
    python benchmarks/mfu.py --attention math --compile   # SDPA's math path; torch.compile'd blocks
    python benchmarks/mfu.py --profile                    # also torch.profiler's top operators
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import torch
from harness import Bench, add_arguments, spread

from maeast.features import fbank, get_config
from maeast.model import MAEAST, make_config, param_groups
from maeast.model.flops import forward_flops, step_flops
from maeast.model.masking import visible_count
from maeast.precision import autocast
from maeast.train.mfu import matmul_case, mfu, peak_size

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "fbank" / "reference.npz"
ATTENTION = ("default", "flash", "math")


# --- what is measured ----------------------------------------------------------------------------

def real_waves(batch: int, seconds: float, sample_rate: int = 16000) -> torch.Tensor:
    """[batch, seconds * rate] float audio in [-1, 1]: the fixture's speech and music clips in turn,
    each looped to the length and shifted by 0.1 s per row."""
    with np.load(FIXTURE) as data:
        clips = [data["wav_speech"], data["wav_music"]]
    n = round(seconds * sample_rate)
    rows = [np.roll(np.resize(clips[i % 2], n), 1601 * i) for i in range(batch)]
    return torch.from_numpy(np.stack(rows).astype(np.float32) / 32768)


def sdpa_backend(attention: str):
    """A context that restricts scaled_dot_product_attention to one backend ('default': SDPA's choice)."""
    if attention == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}[attention])


def sync(device: torch.device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def matmul_peak(bench: Bench, device: torch.device, size: int, repeats: int = 5) -> float:
    """FLOP/s of a size x size matmul on `device`: bf16 on CUDA, fp32 on CPU (median of the repeats)."""
    run, flops = matmul_case(device, size)
    result = bench.measure({"matmul": run}, repeats=repeats, warmup=1, sync=sync(device), label="matmul peak")
    return result["matmul"].rate(flops).median


class Step:
    """One pretraining step of a model on fixed features: forward (bf16 autocast on CUDA), backward,
    AdamW, under the chosen SDPA backend. Each call draws new masks and dropout from its generator."""

    def __init__(self, model: torch.nn.Module, features: torch.Tensor, attention: str = "default"):
        self.model, self.features, self.attention = model.train(), features, attention
        self.device = features.device
        self.opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
        self.gen = torch.Generator(self.device).manual_seed(0)

    def __call__(self) -> int:
        with sdpa_backend(self.attention), autocast(self.device):
            out = self.model(self.features, generator=self.gen)
            loss = out if isinstance(out, torch.Tensor) else out.loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return len(self.features)


def features_for(batch: int, seconds: float, device: torch.device) -> torch.Tensor:
    """[B, T, 128] mae_ast fbank of real_waves, computed on `device`."""
    return fbank(real_waves(batch, seconds).to(device), preset="mae_ast")


def measure(bench: Bench, preset: str, batch: int, seconds: float, device: torch.device, attention: str = "default",
            compiled: bool = False, steps: int = 5, warmup: int = 2, peak: float | None = None,
            model_fn=MAEAST, flops: int | None = None, peak_n: int | None = None) -> dict:
    """Step time, clips/s, achieved FLOP/s, MFU against `peak` (measured here when None, with a
    peak_n-square matmul, peak_size(device) by default) and, on CUDA, peak memory of one configuration.
    model_fn(cfg) builds the model (MAEAST by default); `flops` replaces the MAE-AST count for another model."""
    cfg = make_config(preset, layerdrop=0.0)
    features = features_for(batch, seconds, device)
    model = model_fn(cfg).to(device)
    if compiled and hasattr(model, "compile_blocks"):
        model.compile_blocks()
    elif compiled:
        model.compile()
    step = Step(model, features, attention)
    cases = {"step": step}
    if peak is None:  # the matmul takes turns with the steps, so that other load falls on both alike
        cases["matmul"], matmul_flops = matmul_case(device, peak_n or peak_size(device))
    started = time.perf_counter()
    step()  # the first step (compilation, allocator warm-up) apart from the timed warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    first_s = time.perf_counter() - started
    timed = bench.measure(cases, repeats=steps, warmup=warmup, sync=sync(device),
                          label=f"{preset} steps, {attention} attention{', compiled' if compiled else ''}")
    step_s = timed["step"].seconds
    flops = step_flops(cfg, batch, features.shape[1]) if flops is None else flops
    peak = timed["matmul"].rate(matmul_flops).median if peak is None else peak
    peak_mem_mb = None
    if device.type == "cuda":  # one more step alone: the model's, optimizer's and activations' peak
        cases.clear()  # the matmul's inputs go
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak_mem_mb = torch.cuda.max_memory_allocated(device) / 2**20
    return {"preset": preset, "batch": batch, "seconds": seconds, "device": str(device), "attention": attention,
            "compiled": compiled, "tokens": cfg.tokens_for(features.shape[1]), "step_s": step_s,
            "first_step_s": first_s, "clips_per_s": batch / step_s.median, "flops": flops,
            "achieved_flops": flops / step_s.median, "peak_flops": peak, "mfu": mfu(flops, step_s.median, peak),
            "peak_mem_mb": peak_mem_mb,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def profile(step: Step, rows: int = 15) -> str:
    """torch.profiler's operators of two steps, by self CPU time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if step.device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(2):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--preset", default="base" if cuda else "small", help="model preset (base on CUDA, small on CPU)")
    parser.add_argument("--batch", type=int, default=64 if cuda else 8)
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (10 s: the official crops)")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--attention", choices=ATTENTION, default="default",
                        help="SDPA backend: default (SDPA's choice), flash, or math")
    parser.add_argument("--compile", action="store_true", help="torch.compile every transformer block")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top operators of 2 steps")
    add_arguments(parser, repeats=10 if cuda else 5, warmup=3 if cuda else 1)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    bench = Bench("mfu", repeats=args.repeats, warmup=args.warmup)
    r = measure(bench, args.preset, args.batch, args.seconds, device, args.attention, args.compile,
                args.repeats, args.warmup)
    cfg = make_config(args.preset)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    per_clip = forward_flops(cfg, get_config("mae_ast").num_frames(round(args.seconds * 16000)))
    bench.table(f"FLOPs of one {args.seconds:g} s clip's forward, {args.preset} ({cfg.dim} wide, {cfg.depth} + "
                f"{cfg.decoder_depth} layers, {r['tokens']} tokens, {visible_count(r['tokens'], cfg.mask_ratio)} visible)",
                ["part", "GFLOP", "share"],
                [(part, f"{f / 1e9:.3f}", f"{f / sum(per_clip.values()):.1%}") for part, f in per_clip.items()])
    bench.table(f"Pretraining step, {args.preset}, {args.batch} x {args.seconds:g} s, {name}, "
                f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}, {args.attention} attention"
                + (", compiled" if args.compile else ""),
                ["step s", "clips/s", "GFLOP/step", "GFLOP/s", "peak GFLOP/s (matmul)", "MFU", "peak MiB"],
                [(spread(r["step_s"], ".3f"), f"{r['clips_per_s']:.1f}", f"{r['flops'] / 1e9:,.4g}",
                  f"{r['achieved_flops'] / 1e9:,.4g}", f"{r['peak_flops'] / 1e9:,.4g}", f"{r['mfu']:.1%}",
                  f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] is not None else "-")], left=())
    if args.profile:
        features = features_for(args.batch, args.seconds, device)
        bench.note(profile(Step(MAEAST(make_config(args.preset, layerdrop=0.0)).to(device), features, args.attention)))
    bench.record("device_name", name)
    for key, value in r.items():
        bench.record(key, value, digits=None if key in ("flops",) else 4)
    bench.record("flops_convention", "3 x forward matmul FLOPs (2 per multiply-add)")
    bench.finish(own_load=1.0 if device.type == "cuda" else torch.get_num_threads())


if __name__ == "__main__":
    main()
