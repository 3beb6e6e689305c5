"""What SSAST's overlapping tokens cost: tokens per 10 s clip and the encoder's training step time.

data.input ssast (maeast.finetune.inputs) feeds the encoder SSAST's fixed-length fbank (1024 frames for a
10 s AudioSet clip, the padding seen) cut into overlapping tokens: 16x16 patches every 10 frames and 10 bins
(src/finetune/audioset/run_as.sh), 2-frame tokens every frame (src/finetune/speechcommands_v2_35/run_sc.sh).
data.input mae_ast feeds the clip's own 998 frames, tokens that never overlap (stride = size). For each
token shape and stride: the tokens of a 10 s clip, and a forward and backward of the encoder (mean-pooled
tokens summed to a loss, no optimizer step) on a batch of real 10 s clips (espeak-ng speech and a sox
pluck), fbank'd by each pipeline's own preset. The cases take turns step by step (benchmarks/harness.py);
"step s" is the median, min-max beside it. Timings on a shared CPU are noisy: the table says the load.

    python benchmarks/ssast_overlap.py                  # base encoder (768 wide, 12 layers), batch 2, CPU:
                                                        # ~17 min on 2 busy cores (16 steps of 25-90 s)
    python benchmarks/ssast_overlap.py --preset small   # 256 wide, 4 layers: seconds
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import torch
from harness import Bench, add_arguments, spread

from maeast.audio import load_clip
from maeast.features import featurize, get_config
from maeast.model import make_config
from maeast.model.encoder import Encoder

CASES = [  # name, (patch_time, patch_freq), (stride_time, stride_freq) or None, fbank preset
    ("patch 16x16 stride 16 (mae_ast)", (16, 16), None, "mae_ast"),
    ("patch 16x16 stride 10 (ssast)", (16, 16), (10, 10), "ssast_audioset"),
    ("frame 2x128 stride 2 (mae_ast)", (2, 128), None, "mae_ast"),
    ("frame 2x128 stride 1 (ssast)", (2, 128), (1, 128), "ssast_audioset"),
]


def real_clips(batch: int, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` real 10 s clips at 16 kHz (speech and a plucked chord, in turn), [B, 160000] with lengths."""
    speech, pluck = folder / "speech.wav", folder / "pluck.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "the quick brown fox jumps over the lazy dog " * 3], check=True)
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(pluck), "synth", "10", "pluck", "C4", "pluck", "E4"],
                   check=True, capture_output=True)
    clips = []
    for i in range(batch):
        w = torch.from_numpy(load_clip(speech if i % 2 == 0 else pluck, 16000).waveform).float()[:160000]
        clips.append(torch.nn.functional.pad(w, (0, 160000 - len(w))))
    return torch.stack(clips), torch.full((batch,), 160000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", help="model preset (base: 768 wide, 12 layers)")
    parser.add_argument("--batch", type=int, default=2, help="clips per step (default 2)")
    add_arguments(parser, repeats=3, warmup=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    bench = Bench("ssast_overlap", repeats=args.repeats, warmup=args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        wave, lengths = real_clips(args.batch, Path(tmp))
    steps, rows = {}, {}
    for name, (pt, pf), stride, preset in CASES:
        st, sf = stride or (None, None)
        cfg = make_config(args.preset, patch_time=pt, patch_freq=pf, stride_time=st, stride_freq=sf,
                          input_norm="none" if stride else "batchnorm", layerdrop=0.0)
        features, _ = featurize(wave, lengths, preset, 16000)  # [B, T, F]: 998 frames, or 1024 (ssast)
        encoder = Encoder(cfg).train()

        def step(encoder=encoder, features=features):
            encoder.zero_grad(set_to_none=True)
            encoder(features).x.mean(dim=1).sum().backward()  # [B, N, D] -> pooled -> a scalar
        steps[name] = step
        rows[name] = (features.shape[1], cfg.tokens_for(features.shape[1]))
    results = bench.measure(steps, label=f"{args.preset} encoder, batch {args.batch}")
    table = []
    for name, _, stride, preset in CASES:
        frames, tokens = rows[name]
        seconds = results[name].seconds
        key = name.split(" (")[0].replace(" ", "_")
        bench.record(f"{key}.frames", frames)
        bench.record(f"{key}.tokens_per_10s_clip", tokens)
        bench.record(f"{key}.step_s", seconds)
        table.append([name, get_config(preset).name, frames, tokens, spread(seconds, ".2f")])
    for shape in ("patch", "frame"):
        plain, overlap = [r for r in table if r[0].startswith(shape)]
        bench.record(f"{shape}_token_ratio", overlap[3] / plain[3])
        bench.record(f"{shape}_step_ratio", results[overlap[0]].seconds.median / results[plain[0]].seconds.median)
    bench.table(f"10 s clips: tokens and a forward+backward of the {args.preset} encoder, batch {args.batch}, CPU",
                ["tokens", "fbank", "frames", "tokens / clip", "step s"], table)
    bench.note("step s: median (min-max) of the timed steps; a CPU shared with other work: noisy")
    bench.finish(own_load=float(torch.get_num_threads()))


if __name__ == "__main__":
    main()
