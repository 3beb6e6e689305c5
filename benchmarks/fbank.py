"""Fbank throughput: clips/s of 10 s clips, ours against torchaudio's Kaldi fbank, on 1 and 2 threads.

Synthesizes real 10 s clips (espeak-ng speech, sox plucked-string chords), then times
maeast.features.fbank batched and one clip at a time, and torchaudio.compliance.kaldi.fbank (one
clip at a time: it takes one) where torchaudio imports, with the mae_ast preset's options; on a
CUDA machine, ours on the GPU too. Each implementation gets --warmup untimed calls, then --repeats
timed ones, the implementations taking turns (benchmarks/harness.py); a figure is the median call's
clips/s, with min-max beside it. Also reports the largest difference from torchaudio on these clips.
Prints a table, then one JSON line with the figures.

    python benchmarks/fbank.py [--clips 8] [--torchaudio /tmp/ta] [--repeats 10] [--warmup 1]

--torchaudio (or $MAEAST_TORCHAUDIO) names a scratch torchaudio install with its .so files set aside,
as tests/fixtures/make_fbank_fixtures.py describes, for machines where torchaudio does not import.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile as sf
import soxr
import torch
from harness import Bench, add_arguments, spread

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--torchaudio", default=os.environ.get("MAEAST_TORCHAUDIO"),
                        help="scratch torchaudio install to import from")
    add_arguments(parser, repeats=10, warmup=1)
    args = parser.parse_args()
    bench = Bench("fbank", args.repeats, args.warmup)
    with tempfile.TemporaryDirectory() as tmp, bench.status("synthesizing clips"):
        batch = make_clips(args.clips, Path(tmp))
    kaldi, ta_version = import_kaldi(args.torchaudio)
    n = args.clips
    call = dict(sample_frequency=16000, use_energy=False, num_mel_bins=get_config("mae_ast").n_mels)
    bench.update({"clip_seconds": SECONDS, "clips": n, "torch": torch.__version__, "torchaudio": ta_version})
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        fns = {"ours_batched": lambda: fbank(batch), "ours_one_by_one": lambda: [fbank(row) for row in batch]}
        if kaldi is not None:
            fns["torchaudio_one_by_one"] = lambda: [kaldi.fbank(r[None], **call) for r in batch]
        results = bench.measure(fns, label=f"{threads} thread(s)")
        for name, r in results.items():
            bench.record(f"threads.{threads}.{name}", r.rate(n), digits=1)
            rows.append((f"cpu, {threads} thread{'s' * (threads > 1)}", name, r.rate(n)))
    if torch.cuda.is_available():
        gpu = batch.cuda()
        big = gpu.repeat(8, 1)  # 8x the clips in one batch
        fns = {"ours_batched": lambda: fbank(gpu), f"ours_batched_{8 * n}": lambda: fbank(big),
               "ours_one_by_one": lambda: [fbank(row) for row in gpu]}
        results = bench.measure(fns, sync=torch.cuda.synchronize, label="cuda")
        bench.record("cuda.device", torch.cuda.get_device_name())
        for name, r in results.items():
            rate = r.rate(8 * n if name == f"ours_batched_{8 * n}" else n)
            bench.record(f"cuda.{name}", rate, digits=1)
            rows.append(("cuda", name, rate))
    if kaldi is not None:
        mae = fbank(batch)
        ssast = fbank(batch, preset="ssast", normalize=False)
        bench.record("max_abs_diff", {
            "mae_ast": max((mae[i] - kaldi.fbank(r[None], **call)).abs().max().item() for i, r in enumerate(batch)),
            "ssast": max((ssast[i] - kaldi.fbank((r - r.mean())[None], htk_compat=True, window_type="hanning",
                                                   dither=0.0, **call)).abs().max().item()
                         for i, r in enumerate(batch)),
        })

    bench.table(f"fbank (mae_ast preset), {n} clips of {SECONDS:g} s, torch {torch.__version__}, torchaudio "
                f"{ta_version or 'not importable'}; median (min-max) of {args.repeats} calls",
                ["device", "implementation", "clips/s", "x realtime"],
                [(device, name.replace("_", " "), spread(rate, ",.0f"), f"{rate.median * SECONDS:,.0f}")
                 for device, name, rate in rows], left=("device", "implementation"))
    if "max_abs_diff" in bench.figures:
        bench.note(f"max |ours - torchaudio| on these clips: {bench.figures['max_abs_diff']}")
    bench.finish(own_load=2.0)


if __name__ == "__main__":
    main()
