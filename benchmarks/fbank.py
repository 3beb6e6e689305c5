"""Fbank throughput: clips/s of 10 s clips, ours against torchaudio's Kaldi fbank, on 1 and 2 threads.

Synthesizes real 10 s clips (espeak-ng speech, sox plucked-string chords), then times
maeast.features.fbank batched and one clip at a time, and torchaudio.compliance.kaldi.fbank (one
clip at a time: it takes one) where torchaudio imports, with the mae_ast preset's options; on a
CUDA machine, ours on the GPU too. Also reports the largest difference from torchaudio on these clips.
Prints a table, then one JSON line with the figures.

    python benchmarks/fbank.py [--clips 8] [--torchaudio /tmp/ta]

--torchaudio (or $MAEAST_TORCHAUDIO) names a scratch torchaudio install with its .so files set aside,
as tests/fixtures/make_fbank_fixtures.py describes, for machines where torchaudio does not import.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import soxr
import torch
from rich.console import Console
from rich.table import Table

from maeast.features import fbank, get_config

SECONDS = 10.0
TEXT = ("the quick brown fox jumps over the lazy dog while seven wizards pack boxes of liquor jugs and "
        "a stitch in time saves nine as she sells sea shells by the sea shore")
CHORDS = [("C3", "E3", "G3"), ("A2", "C3", "E3"), ("F2", "A2", "C3"), ("G2", "B2", "D3")]


def make_clips(count: int, tmp: Path) -> torch.Tensor:
    """[count, 160000]: alternately espeak-ng speech and sox plucked chords, 10 s at 16 kHz."""
    rows, n = [], int(SECONDS * 16000)
    for i in range(count):
        path = tmp / f"c{i}.wav"
        if i % 2 == 0:
            subprocess.run(["espeak-ng", "-s", str(120 + 10 * i), "-w", str(path), TEXT], check=True,
                           capture_output=True)
        else:
            synth = [x for note in CHORDS[i // 2 % 4] for x in ("pluck", note)]
            subprocess.run(["sox", "-n", "-r", "16000", str(path), "synth", str(SECONDS), *synth], check=True,
                           capture_output=True)
        wav, rate = sf.read(path, dtype="float32")
        wav = wav.mean(axis=1) if wav.ndim == 2 else wav  # sox puts each chord note on its own channel
        wav = torch.from_numpy(soxr.resample(wav, rate, 16000) if rate != 16000 else wav)
        rows.append(torch.nn.functional.pad(wav, (0, max(0, n - len(wav))))[:n])
    return torch.stack(rows)


def import_kaldi(scratch: str | None):
    if scratch and scratch not in sys.path:
        sys.path.insert(0, scratch)
    try:
        import torchaudio
        import torchaudio.compliance.kaldi as kaldi
    except Exception:  # ImportError, or OSError from a compiled extension built for another torch
        return None, None
    return kaldi, torchaudio.__version__


def clips_per_second(fns: dict, clips: dict, device: str = "cpu", budget: float = 2.0) -> dict[str, float]:
    """Best rate of each fn (processing clips[name] clips), timed in turns so that load that comes
    and goes on a shared machine falls on all of them alike."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = {name: float("inf") for name in fns}
    spent, rounds = 0.0, 0
    for fn in fns.values():  # warm up: caches, tables, lazy initialization
        fn()
    sync()
    while spent < budget or rounds < 3:
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            took = time.perf_counter() - start
            best[name], spent = min(best[name], took), spent + took
        rounds += 1
    return {name: clips[name] / best[name] for name in fns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--torchaudio", default=os.environ.get("MAEAST_TORCHAUDIO"),
                        help="scratch torchaudio install to import from")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp, console.status("synthesizing clips"):
        batch = make_clips(args.clips, Path(tmp))
    kaldi, ta_version = import_kaldi(args.torchaudio)
    n = args.clips
    call = dict(sample_frequency=16000, use_energy=False, num_mel_bins=get_config("mae_ast").n_mels)
    rows, figures = [], {"clip_seconds": SECONDS, "clips": n, "torch": torch.__version__,
                         "torchaudio": ta_version, "cpu_cores": os.cpu_count(),
                         "load_average_1min": os.getloadavg()[0], "threads": {}}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        fns = {"ours_batched": lambda: fbank(batch), "ours_one_by_one": lambda: [fbank(row) for row in batch]}
        if kaldi is not None:
            fns["torchaudio_one_by_one"] = lambda: [kaldi.fbank(r[None], **call) for r in batch]
        rates = clips_per_second(fns, dict.fromkeys(fns, n))
        figures["threads"][threads] = rates
        rows += [(f"cpu, {threads} thread{'s' * (threads > 1)}", name, rate) for name, rate in rates.items()]
    if torch.cuda.is_available():
        gpu = batch.cuda()
        big = gpu.repeat(8, 1)  # 8x the clips in one batch
        fns = {"ours_batched": lambda: fbank(gpu), f"ours_batched_{8 * n}": lambda: fbank(big),
               "ours_one_by_one": lambda: [fbank(row) for row in gpu]}
        rates = clips_per_second(fns, {**dict.fromkeys(fns, n), f"ours_batched_{8 * n}": 8 * n}, "cuda")
        figures["cuda"] = {"device": torch.cuda.get_device_name(), **rates}
        rows += [("cuda", name, rate) for name, rate in rates.items()]
    if kaldi is not None:
        mae = fbank(batch)
        ssast = fbank(batch, preset="ssast", normalize=False)
        figures["max_abs_diff"] = {
            "mae_ast": max((mae[i] - kaldi.fbank(r[None], **call)).abs().max().item() for i, r in enumerate(batch)),
            "ssast": max((ssast[i] - kaldi.fbank((r - r.mean())[None], htk_compat=True, window_type="hanning",
                                                   dither=0.0, **call)).abs().max().item()
                         for i, r in enumerate(batch)),
        }

    table = Table(title=f"fbank (mae_ast preset), {n} clips of {SECONDS:g} s, torch {torch.__version__}, "
                        f"torchaudio {ta_version or 'not importable'}")
    for column in ("device", "implementation", "clips/s", "x realtime"):
        table.add_column(column, justify="left" if column in ("device", "implementation") else "right")
    for device, name, rate in rows:
        table.add_row(device, name.replace("_", " "), f"{rate:,.0f}", f"{rate * SECONDS:,.0f}")
    console.print(table)
    if figures["load_average_1min"] > 0.5 * os.cpu_count():
        console.print(f"[yellow]note:[/] load average {figures['load_average_1min']:.1f} on {os.cpu_count()} cores "
                      f"when this started: other work shares these CPUs, so the figures run low")
    if "max_abs_diff" in figures:
        console.print(f"max |ours - torchaudio| on these clips: {figures['max_abs_diff']}", highlight=False)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
