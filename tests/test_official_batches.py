"""The official pretraining batches: fairseq's max_tokens batching of length-sorted clips (lengths.bucket_tokens),
its config checks, the paper presets that use it, and exact and elastic resume over batches of varying size."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from maeast.errors import MaeastError
from maeast.loaders import LoaderConfig, StreamingLoader
from maeast.loaders.elastic import loader_quotas, regroup
from maeast.loaders.lengths import batch_clips, bucket_tokens
from maeast.pretrain.config import load_config
from maeast.shards.format import iter_tar, shard_paths
from tests.conftest import build, corpus_keys, make_corpus


def fairseq_batch_by_size(sizes: list[int], max_tokens: int, bsz_mult: int) -> list[list[int]]:
    """fairseq/data/data_utils_fast.pyx batch_by_size_fast, transcribed: indices in the given order, a batch
    closed when (len + 1) x its longest > max_tokens, cut to a multiple of bsz_mult, the rest carried on."""
    batches, batch, lens = [], [], []
    longest = 0
    for idx, n in enumerate(sizes):
        lens.append(n)
        longest = max(longest, n)
        if batch and (len(batch) + 1) * longest > max_tokens:
            mod_len = max(bsz_mult * (len(batch) // bsz_mult), len(batch) % bsz_mult)
            batches.append(batch[:mod_len])
            batch, lens = batch[mod_len:], lens[mod_len:]
            longest = max(lens)
        batch.append(idx)
    if batch:
        batches.append(batch)
    return batches


def test_clips_per_batch_of_the_official_settings():
    assert batch_clips(1_400_000, 250_000, 8) == 5  # config/pretrain/mae_ast.yaml: 5 per GPU, x 32 GPUs = 160
    assert batch_clips(8_388_608, 250_000, 8) == 32  # the README's one-GPU command: 33 fit, cut to 32
    assert batch_clips(1_400_000, 160_000, 8) == 8  # 10 s AudioSet clips
    assert batch_clips(1_400_000, 32_000, 8) == 40  # 2 s clips: 43 fit, cut to 40


def test_one_pool_is_fairseq_batch_by_size_of_the_sorted_clips():
    rng = random.Random(3)
    sizes = [rng.randint(32_000, 560_000) for _ in range(300)]
    ours = list(bucket_tokens(range(300), lambda i: sizes[i], 1_400_000, 250_000, 8, 10_000, random.Random(0)))
    order = sorted(range(300), key=lambda i: sizes[i], reverse=True)  # fairseq's ordered_indices, longest first
    theirs = fairseq_batch_by_size([min(sizes[i], 250_000) for i in order], 1_400_000, 8)
    assert sorted(ours) == sorted([order[j] for j in b] for b in theirs)


@pytest.mark.parametrize("multiple", [1, 8])
def test_pools_keep_every_clip_once_within_max_tokens(multiple):
    rng = random.Random(7)
    sizes = [rng.choice([rng.randint(20_000, 40_000), rng.randint(150_000, 600_000)]) for _ in range(2000)]
    out = list(bucket_tokens(range(2000), lambda i: sizes[i], 1_400_000, 250_000, multiple, 4, random.Random(1)))
    assert sorted(i for b in out for i in b) == list(range(2000))
    for b in out:
        assert len(b) * max(min(sizes[i], 250_000) for i in b) <= 1_400_000
    uncut = [b for b in out if len(b) >= multiple and len(b) % multiple]
    assert len(uncut) <= 1  # only the stream's last batch, the rest of the shortest clips (as fairseq's)
    counts = {len(b) for b in out}
    assert 5 in counts and max(counts) >= 32  # long clips 5 a batch, short ones many
    again = list(bucket_tokens(range(2000), lambda i: sizes[i], 1_400_000, 250_000, multiple, 4, random.Random(1)))
    assert again == out


def test_a_pool_is_length_sorted_so_crops_waste_little():
    rng = random.Random(5)
    sizes = [rng.randint(32_000, 560_000) for _ in range(4000)]
    out = list(bucket_tokens(range(4000), lambda i: sizes[i], 1_400_000, 250_000, 8, 64, random.Random(2)))
    kept = sum(len(b) * min(sizes[i] for i in b) for b in out)
    assert kept / sum(sizes) > 0.97  # cropping every batch to its shortest clip keeps almost all the audio


def test_config_checks_are_one_line(tmp_path):
    build(make_corpus(tmp_path / "c", speech=2, music=2), tmp_path / "s")
    base = dict(shards=[str(tmp_path / "s")], max_tokens=1_400_000)
    with pytest.raises(MaeastError, match=r"max_tokens 1400000 batches 5 clips .* set batch_size: 5"):
        LoaderConfig(**base, batch_size=8)
    with pytest.raises(MaeastError, match=r"max_tokens .* must be an integer >= 250000"):
        LoaderConfig(**{**base, "max_tokens": 100_000}, batch_size=1)
    with pytest.raises(MaeastError, match=r"max_tokens batches pretraining on the stream backend"):
        LoaderConfig(**base, batch_size=5, mode="finetune", clip_seconds=1.0)
    LoaderConfig(**base, batch_size=5)


def test_the_paper_presets_batch_as_the_official_32_gpu_config():
    for name in ("pretrain_patch_chunk", "pretrain_patch_random", "pretrain_frame_random", "pretrain_frame_chunk"):
        cfg = load_config(name)
        assert (cfg.data.max_tokens, cfg.data.size_cap, cfg.data.batch_multiple) == (1_400_000, 250_000, 8)
        assert cfg.data.batch_size == 5 and cfg.optim.global_batch == 160  # 32 batches per update
        assert cfg.data.max_seconds == 2500.0 and cfg.data.min_seconds == 2.0
    readme = load_config("pretrain_patch_chunk", ["--data.max_tokens", "8388608", "--data.batch_size", "32",
                                                  "--optim.global_batch", "32"])
    assert readme.data.max_tokens == 8_388_608
    assert load_config("pretrain_small").data.max_tokens is None


# ---- real loaders: batches of varying size, resumed exactly and re-dealt ------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tokens")
    build(make_corpus(root / "corpus", speech=6, music=6), root / "shards")
    return root / "shards"


def config(shards, workers=2, **kw) -> LoaderConfig:
    """Clips of 2-3.3 s counted up to 2.75 s: 2 a batch at the cap, 3 of clips under 2.3 s."""
    return LoaderConfig(**{**dict(shards=[str(shards)], batch_size=2, max_tokens=110_000, size_cap=44_000,
                                  num_workers=workers, shuffle_buffer=4, bucket_batches=4, min_seconds=0.0,
                                  max_seconds=2500.0, prefetch=2, seed=11), **kw})


def batches(loader, n=None):
    out = []
    for batch in loader:
        out.append((tuple(batch.keys), batch.features))
        if len(out) == n:
            break
    return out


def clip_lengths(shards: Path) -> dict[str, int]:
    """Every train clip's samples, from its JSON."""
    return {key: json.loads(parts["json"])["num_samples"] for p in shard_paths(shards, "train")
            for key, parts in iter_tar(p)}


def test_batches_fit_max_tokens_and_are_cut_to_their_shortest_clip(shards):
    lengths = clip_lengths(shards)
    seen, sizes = [], set()
    for batch in StreamingLoader(config(shards, workers=1)):
        n = [lengths[k] for k in batch.keys]
        assert len(n) * max(min(x, 44_000) for x in n) <= 110_000
        frames = (min(n) - 400) // 160 + 1  # the mae_ast fbank of the shortest clip, every clip cut to it
        assert batch.features.shape[1] == frames and (batch.padding_mask is None or not batch.padding_mask.any())
        sizes.add(len(n))
        seen += batch.keys
    assert sizes >= {2, 3}  # clips at the cap 2 a batch, shorter ones 3
    assert sorted(seen) == sorted(lengths)  # one pass: every clip once


@pytest.mark.parametrize("k", [1, 2])
def test_a_resumed_loader_gives_the_same_batches(shards, k):
    whole = batches(StreamingLoader(config(shards)))
    first = StreamingLoader(config(shards))
    seen = batches(first, k)
    again = StreamingLoader(config(shards))
    again.load_state_dict(json.loads(json.dumps(first.state_dict())))
    rest = batches(again)
    assert [keys for keys, _ in seen + rest] == [keys for keys, _ in whole]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(seen + rest, whole))  # the same crops


def test_an_elastic_re_deal_gives_the_very_batches(shards):
    """Saved on 2 processes x 1 worker after one step of 2 batches, resumed on 1 x 1: the rest is the
    uninterrupted run's batches, crops included, in its steps."""
    whole = [batches(StreamingLoader(config(shards, 1), r, 2)) for r in range(2)]
    loaders = [StreamingLoader(config(shards, 1), r, 2) for r in range(2)]
    for loader in loaders:
        batches(loader, 1)
    states = [json.loads(json.dumps(loader.state_dict())) for loader in loaders]
    loader = StreamingLoader(config(shards, 1), 0, 1)
    loader.load_state_dict(regroup(states, 0, 1, 1, loader_quotas(loader), 2))
    rest = batches(loader)
    expected = [b for step in zip(whole[0][1:], whole[1][1:]) for b in step]  # step after step, rank 0 then 1
    assert [keys for keys, _ in rest] == [keys for keys, _ in expected]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, expected))


def test_pretraining_steps_on_max_tokens_batches_and_resumes(shards, tmp_path):
    """The tiny model pretrains on max_tokens batches of 2-3 clips, 2 batches a step, and a run stopped after 2
    steps and resumed takes the very clips of an unbroken run (run.trace_keys)."""
    from maeast.pretrain import load_config, pretrain
    from tests.conftest import step_keys

    def run(folder, *extra):
        cfg = load_config("pretrain_tiny", ["--data.shards", f"[{shards}]", "--data.max_tokens", "110000",
                                            "--data.size_cap", "44000", "--data.batch_size", "2", "--data.bucket_batches", "4",
                                            "--optim.global_batch", "4", "--data.min_seconds", "0.0",
                                            "--data.max_seconds", "2500", "--eval.every", "0", "--run.dir",
                                            str(folder), "--schedule.steps", "4", "--schedule.warmup_steps", "1",
                                            "--run.save_every_steps", "2", "--run.trace_keys", "true", *extra])
        return pretrain(cfg)

    whole = run(tmp_path / "whole")
    assert len(whole.losses) == 4 and all(math.isfinite(x) for x in whole.losses)
    run(tmp_path / "split", "--run.stop_at", "2")
    run(tmp_path / "split", "--run.resume", "must")
    assert step_keys(tmp_path / "split") == step_keys(tmp_path / "whole")
    assert max(len(keys) for keys in step_keys(tmp_path / "whole").values()) > 4  # a batch of 3 short clips
