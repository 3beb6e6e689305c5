"""benchmarks/mfu.py's FLOPs count: against a hand count for the tiny preset, and against torch's own
FLOP counter on the tiny model's forward and backward."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from mfu import Step, features_for, forward_flops, layer_flops, matmul_peak, measure, real_waves, step_flops  # noqa: E402

from maeast.configio import load_yaml  # noqa: E402
from maeast.pretrain.config import build_config  # noqa: E402
from maeast.model import MAEAST, make_config  # noqa: E402

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
