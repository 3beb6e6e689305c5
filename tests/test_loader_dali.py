"""The DALI loader gives the webdataset loader's features for the same clips (cropping off).

Runs in DALI's CPU mode everywhere DALI is installed; the gpu-marked test repeats it with the fbank on
the GPU where there is one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maeast.errors import MaeastError
from maeast.loaders import LoaderConfig, StreamingLoader, build_loader

pytest.importorskip("nvidia.dali", reason="the `dali` extra is not installed")
from maeast.loaders.dali import DaliLoader  # noqa: E402
from tests.conftest import build, corpus_keys, make_corpus  # noqa: E402


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dali")
    build(make_corpus(root / "corpus", speech=4, music=4, short=1), root / "shards")
    return root / "shards"


def config(shards, **kw) -> LoaderConfig:
    return LoaderConfig(**{**dict(shards=[str(shards)], mode="finetune", clip_seconds=3.5, random_crop=False,
                                  batch_size=3, num_workers=1, shuffle_buffer=0), **kw})


def by_key(loader) -> dict[str, tuple]:
    out = {}
    for b in loader:
        assert b.features.dtype == torch.float32 and b.features.shape[1:] == (348, 128)
        for i, key in enumerate(b.keys):
            mask = b.padding_mask[i] if b.padding_mask is not None else torch.zeros(348, dtype=torch.bool)
            out[key] = (b.features[i].cpu(), mask.cpu(), b.labels[i].cpu())
    return out


def compare(shards, device):
    cpu = by_key(StreamingLoader(config(shards)))
    dali = by_key(DaliLoader(config(shards, shuffle_buffer=8), device=device))
    assert sorted(cpu) == sorted(dali) == corpus_keys(shards)
    worst = max((cpu[k][0] - dali[k][0]).abs().max().item() for k in cpu)
    for k in cpu:
        assert torch.equal(cpu[k][1], dali[k][1]) and torch.equal(cpu[k][2], dali[k][2]), k
    return worst


def test_dali_cpu_mode_matches_the_streaming_loader(shards):
    worst = compare(shards, "cpu")
    print(f"DALI (CPU) vs webdataset loader: max |difference| = {worst:.3g}")
    assert worst < 1e-4


@pytest.mark.gpu
def test_dali_gpu_matches_the_streaming_loader(shards):
    worst = compare(shards, None)
    print(f"DALI (GPU fbank) vs webdataset loader: max |difference| = {worst:.3g}")
    assert worst < 1e-3  # cuFFT and the CPU FFT round differently


def test_pretraining_contract_and_resume(shards):
    cfg = config(shards, mode="pretrain", clip_seconds=None, min_seconds=1.5, max_seconds=2.5, shuffle_buffer=8)
    loader = DaliLoader(cfg, device="cpu")
    reference = [(b.keys, b.features.sum().item()) for b in loader]
    assert len(reference) == len(loader) == 3 and loader.epoch == 1 and loader.stats["short"] >= 1
    for b_keys, _ in reference:
        assert "speech-w0" not in b_keys
    again = DaliLoader(cfg, device="cpu")
    it = iter(again)
    head = [(b.keys, b.features.sum().item()) for b in [next(it)]]
    del it
    resumed = DaliLoader(cfg, device="cpu")
    resumed.load_state_dict(again.state_dict())
    assert head + [(b.keys, b.features.sum().item()) for b in resumed] == reference


def test_backend_dali_refuses_weights(shards):
    with pytest.raises(MaeastError, match="mixing weights need backend stream"):
        build_loader(LoaderConfig(shards=[str(shards), str(shards)], weights=[1.0, 1.0], backend="dali"))
