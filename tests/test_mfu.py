"""maeast.model.flops, the FLOPs count of benchmarks/mfu.py and of the training log's MFU: against a hand
count for the tiny preset, and against torch's own FLOP counter on the tiny model's forward and backward;
the per-micro-batch counts (pretrain_flops, classifier_flops) and maeast.train.mfu's peak."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from mfu import Step, features_for, matmul_peak, measure, real_waves  # noqa: E402

from maeast.configio import load_yaml  # noqa: E402
from maeast.pretrain.config import build_config  # noqa: E402
from maeast.model import MAEAST, Classifier, Encoder, Head, make_config  # noqa: E402
from maeast.model.flops import (classifier_flops, encoder_parts, forward_flops, layer_flops,  # noqa: E402
                                pretrain_flops, step_flops)
from maeast.train.mfu import mfu, peak_flops  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "maeast" / "configs" / "pretrain_tiny.yaml"


@pytest.fixture(scope="module")
def tiny():
    """The model config of maeast/configs/pretrain_tiny.yaml and its clips' frames (2 s crops)."""
    cfg = build_config(load_yaml(CONFIG))
    assert cfg.data.max_seconds == 2.0
    return cfg.model, 1 + (2 * 16000 - 400) // 160  # Kaldi frames of 2 s: 198


def test_hand_count_of_the_tiny_preset(tiny):
    cfg, frames = tiny
    # tiny: D = 64, 2 encoder layers, 1 decoder layer at 64, FFN 128, 16 x 16 patches of 128 bins.
    # 198 frames -> 12 rows x 8 columns = N = 96 tokens; K = round(0.25 * 96) = 24 visible, M = 72 masked.
    assert (cfg.dim, cfg.depth, cfg.decoder_depth, cfg.ffn_dim, cfg.patch_dim) == (64, 2, 1, 128, 256)
    assert cfg.tokens_for(frames) == 96
    projection = 2 * 96 * 256 * 64  # every token: 3,145,728
    per_token = 2 * (4 * 64 * 64 + 2 * 64 * 128)  # q, k, v, out and the FFN: 65,536 per token
    encoder = 2 * (24 * per_token + 4 * 24 * 24 * 64)  # 2 x (1,572,864 + 147,456) = 3,440,640
    decoder = 96 * per_token + 4 * 96 * 96 * 64  # 6,291,456 + 2,359,296 = 8,650,752
    heads = 2 * 2 * 72 * 64 * 256  # recon and InfoNCE heads on the masked: 4,718,592
    infonce = 2 * 72 * 72 * 256  # logits of each masked token against every masked target: 2,654,208
    forward = projection + encoder + decoder + heads + infonce
    assert forward == 22_609_920
    assert sum(forward_flops(cfg, frames).values()) == forward
    assert forward_flops(cfg, frames)["encoder"] == 2 * layer_flops(24, 64, 128) == encoder
    assert step_flops(cfg, 8, frames) == 3 * 8 * forward  # the preset's batch of 8: 542,638,080


def test_count_matches_torch_flop_counter(tiny):
    """The forward count is exactly what autograd's matmuls do; backward is 2 x forward less the two
    products whose other input needs no gradient (the features under the projection, InfoNCE's targets)."""
    cfg, frames = tiny
    model = MAEAST(cfg).train()
    features = features_for(2, 2.0, torch.device("cpu"))
    assert features.shape[1] == frames
    with FlopCounterMode(display=False) as forward:
        out = model(features, generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as backward:
        out.loss.backward()
    parts = forward_flops(cfg, frames)
    assert forward.get_total_flops() == 2 * sum(parts.values())
    assert backward.get_total_flops() == 2 * 2 * sum(parts.values()) - 2 * (parts["projection"] + parts["infonce"])


def test_decoder_projection_counted_when_widths_differ():
    cfg = make_config("tiny", decoder_dim=32, decoder_heads=4)
    parts = forward_flops(cfg, 198)
    assert parts["decoder_projection"] == 2 * 24 * 64 * 32
    assert parts["decoder"] == layer_flops(96, 32, 128)


def test_real_waves_are_audio_not_silence():
    waves = real_waves(3, 1.5)
    assert waves.shape == (3, 24000) and waves.abs().max() <= 1.0
    assert waves.std(dim=1).min() > 0.01  # every row carries signal
    assert not torch.equal(waves[0], waves[2])  # rows are shifted


def test_measure_on_cpu_reports_mfu_against_its_own_peak():
    from harness import Bench

    bench = Bench("test", repeats=1, warmup=0)
    peak = matmul_peak(bench, torch.device("cpu"), 256, repeats=1)
    r = measure(bench, "tiny", 2, 1.0, torch.device("cpu"), steps=1, warmup=0, peak=peak)
    assert r["peak_flops"] == peak > 0
    assert r["flops"] == step_flops(make_config("tiny"), 2, 98)
    assert 0 < r["mfu"] == pytest.approx(r["achieved_flops"] / peak)
    assert r["clips_per_s"] == pytest.approx(2 / r["step_s"].median)
    assert r["peak_mem_mb"] is None  # CUDA only


def test_step_updates_the_weights():
    model = MAEAST(make_config("tiny"))
    before = [p.detach().clone() for p in model.parameters()]
    step = Step(model, features_for(2, 1.0, torch.device("cpu")), attention="math")
    assert step() == 2
    assert all(p.grad is None for p in model.parameters())  # zeroed after the update
    assert sum(not torch.equal(a, p) for a, p in zip(before, model.parameters())) > len(before) // 2


def test_count_matches_torch_flop_counter_on_frame_tokens():
    """Frame tokens of 2 s: N = 99, not a multiple of 4, so K = floor(0.25 N) = 24 (the model's), not 25."""
    cfg = make_config("tiny", patch_time=2, patch_freq=128)
    model = MAEAST(cfg).train()
    features = features_for(2, 2.0, torch.device("cpu"))
    with FlopCounterMode(display=False) as forward:
        model(features, generator=torch.Generator().manual_seed(0))
    assert cfg.tokens_for(features.shape[1]) == 99
    assert forward.get_total_flops() == 2 * sum(forward_flops(cfg, features.shape[1]).values())


def test_micro_batch_counts_agree_with_step_flops(tiny):
    cfg, frames = tiny
    assert pretrain_flops(cfg, [frames] * 8) == step_flops(cfg, 8, frames) == 542_638_080
    assert pretrain_flops(cfg, torch.full((8,), frames)) == step_flops(cfg, 8, frames)
    assert classifier_flops(cfg, [frames] * 8) == 3 * 8 * sum(encoder_parts(cfg, cfg.tokens_for(frames)).values())
    # each clip counts at its own length: the padding of a batch is not counted
    lengths = torch.tensor([frames, 120, 40, 15])  # 96, 56, 16 and 0 tokens
    assert pretrain_flops(cfg, lengths) == sum(step_flops(cfg, 1, f) for f in (frames, 120, 40))
    assert classifier_flops(cfg, lengths) == sum(classifier_flops(cfg, [f]) for f in (frames, 120, 40))
    assert pretrain_flops(cfg, [15]) == classifier_flops(cfg, [15]) == 0  # shorter than a token


def test_classifier_count_matches_torch_flop_counter(tiny):
    """Full fine-tuning's forward is the encoder on every token plus the head's Linear, which the count
    leaves out (here 2 x 64 x 10 per clip, under 0.01% of the rest)."""
    cfg, frames = tiny
    classes = 10
    model = Classifier(Encoder(cfg), Head(1, cfg.dim, classes, norm="none"), weighted=False).train()
    features = features_for(2, 2.0, torch.device("cpu"))
    with FlopCounterMode(display=False) as forward:
        model(features, generator=torch.Generator().manual_seed(0))
    head = 2 * 2 * cfg.dim * classes
    assert 3 * (forward.get_total_flops() - head) == classifier_flops(cfg, [frames, frames])
    assert head < 1e-4 * forward.get_total_flops()


def test_peak_flops_is_quick_and_mfu_divides():
    started = time.perf_counter()
    peak = peak_flops("cpu", seconds_budget=0.2, repeats=3)
    assert peak > 1e8  # FLOP/s: any CPU does more than 0.1 GFLOP/s in fp32
    assert time.perf_counter() - started < 30  # a busy shared machine: generous
    assert peak_flops(torch.device("cpu"), size=256, repeats=1) > 0
    assert mfu(6e9, 2.0, 1e10) == pytest.approx(0.3)
