"""The DALI loader gives the webdataset loader's features for the same clips (cropping off).

Runs in DALI's CPU mode everywhere DALI is installed; the gpu-marked test repeats it with the fbank on
the GPU where there is one."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from maeast.errors import MaeastError
from maeast.loaders import LoaderConfig, StreamingLoader
from maeast.shards.format import iter_tar, shard_paths, tar_member

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


def test_ranks_read_equal_disjoint_shares(shards):
    """DALI's reader shards by rank: every rank yields the same number of batches, no clip on two ranks."""
    runs = [DaliLoader(config(shards), rank=r, world_size=2, device="cpu") for r in range(2)]
    keys = [[k for b in loader for k in b.keys] for loader in runs]
    assert len(runs[0]) == len(runs[1]) and len(keys[0]) == len(keys[1]) == 4 and not set(keys[0]) & set(keys[1])


@pytest.mark.gpu
def test_gpu_pipeline_resumes_from_its_checkpoint(shards):
    """On CUDA (DALI's GPU pipeline, the fbank on the device), a loader given a mid-epoch state goes on with the
    uninterrupted loader's batches."""
    cfg = pretrain_config(shards, batch_size=3)
    reference = [(b.keys, b.features.sum().item()) for b in DaliLoader(cfg)]
    first = DaliLoader(cfg)
    it = iter(first)
    head = [next(it)]
    resumed = DaliLoader(cfg)
    resumed.load_state_dict(first.state_dict())
    del it
    assert head[0].features.is_cuda
    got = [(b.keys, b.features.sum().item()) for b in head + list(resumed)]
    assert [k for k, _ in got] == [k for k, _ in reference]
    assert [s for _, s in got] == pytest.approx([s for _, s in reference], rel=1e-5)


def test_pretraining_contract_and_resume(shards):
    cfg = pretrain_config(shards, batch_size=3)
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


def test_backend_dali_refuses_what_it_cannot_do(shards):
    """Each in one line, when the config is made (before any loader work)."""
    cases = [(dict(shards=[str(shards), str(shards)], weights=[1.0, 1.0]), "mixing weights need backend stream"),
             (dict(bucket_batches=4), "does not bucket clips by length"),
             (dict(mode="finetune", clip_seconds=1.0, class_weights=[1.0, 2.0]), "class_weights need backend stream"),
             (dict(mode="finetune", clip_seconds=1.0, pad_to_longest=True), r"\(pad_to_longest\) needs backend stream"),
             (dict(shards=["https://example.org/shards"]), "reads local files only")]
    for changes, message in cases:
        with pytest.raises(MaeastError, match=message) as caught:
            LoaderConfig(**{**dict(shards=[str(shards)], backend="dali"), **changes})
        assert "\n" not in str(caught.value)


def pretrain_config(shards, **kw) -> LoaderConfig:
    return config(shards, **{**dict(mode="pretrain", clip_seconds=None, min_seconds=1.5, max_seconds=2.5,
                                    shuffle_buffer=8, bucket_batches=1, backend="dali", batch_size=2), **kw})


def test_resume_on_another_layout_starts_the_next_epoch(shards, capsys):
    """DALI's checkpoint holds one layout's reader positions: two ranks resumed from one rank's mid-epoch state
    start the next epoch, with one line; at an epoch boundary any layout continues as is."""
    one = DaliLoader(pretrain_config(shards), device="cpu")
    it = iter(one)
    next(it)
    state = one.state_dict()
    del it
    assert state["backend"] == "dali" and state["ranks"]["0"]["dali"]
    two = DaliLoader(pretrain_config(shards), rank=1, world_size=2, device="cpu")
    two.load_state_dict(state)
    assert two.epoch == 1 and two.state.positions == [0]
    lines = [line for line in capsys.readouterr().err.splitlines() if "cannot continue mid-epoch" in line]
    assert lines == ["maeast: loader: the DALI loader state of epoch 0 cannot continue mid-epoch (it was saved by 1 "
                     "rank(s), this run has 2); resuming at the start of epoch 1, the rest of epoch 0 is skipped"]
    boundary = DaliLoader(pretrain_config(shards), device="cpu")
    boundary.set_epoch(3)
    two.load_state_dict(boundary.state_dict())
    assert two.epoch == 3 and len(list(two)) == len(two)


def rewrite(shards: Path, shard: Path, change) -> None:
    """Rewrite one shard's samples through change(key, parts), then its .idx (DALI's wds2idx) and its index.json
    entry, so that only the content is wrong, not the files that describe it."""
    from wds2idx import IndexCreator

    from tests.test_loader_errors import reindex
    samples = list(iter_tar(shard))
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for key, parts in samples:
            for ext, data in change(key, parts).items():
                tar_member(tar, f"{key}.{ext}", data)
    with IndexCreator(str(shard), str(shard.with_suffix(".idx")), verbose=False) as creator:
        creator.create_index()
    reindex(shards, shard)


@pytest.fixture
def copied(shards, tmp_path) -> Path:
    shutil.copytree(shards, tmp_path / "shards")
    return tmp_path / "shards"


def victim(shards: Path) -> tuple[Path, str]:
    shard = shard_paths(shards, "train")[1]
    return shard, list(iter_tar(shard))[-1][0]


def test_a_damaged_clip_is_skipped_and_named(copied, capsys):
    """A clip whose FLAC differs from its JSON's sha256 is left out before the pipeline (a filtered .idx), with the
    webdataset loader's line naming shard and key; on_error fail stops on that line instead."""
    shard, bad = victim(copied)
    rewrite(copied, shard, lambda key, parts: {**parts, "flac": parts["flac"][:-40] + bytes(40)} if key == bad else parts)
    loader = DaliLoader(config(copied), device="cpu")
    seen = [k for b in loader for k in b.keys]
    assert sorted(seen) == sorted(set(corpus_keys(copied)) - {bad}) and loader.stats["bad_samples"] == 1
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("maeast: skipped")] == [
        f"maeast: skipped sample {bad} of shard {shard.name}: the sha256 of its flac member differs from its JSON"]
    with pytest.raises(MaeastError, match=f"sample {bad} of shard {shard.name}: the sha256 of its flac"):
        DaliLoader(config(copied, on_error="fail"), device="cpu")


def test_an_undecodable_clip_is_skipped_or_fails_with_one_line(copied, capsys):
    """Past the checksums (verify_checksums off), a clip DALI cannot decode fails its pipeline; our decoder names
    it: on_error fail stops with one line naming shard and key (never a DALI traceback); skip leaves it out with
    one line, the epoch goes on from the same batch without it, and a resume from a later state leaves it out too."""
    shard, bad = victim(copied)
    rewrite(copied, shard, lambda key, parts: {**parts, "flac": parts["flac"][:200]} if key == bad else parts)
    with pytest.raises(MaeastError) as caught:
        list(DaliLoader(config(copied, verify_checksums=False, on_error="fail", batch_size=16), device="cpu"))
    assert str(caught.value) == (f"sample {bad} of shard {shard.name}: undecodable by DALI's decoder "
                                 f"(set loader.on_error: skip to skip bad data)")
    cfg = config(copied, verify_checksums=False, batch_size=2)
    loader = DaliLoader(cfg, device="cpu")
    batches = list(loader)
    keys = [k for b in batches for k in b.keys]
    assert sorted(keys) == sorted(set(corpus_keys(copied)) - {bad}) and loader.stats["bad_samples"] == 1
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("maeast: skipped")] == [
        f"maeast: skipped sample {bad} of shard {shard.name}: undecodable by DALI's decoder"]
    assert loader.state_dict()["ranks"]["0"]["undecodable"] == [[shard.name, bad]]
    first = DaliLoader(cfg, device="cpu")
    it = iter(first)
    head = [next(it) for _ in range(len(batches) - 1)]  # past the failure (shard order: the bad clip is not last)
    saved = first.state_dict()
    assert saved["ranks"]["0"]["undecodable"] == [[shard.name, bad]]
    resumed = DaliLoader(cfg, device="cpu")
    resumed.load_state_dict(saved)
    assert [b.keys for b in head + list(resumed)] == [b.keys for b in batches]


def test_a_forked_child_never_destroys_an_inherited_pipeline(shards):
    """A DALI loader left in a reference cycle keeps its pipeline until a cyclic collection; a process forked
    before that one (a DataLoader worker) must not destroy it: its destructor would wait forever for DALI's
    threads, which the fork did not copy. The child here collects at once and must exit."""
    import gc
    import os
    import time

    gc.collect()
    gc.disable()
    try:
        loader = DaliLoader(config(shards), 0, 1, device="cpu")
        next(iter(loader))  # the pipeline is built and its threads run
        loader.cycle = loader  # dropped below, it waits for the cyclic collector
        del loader
        pid = os.fork()
        if pid == 0:  # the child: collect the inherited cycle, then leave without any cleanup of ours
            gc.collect()
            os._exit(0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung destroying the DALI pipeline it inherited")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        gc.enable()
        gc.collect()
