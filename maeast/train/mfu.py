"""MFU: the model FLOPs a run trains per second (maeast.model.flops) over the peak FLOP/s of its device.

The peak is measured, not looked up, so that the ratio means as much on a 2-core CPU as on an H100:
the FLOP/s of a large square matmul in the precision the steps run in (bf16 on CUDA, where training
runs under bf16 autocast; fp32 on CPU).

    peak = peak_flops(device)                              # once, before training: a fraction of a second
    mfu(pretrain_flops(cfg, batch.frames()), seconds, peak)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

SMALLEST = 1024  # the side peak_flops starts from (smaller ones measure call overhead more than the units)


def peak_size(device: torch.device) -> int:
    """The side of the matmul that measures a device's peak: 8192 on CUDA, 2048 on CPU."""
    return 8192 if device.type == "cuda" else 2048


def matmul_case(device: torch.device, size: int) -> tuple[Callable[[], None], int]:
    """A size x size matmul on `device` (bf16 on CUDA, fp32 on CPU) -> (a call, the FLOPs of one call)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device).manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen, device=device, dtype=dtype) for _ in range(2))
    calls = 10 if device.type == "cuda" else 1  # a GPU call is too short to time alone

    def run():
        for _ in range(calls):
            torch.mm(a, b)

    return run, 2 * size**3 * calls


def _seconds(run: Callable[[], None], device: torch.device) -> float:
    """Wall seconds of one call of `run`, the device synchronized before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def peak_flops(device: torch.device | str, seconds_budget: float = 0.5, repeats: int = 5,
               size: int | None = None) -> float:
    """Peak FLOP/s of `device`: the median over `repeats` calls of a square matmul (matmul_case), bf16 on
    CUDA, fp32 on CPU; `size` sets the side. Else the side doubles from 1024 up to peak_size(device) while
    the repeats of the next size would still fit in `seconds_budget` (a warm-up and a timed call per size
    on the way): on a 2-core CPU 1024 (about 15% below 2048's rate, in under half a second), on a GPU 8192."""
    device = torch.device(device)
    top = size or peak_size(device)
    side = size or min(SMALLEST, top)
    while True:
        run, flops = matmul_case(device, side)
        run()  # allocation, the library's start-up
        first = _seconds(run, device)
        if side >= top or first * 8 * repeats > seconds_budget:
            break
        side = min(2 * side, top)
    times = [first] + [_seconds(run, device) for _ in range(repeats - 1)]
    return flops / statistics.median(times)


def mfu(flops: float, seconds: float, peak: float) -> float:
    """Model FLOPs utilisation: `flops` done in `seconds` against a peak of `peak` FLOP/s (0 to 1)."""
    return flops / seconds / peak
