"""`make gpu-check`: the GPU path proven in one command, one table and one JSON line, in under 10 minutes.

On a machine with CUDA it runs, each row in its own subprocess under its own time cap (so that a row
that fails, hangs or breaks the CUDA context says why in its row and the others still run):

  gpu tests         the tests marked `gpu` (bf16 autocast step, SDPA flash vs math, CUDA vs CPU fbank, ...)
  step flash        the base model's pretraining step (benchmarks/mfu.py): bf16 autocast, SDPA flash
  step math         the same on SDPA's math path, for comparison
  fbank             maeast's fbank on CUDA against the same call on CPU: max difference, clips/s of each
  mae vs ssast      MAE-AST against the SSAST-style model (benchmarks/mae_vs_ssast.py): speed and memory ratios
  zero2             a DeepSpeed ZeRO-2 step on one GPU (maeast.engine, launch/ds_zero2.json)
  dali              DALI's GPU pipeline with our fbank on the device against the stream loader's fbank_on
                    device route: clips/s and host cores used (benchmarks/backends.py); where DALI is not
                    installed, one line saying so
  step flash/math compiled   the two step rows with torch.compile'd blocks (compilation apart)

Each step row gives step time, clips/s, peak memory and MFU against the bf16 matmul peak that the row
measures itself. The figures are written to benchmarks/results/gpu-check-<date>.json, only when CUDA ran.

Without CUDA (or with --dry) it is the dry mode: every row that can run on CPU runs at tiny sizes
(tiny preset, 2 clips of 2 s, fp32, one thread), the rest say "needs CUDA" in their row; nothing is written.

    python launch/gpu_check.py              # CUDA when there is one, else the dry mode
    python launch/gpu_check.py --dry        # the dry mode anywhere
    python launch/gpu_check.py --row fbank  # one row, its JSON on the last line (what each subprocess runs)
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402

try:
    from harness import Bench  # noqa: E402
    from mfu import features_for, matmul_peak, measure, real_waves  # noqa: E402
except ImportError as e:  # a bare GPU image without the wheels
    sys.exit(f"gpu-check: {e}; make the wheels where PyPI is reachable (make gpu-wheels), bring .gpu-wheels "
             f"along and run make gpu-check (or see README, 'Performance')")

BUDGET_S = 480  # the rows together: with the wheels' install and start-up, well inside a 10-minute call
RESULTS = ROOT / "benchmarks" / "results"
COLUMNS = ["check", "step ms", "clips/s", "peak MiB", "MFU", "result"]


@dataclass
class Sizes:
    """What a step row runs: the base model on 10 s clips on CUDA, the tiny one on 2 s clips dry."""

    preset: str
    batch: int
    seconds: float
    steps: int
    warmup: int
    peak_n: int  # the side of the matmul that measures the peak

    @classmethod
    def of(cls, dry: bool) -> Sizes:
        return cls("tiny", 2, 2.0, 2, 1, 1024) if dry else cls("base", 64, 10.0, 20, 3, 8192)


def device_of(dry: bool) -> torch.device:
    return torch.device("cpu" if dry else "cuda")


def quiet_bench() -> Bench:
    from rich.console import Console
    return Bench("gpu_check_row", console=Console(file=sys.stderr, width=120))


# --- the rows: each returns {"cells": {column: text}, "figures": {...}} ----------------------------

def step_row(attention: str, compiled: bool) -> Callable[[bool], dict]:
    def run(dry: bool) -> dict:
        s, device = Sizes.of(dry), device_of(dry)
        r = measure(quiet_bench(), s.preset, s.batch, s.seconds, device, attention, compiled, s.steps, s.warmup,
                    peak_n=s.peak_n)
        figures = {k: (v.median if hasattr(v, "median") else v) for k, v in r.items()}
        return {"cells": {"step ms": f"{r['step_s'].median * 1e3:.1f}", "clips/s": f"{r['clips_per_s']:,.1f}",
                          "peak MiB": f"{r['peak_mem_mb']:,.0f}" if r["peak_mem_mb"] is not None else "-",
                          "MFU": f"{r['mfu']:.1%}",
                          "result": f"{s.preset}, {s.batch} x {s.seconds:g} s, "
                                    f"{'bf16' if device.type == 'cuda' else 'fp32'}; peak "
                                    f"{r['peak_flops'] / 1e12:.3g} TFLOP/s (matmul); first step "
                                    f"{r['first_step_s']:.3g} s"},
                "figures": figures}
    return run


def fbank_row(dry: bool) -> dict:
    from maeast.features import fbank
    bench, seconds = quiet_bench(), 10.0
    waves = real_waves(4 if dry else 64, seconds)
    devices = ["cpu"] if dry else ["cpu", "cuda"]
    out = {d: fbank(waves.to(d)) for d in devices}  # also the warm-up
    timed = bench.measure({d: (lambda d=d: fbank(waves.to(d))) for d in devices}, repeats=3, warmup=1,
                          sync=None if dry else torch.cuda.synchronize, label="fbank")
    rate = {d: timed[d].rate(len(waves)).median for d in devices}
    figures = {f"{d}_clips_per_s": rate[d] for d in devices}
    if dry:
        text = f"CPU {rate['cpu']:,.0f} clips/s of {seconds:g} s; CUDA vs CPU max diff: needs CUDA"
    else:
        figures["max_abs_diff"] = float((out["cuda"].cpu() - out["cpu"]).abs().max())
        text = (f"max |CUDA - CPU| {figures['max_abs_diff']:.2e}; CUDA {rate['cuda']:,.0f}, CPU {rate['cpu']:,.0f} "
                f"clips/s of {seconds:g} s ({len(waves)} per call, host-to-device copy included)")
    return {"cells": {"clips/s": f"{rate[devices[-1]]:,.0f}", "result": text}, "figures": figures}


def mae_vs_ssast_row(dry: bool) -> dict:
    from mae_vs_ssast import SSASTStyle
    from mae_vs_ssast import step_flops as ssast_flops

    from maeast.features import get_config
    from maeast.model import MAEAST, make_config
    s, device = Sizes.of(dry), device_of(dry)
    batch = s.batch if dry else 16
    bench = quiet_bench()
    peak = matmul_peak(bench, device, s.peak_n)
    cfg = make_config(s.preset, layerdrop=0.0)
    tokens = cfg.tokens_for(get_config("mae_ast").num_frames(round(s.seconds * 16000)))
    results = {}
    for kind, model_fn, flops in (("mae", MAEAST, None), ("ssast", SSASTStyle, ssast_flops(cfg, "ssast", batch, tokens))):
        results[kind] = measure(bench, s.preset, batch, s.seconds, device, steps=s.steps, warmup=s.warmup, peak=peak,
                                model_fn=model_fn, flops=flops)
        gc.collect()  # the first model's memory is gone before the second's peak is taken
        if device.type == "cuda":
            torch.cuda.empty_cache()
    mae, ssast = results["mae"], results["ssast"]
    speedup = ssast["step_s"].median / mae["step_s"].median
    figures = {"speedup": speedup, "mae_step_s": mae["step_s"].median, "ssast_step_s": ssast["step_s"].median,
               "mae_mfu": mae["mfu"], "ssast_mfu": ssast["mfu"]}
    text = f"MAE-AST {speedup:.2f}x faster"
    if mae["peak_mem_mb"] is not None:
        figures.update(memory_ratio=ssast["peak_mem_mb"] / mae["peak_mem_mb"], mae_peak_mem_mb=mae["peak_mem_mb"],
                       ssast_peak_mem_mb=ssast["peak_mem_mb"])
        text += f", SSAST-style uses {figures['memory_ratio']:.2f}x the memory"
    else:
        text += "; memory ratio: needs CUDA"
    return {"cells": {"step ms": f"{mae['step_s'].median * 1e3:.1f}", "clips/s": f"{mae['clips_per_s']:,.1f}",
                      "peak MiB": f"{mae['peak_mem_mb']:,.0f}" if mae["peak_mem_mb"] is not None else "-",
                      "MFU": f"{mae['mfu']:.1%}",
                      "result": f"{text} ({s.preset}, {batch} x {s.seconds:g} s; paper: 3x faster, 2x less memory)"},
            "figures": figures}


def zero2_row(dry: bool) -> dict:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return {"status": "skipped", "cells": {"result": "deepspeed not installed (make gpu-wheels; README "
                                                          "'Performance' gives the install line)"}, "figures": {}}
    from maeast.train.config import OptimConfig, ScheduleConfig
    from maeast.train.ds_config import deepspeed_config, read_zero_json
    from maeast.train.engine import Engine, init_distributed
    from maeast.model import MAEAST, make_config
    s, device = Sizes.of(dry), device_of(dry)
    batch = s.batch if dry else 16
    init_distributed()
    ds_config = deepspeed_config(OptimConfig(global_batch=batch), batch, 1,
                                 read_zero_json(ROOT / "launch" / "ds_zero2.json"), device.type == "cuda")
    engine = Engine(MAEAST(make_config(s.preset, layerdrop=0.0)), OptimConfig(global_batch=batch),
                    ScheduleConfig(steps=100, warmup_steps=1), ds_config)
    features = features_for(batch, s.seconds, engine.device)
    gen = torch.Generator(engine.device).manual_seed(0)
    losses = []

    def step():
        loss = engine.forward(features, None, gen).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))

    timed = quiet_bench().measure({"step": step}, repeats=s.steps, warmup=s.warmup,
                                  sync=torch.cuda.synchronize if device.type == "cuda" else None, label="zero2")
    step_s = timed["step"].seconds.median
    ok = all(map(math.isfinite, losses)) and engine.global_steps == s.steps + s.warmup
    return {"status": "ok" if ok else "failed",
            "cells": {"step ms": f"{step_s * 1e3:.1f}", "clips/s": f"{batch / step_s:,.1f}",
                      "result": f"ZeRO stage {ds_config['zero_optimization']['stage']}, "
                                f"{'bf16' if ds_config['bf16']['enabled'] else 'fp32'} on {engine.device.type}, "
                                f"{engine.global_steps} optimizer steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}"},
            "figures": {"step_s": step_s, "optimizer_steps": engine.global_steps, "losses": losses}}


def dali_row(dry: bool) -> dict:
    """DALI's GPU pipeline (reader, decoder, crop; our fbank on the device) against the stream loader's GPU route
    (fbank_on device): clips/s and the host cores each keeps busy, on the same shards."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return {"status": "skipped", "cells": {"result": "nvidia-dali not installed here: `make gpu-wheels` writes its "
                                                          "wheel in parts (.gpu-dali/), README 'Performance' brings them"},
                "figures": {}}
    import tempfile

    from backends import route_epoch, route_shards
    clips, seconds, batch = (16, 2.0, 4) if dry else (512, 10.0, 64)
    device = "cpu" if dry else "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        shards = route_shards(Path(tmp), clips, seconds)
        r = {route: route_epoch(shards, route, batch, seconds, device) for route in ("dali", "device")}
    dali, stream = r["dali"], r["device"]
    text = (f"DALI {dali['clips_per_s']:,.0f} clips/s on {dali['host_cores']:.1f} host cores; stream + fbank_on "
            f"device {stream['clips_per_s']:,.0f} clips/s on {stream['host_cores']:.1f} ({batch} x {seconds:g} s, "
            f"{'CPU mode, fbank on CPU' if dry else 'GPU pipeline, fbank on the GPU'}, 2 threads / workers)")
    return {"cells": {"clips/s": f"{dali['clips_per_s']:,.0f}", "result": text},
            "figures": {"dali": dali, "stream_fbank_on_device": stream}}


def gpu_tests_row(dry: bool) -> dict:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "pytest.mark.gpu" in p.read_text())
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files],
                          cwd=ROOT, capture_output=True, text=True, env=row_env())
    summary = next((line for line in reversed(proc.stdout.splitlines()) if re.search(r"\d+ (passed|failed|skipped|error)", line)),
                   proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-200:])
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    status = "ok" if proc.returncode == 0 else "failed"
    if proc.returncode != 0:
        failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        summary += "; " + "; ".join(failed[:3])
    return {"status": status, "cells": {"result": f"{summary.strip('= ')} ({len(files)} files)"},
            "figures": {"counts": counts, "files": files, "returncode": proc.returncode}}


@dataclass
class Row:
    name: str
    run: Callable[[bool], dict]
    cap_s: int  # on CUDA; the dry mode runs at tiny sizes
    dry_ok: str | None = None  # None: runs in the dry mode; else why it does not


ROWS = [
    Row("gpu tests", gpu_tests_row, 120),
    Row("step flash", step_row("flash", False), 75, "needs CUDA (SDPA flash attention is a CUDA kernel)"),
    Row("step math", step_row("math", False), 75),
    Row("fbank", fbank_row, 45),
    Row("mae vs ssast", mae_vs_ssast_row, 90),
    Row("zero2", zero2_row, 90),
    Row("dali", dali_row, 120),
    Row("step flash compiled", step_row("flash", True), 150, "needs CUDA"),
    Row("step math compiled", step_row("math", True), 150,
        "needs CUDA (left out of the dry mode: inductor's C++ build on CPU takes minutes)"),
]


# --- running them --------------------------------------------------------------------------------

def row_env() -> dict:
    """Each row is a one-process world of its own: an inherited MASTER_PORT (a caller's own process group
    holds it) would make its store fail to listen."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    recorded = ROOT / ".gpu-wheels" / "test-audio"  # the tests' synthesizer outputs, recorded by make gpu-wheels
    if "MAEAST_TEST_AUDIO" not in env and recorded.is_dir():
        env["MAEAST_TEST_AUDIO"] = str(recorded)  # a bare GPU image has no espeak-ng or sox (tests/conftest.py)
    return env


def run_here(row: Row, dry: bool) -> dict:
    """The row in this process; dry on one CPU thread (tiny sizes gain nothing from more, and a busy
    machine's load stalls a team of threads)."""
    threads = torch.get_num_threads()
    if dry:
        torch.set_num_threads(1)
    try:
        return row.run(dry)
    finally:
        torch.set_num_threads(threads)


def run_row(row: Row, dry: bool, cap_s: float, in_process: bool = False) -> dict:
    """One row's result: {"status", "cells", "figures", "seconds"}; never raises."""
    started = time.perf_counter()
    if dry and row.dry_ok:
        return {"status": "needs CUDA", "cells": {"result": row.dry_ok}, "figures": {}, "seconds": 0.0}
    if in_process:
        result = {"status": "ok", **run_here(row, dry)}
    else:
        cmd = [sys.executable, __file__, "--row", row.name] + (["--dry"] if dry else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cap_s, env=row_env(), cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"status": "timed out", "cells": {"result": f"timed out after {cap_s:.0f} s (its cap)"},
                    "figures": {}, "seconds": time.perf_counter() - started}
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            return {"status": "failed", "cells": {"result": f"failed: {why[:160]}"}, "figures": {},
                    "seconds": time.perf_counter() - started}
        result = json.loads(lines[-1])
    result.setdefault("status", "ok")
    result["seconds"] = time.perf_counter() - started
    return result


def check(dry: bool, budget_s: float = BUDGET_S, rows: list[Row] = ROWS, in_process: bool = False,
          write: bool = True) -> dict:
    bench = Bench("gpu_check", repeats=1, warmup=0)
    started = time.perf_counter()
    device = "CPU (dry mode)" if dry else torch.cuda.get_device_name()
    results = {}
    for row in rows:
        left = budget_s - (time.perf_counter() - started)
        if left < 10 and not (dry and row.dry_ok):
            results[row.name] = {"status": "not run", "cells": {"result": f"not run: the {budget_s:.0f} s budget "
                                                                          f"of the whole check was spent"},
                                 "figures": {}, "seconds": 0.0}
            continue
        with bench.status(f"{row.name} (at most {min(row.cap_s, left):.0f} s)"):
            r = results[row.name] = run_row(row, dry, min(row.cap_s, left), in_process)
        print(f"gpu-check: {row.name}: {r['status']} in {r['seconds']:.0f} s: {r['cells'].get('result', '')}",
              file=sys.stderr, flush=True)  # as it goes, should the call that runs the check be cut short
    bench.table(f"make gpu-check on {device}, torch {torch.__version__}"
                + (" (no CUDA here: tiny sizes, CPU; the rest need CUDA)" if dry else ""),
                COLUMNS, [[name] + [r["cells"].get(c, "-") for c in COLUMNS[1:-1]]
                          + [r["cells"].get("result", "") if r["status"] in ("ok", "needs CUDA")
                             else f"{r['status'].upper()}: {r['cells'].get('result', '')}"]
                          for name, r in results.items()], left=("check", "result"))
    bench.record("device", device)
    bench.record("dry", dry)
    bench.record("torch", torch.__version__)
    bench.record("seconds", round(time.perf_counter() - started, 1))
    bench.record("rows", {name: {"status": r["status"], "row_s": round(r["seconds"], 1), **r["figures"]}
                          for name, r in results.items()})
    report = bench.finish(own_load=1.0)
    if not dry and write:
        print(f"gpu-check: recorded in {record(report)}", file=sys.stderr)
    return report


def record(report: dict, results: Path = RESULTS) -> Path:
    """The report of a run on CUDA as results/gpu-check-<date>.json (commit it: cores_per_gpu reads it)."""
    from maeast.files import write_json
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"gpu-check-{datetime.date.today().isoformat()}.json"
    write_json(path, report)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="the CPU dry mode, even where CUDA is present")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole check ({BUDGET_S})")
    args = parser.parse_args(argv)
    dry = args.dry or not torch.cuda.is_available()
    if args.row:
        row = next(r for r in ROWS if r.name == args.row)
        print(json.dumps(run_here(row, dry), default=float), flush=True)
        return 0
    report = check(dry, args.budget)
    return 0 if all(r["status"] in ("ok", "needs CUDA", "skipped") for r in report["rows"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
