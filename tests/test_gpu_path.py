"""The work a GPU run moves to the accelerator is the same code as on CPU: the checks that run here,
and the `gpu`-marked ones that `make gpu-check` runs on a CUDA machine (skipped without one).

Here: the CUDA branch of fbank (one pass over the whole batch) equals the CPU's cache-sized pieces.
On CUDA: a bf16 autocast training step, SDPA's flash kernel against its math path, fbank (padded
batches too) against the CPU, SpecAugment, mixup and the token masks against the CPU, a pinned
waveform batch copied without blocking.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from maeast.features import fbank, get_config
from maeast.features.fbank import _log_mel, tables
from maeast.finetune.augment import mixup, spec_augment
from maeast.features import featurize
from maeast.model import MAEAST, make_config
from maeast.model.masking import MASK_OPTIONS, MASKS
from maeast.model.transformer import SelfAttention
from maeast.precision import autocast

FIXTURE = Path(__file__).parent / "fixtures" / "fbank" / "reference.npz"


@pytest.fixture(scope="module")
def waves() -> torch.Tensor:
    """[4, 3 s] real audio: the fixture's espeak-ng speech and fluidsynth music, looped and shifted."""
    with np.load(FIXTURE) as data:
        clips = [data["wav_speech"], data["wav_music"]]
    rows = [np.roll(np.resize(clips[i % 2], 48000), 4000 * i) for i in range(4)]
    return torch.from_numpy(np.stack(rows).astype(np.float32) / 32768)


def one_pass(wave: torch.Tensor, preset: str = "mae_ast") -> torch.Tensor:
    """fbank's CUDA branch, run where the tensor is: every frame of the batch through _log_mel at once."""
    config = get_config(preset)
    window, banks = tables(config, 16000, wave.device)
    frames = wave.unfold(-1, config.win_length(16000), config.hop_length(16000))  # [B, T, W]
    return _log_mel(frames, config, window, banks, 16000)


def test_cuda_branch_of_fbank_equals_the_cpu_pieces(waves):
    """On a CPU fbank cuts each clip into pieces of CPU_CHUNK_FRAMES; on CUDA it takes the whole batch in
    one pass. Both are the same per-frame function, so on the same device they agree exactly."""
    chunked = fbank(waves)  # [4, 298, 128], the CPU branch
    assert chunked.shape == (4, 298, 128)
    assert torch.equal(one_pass(waves), chunked)


# --- on CUDA (make gpu-check) -------------------------------------------------------------------

def cuda_features(waves: torch.Tensor) -> torch.Tensor:
    return fbank(waves.cuda())  # [B, T, 128] on the GPU


@pytest.mark.gpu
def test_bf16_autocast_step_trains_every_parameter(waves):
    torch.manual_seed(0)
    model = MAEAST(make_config("tiny", dropout=0.0, attn_dropout=0.0, input_dropout=0.0)).cuda().train()
    features = cuda_features(waves)
    with autocast("cuda"):
        out = model(features, generator=torch.Generator("cuda").manual_seed(0))
    assert out.recon.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    with torch.no_grad():  # the same masks in fp32: bf16 moves the loss by well under a percent or so
        fp32 = model(features, generator=torch.Generator("cuda").manual_seed(0)).loss
    assert abs(float(out.loss) - float(fp32)) <= 0.03 * abs(float(fp32))


@pytest.mark.gpu
def test_sdpa_flash_equals_math_in_bf16():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    torch.manual_seed(0)
    attn = SelfAttention(768, 12, 0.0).cuda().eval()
    x = torch.randn(4, 496, 768, device="cuda")
    out = {}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("math", SDPBackend.MATH)):
        with sdpa_kernel(backend), autocast("cuda"), torch.no_grad():
            out[name] = attn(x).float()
    assert (out["flash"] - out["math"]).abs().max().item() <= 2e-2 * out["math"].abs().max().item()


@pytest.mark.gpu
def test_cuda_fbank_of_padded_batches_matches_cpu(waves):
    lengths = torch.tensor([48000, 40000, 17000, 48000])
    padded = waves * (torch.arange(48000)[None, :] < lengths[:, None])
    for preset in ("mae_ast", "ssast"):
        cpu, cpu_mask = featurize(padded, lengths, preset, 16000)
        gpu, gpu_mask = featurize(padded.cuda(), lengths.cuda(), preset, 16000)
        assert torch.equal(gpu_mask.cpu(), cpu_mask)
        assert (gpu.cpu() - cpu).abs().max().item() <= 1e-3  # the tolerance against torchaudio (test_fbank)


@pytest.mark.gpu
def test_pinned_waveforms_copy_without_blocking(waves):
    pinned = waves.pin_memory()
    assert pinned.is_pinned()
    on_gpu = pinned.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(on_gpu.cpu(), waves)
    assert (fbank(on_gpu).cpu() - fbank(waves)).abs().max().item() <= 1e-3


@pytest.mark.gpu
def test_spec_augment_and_mixup_on_cuda_equal_cpu(waves):
    x = fbank(waves)  # [4, T, F]
    pad = torch.arange(x.shape[1])[None, :] >= torch.tensor([298, 250, 200, 298])[:, None]
    targets = torch.eye(4)
    cpu = spec_augment(x, pad, 48, 96, torch.Generator().manual_seed(3))
    gpu = spec_augment(x.cuda(), pad.cuda(), 48, 96, torch.Generator().manual_seed(3))
    assert torch.equal(gpu.cpu(), cpu)  # the same draws (on the CPU generator), the same cells
    cpu_mix = mixup(x, pad, targets, 1.0, 10.0, torch.Generator().manual_seed(4))
    gpu_mix = mixup(x.cuda(), pad.cuda(), targets.cuda(), 1.0, 10.0, torch.Generator().manual_seed(4))
    for a, b in zip(gpu_mix, cpu_mix):
        assert torch.allclose(a.cpu().float(), b.float(), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(MASKS))
def test_masks_on_cuda_equal_cpu(name):
    cfg = make_config("tiny", mask_type=name)
    options = {k: getattr(cfg, k) for k in MASK_OPTIONS.get(name, ())}
    rows = torch.tensor([62, 40, 62])
    cpu = MASKS[name](rows, (62, 8), 0.75, generator=torch.Generator().manual_seed(5), **options)
    gpu = MASKS[name](rows.cuda(), (62, 8), 0.75, generator=torch.Generator().manual_seed(5), **options)
    for field in ("ids_keep", "ids_masked", "ids_restore", "mask", "n_keep"):
        assert torch.equal(getattr(gpu, field).cpu(), getattr(cpu, field)), field

