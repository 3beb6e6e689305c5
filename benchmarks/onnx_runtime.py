"""ONNX Runtime against PyTorch on CPU: one 10 s clip through an encoder (or classifier) exported by
`maeast export onnx`, batch 1, the same fbank input; seconds per clip and the speed-up, and the largest
difference between the two outputs.

With --checkpoint it exports that model (RUN/encoder, or a classifier with --classifier); without, a
randomly initialized encoder of --preset (small_frame: the demo's) exported as the engine exports one.
The input is the fbank of real audio: espeak-ng speech repeated to 10 s. Both sides get --threads intra-op
threads, --warmup untimed runs and --repeats timed runs, taking turns (benchmarks/harness.py).

    python benchmarks/onnx_runtime.py [--checkpoint runs/demo_pretrain/encoder] [--preset small_frame] [--threads 1]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from harness import Bench, add_arguments, spread


from maeast.artifacts import features_of, features_record, load_classifier, read_encoder, write_encoder
from maeast.audio import load_clip
from maeast.features import fbank, get_config
from maeast.inference.onnx import export_onnx
from maeast.model import build_model


def random_export(preset: str, folder: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(preset)
    meta = {"model": model.cfg.to_dict(), "features": features_record(get_config("mae_ast")),
            "pretraining": {"init": "random", "preset": preset}}
    folder.mkdir(parents=True)
    write_encoder(model.state_dict(), meta, folder)
    return folder


def speech(folder: Path, seconds: float) -> torch.Tensor:
    wav = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "the quick brown fox jumps over the lazy dog while five boxing "
                    "wizards jump quickly and a dozen liquor jugs stand by the door"], check=True)
    x = torch.from_numpy(load_clip(wav, 16000).waveform)
    return x.repeat(int(seconds * 16000) // len(x) + 1)[: int(seconds * 16000)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a saved model; default: a random --preset encoder")
    parser.add_argument("--classifier", action="store_true", help="--checkpoint is a fine-tuned classifier")
    parser.add_argument("--preset", default="small_frame")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    add_arguments(parser, repeats=10, warmup=2)
    args = parser.parse_args()
    bench = Bench("onnx", repeats=args.repeats, warmup=args.warmup)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint or random_export(args.preset, tmp / "encoder")
        export_onnx(checkpoint, tmp / "model.onnx", args.classifier)
        model, info = (load_classifier if args.classifier else read_encoder)(checkpoint)
        x = fbank(speech(tmp, args.seconds), 16000, features_of(info))[None]  # [1, T, F]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = onnxruntime.InferenceSession(str(tmp / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def run_torch():
        with torch.no_grad():
            out = model(x)
        return out if args.classifier else out.x

    def run_onnx():
        return session.run(None, {"fbank": x.numpy()})[0]

    results = bench.measure({"torch": run_torch, "onnxruntime": run_onnx}, label=f"{args.seconds:g} s clip")
    diff = float(np.abs(run_onnx() - run_torch().numpy()).max())
    t, o = results["torch"].seconds, results["onnxruntime"].seconds
    bench.table(f"one {args.seconds:g} s clip ({x.shape[1]} frames), {args.threads} thread(s), CPU",
                ["runtime", "seconds per clip", "speed-up"],
                [["torch", spread(t, ".4f"), "1.00x"], ["onnxruntime", spread(o, ".4f"), f"{t.median / o.median:.2f}x"]])
    bench.update({"torch_s": t, "onnxruntime_s": o})
    bench.record("speedup", t.median / o.median, 3)
    bench.record("max_abs_diff", diff, None)
    bench.update({"frames": int(x.shape[1]), "threads": args.threads,
                  "model": str(args.checkpoint) if args.checkpoint else f"random {args.preset}"})
    bench.finish(own_load=args.threads)


if __name__ == "__main__":
    main()
