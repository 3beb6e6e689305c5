"""A loader that keeps only some clips of a split (maeast.loaders.keep): a fold held out, a carved part.

The keep-rule is applied where each worker plans its stream, before shuffling and batching, so on an
ESC-50-like corpus (5 folds, fold-contiguous shards, real synthesized speech) a fold's training pass
fills every batch with kept clips, reads each kept clip once a pass, never decodes a held-out clip,
keeps two processes in step, resumes and re-deals its epoch; and a loader given no keep-rule is the
loader it always was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import maeast.loaders.stream as stream
from maeast.errors import MaeastError
from maeast.finetune.data import Corpus, Selection, make_loader, open_corpus, selections
from maeast.finetune.tasks import get_task
from maeast.loaders import Keep, LoaderConfig, StreamConfig, StreamingLoader
from maeast.loaders.elastic import loader_quotas, regroup
from maeast.streams import LOADER_STREAMS
from maeast.shards.build import build_shards
from maeast.shards.format import iter_meta, shard_paths
from tests.conftest import build, corpus_keys, make_corpus

CATEGORIES = ["dog", "rooster", "pig"]
WORDS = ["yes", "no", "go", "dog", "bed", "learn", "forward", "rooster", "guitar", "hello there"]
PER_FOLD = 6
BATCH = 4


@pytest.fixture(scope="module")
def esc(clips, tmp_path_factory) -> Path:
    """ESC-50's layout, 5 folds x 6 spoken words (0.5-0.8 s), packed fold after fold into ~2-clip shards."""
    root = tmp_path_factory.mktemp("keep_esc")
    tree = root / "tree"
    (tree / "meta").mkdir(parents=True)
    (tree / "audio").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, 6):
        for i in range(PER_FOLD):
            target = i % 3
            name = f"{fold}-{100 * fold + i}-A-{target}.wav"
            rows.append(f"{name},{fold},{target},{CATEGORIES[target]},True,{100 * fold + i},A")
            shutil.copyfile(clips[WORDS[(PER_FOLD * fold + i) % len(WORDS)]], tree / "audio" / name)
    (tree / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    build_shards("esc50", tree, root / "shards", shard_size_mb=0.02)
    return root / "shards"


@pytest.fixture(scope="module")
def corpus(esc) -> Corpus:
    corpus = open_corpus(get_task("esc50"), esc)
    assert corpus.folds == [1, 2, 3, 4, 5] and corpus.shard_count("train") >= 8
    return corpus


def kept_keys(corpus: Corpus, selection: Selection) -> list[str]:
    return sorted(k for k in corpus.fold_of if selection.keeps(k, corpus))


def loader_for(corpus, selection, train=True, workers=2, **kw) -> StreamingLoader:
    args = dict(batch_size=BATCH, clip_seconds=1.0, fbank="mae_ast", seed=3, shuffle_buffer=8, epoch_batches=None)
    stream = StreamConfig(num_workers=workers, on_error="fail")
    return make_loader(corpus, selection, train=train, stream=stream, **{**args, **kw})


def test_a_held_out_fold_leaves_full_batches_and_every_kept_clip_once(corpus):
    train = selections(corpus, 1)["train"]
    kept = kept_keys(corpus, train)
    assert len(kept) == 4 * PER_FOLD
    loader = loader_for(corpus, train)
    assert loader.config.batch_size == BATCH  # no enlarged batch to cut down afterwards
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        expected = len(loader)
        batches = [b.keys for b in loader]
        assert len(batches) == expected
        keys = [k for b in batches for k in b]
        assert sorted(keys) == kept  # every kept clip once a pass, no held-out one
        assert not any(corpus.fold_of[k] == 1 for k in keys)
        # drop_last is off: each worker's last batch of its pass may be short, every other one is full
        short = [b for b in batches if len(b) != BATCH]
        assert len(short) <= loader.config.num_workers == 2 and all(0 < len(b) < BATCH for b in short)
        per_worker = [-(-n // BATCH) for n in worker_counts(loader, epoch)]
        assert len(batches) == sum(per_worker)  # the quotas count the kept clips of each worker's shards


def worker_counts(loader: StreamingLoader, epoch: int) -> list[int]:
    """Kept clips of each of rank 0's worker slots this epoch (what sources.quotas counts)."""
    from maeast.loaders.sources import slot_shards
    w, source = max(loader.config.num_workers, 1), loader.sources[0]
    slots = w * loader.world_size
    return [sum(loader.keep.count(s) for s in slot_shards(source, 0, loader.config.seed, epoch, slot, slots))
            for slot in range(w)]


def test_with_drop_last_every_batch_is_full(corpus):
    train = selections(corpus, 2)["train"]
    config = LoaderConfig(shards=[str(corpus.dir)], mode="finetune", clip_seconds=1.0, batch_size=BATCH,
                          num_workers=2, shuffle_buffer=8, drop_last=True, seed=5)
    loader = StreamingLoader(config, keep=train.keep_rule(corpus))
    expected = len(loader)
    batches = [b.keys for b in loader]
    keys = [k for b in batches for k in b]
    assert batches and all(len(b) == BATCH for b in batches) and len(batches) == expected
    assert len(set(keys)) == len(keys) and set(keys) <= set(kept_keys(corpus, train))


def test_held_out_clips_are_never_decoded(corpus, monkeypatch):
    decoded = []
    real = stream.decode_window

    def recording(sample, *args):
        decoded.append(sample.key)
        return real(sample, *args)

    monkeypatch.setattr(stream, "decode_window", recording)
    picks = selections(corpus, 3)
    for name, train in (("train", True), ("test", False)):
        decoded.clear()
        keys = [k for b in loader_for(corpus, picks[name], train=train, workers=0) for k in b.keys]
        assert sorted(decoded) == sorted(keys) == kept_keys(corpus, picks[name])
    assert all(corpus.fold_of[k] == 3 for k in decoded)  # the test pass: the fold's clips, and only them


def test_two_processes_stay_in_step_on_disjoint_clips(corpus):
    train = selections(corpus, 4)["train"]
    kept = set(kept_keys(corpus, train))
    for epoch_batches in (None, 3):
        ranks = [loader_for(corpus, train, workers=1, rank=r, world_size=2, epoch_batches=epoch_batches)
                 for r in range(2)]
        for epoch in (0, 1):
            out = []
            for loader in ranks:
                loader.set_epoch(epoch)
                out.append([b.keys for b in loader])
            assert len(out[0]) == len(out[1]) > 0  # the same number of micro-batches
            keys = [[k for b in batches for k in b] for batches in out]
            assert set(keys[0]) <= kept and set(keys[1]) <= kept
            if epoch_batches is None:  # one pass each (trimmed to the rank with fewer), over disjoint shards
                assert not set(keys[0]) & set(keys[1]) and len(keys[0] + keys[1]) == len(set(keys[0] + keys[1]))
                assert all(len(b) == BATCH for batches in out for b in batches[:-1])


def test_a_worker_without_kept_clips_gets_no_share_of_a_fixed_epoch(corpus):
    """epoch_batches: a worker whose shards hold no kept clip (fold-contiguous shards, one fold kept) has no
    batch to give; the rank's other worker yields them all."""
    keep = selections(corpus, 5)["test"].keep_rule(corpus)
    found = None
    for seed in range(20):
        config = LoaderConfig(shards=[str(corpus.dir)], mode="finetune", clip_seconds=1.0, batch_size=2,
                              num_workers=2, shuffle_buffer=4, epoch_batches=5, seed=seed)
        loader = StreamingLoader(config, 0, 2, keep=keep)
        if sorted(map(bool, worker_counts(loader, 0))) == [False, True]:
            found = loader
            break
    assert found is not None, "no seed deals fold 5's shards of rank 0 to one of its workers only"
    assert found.quotas() == [5 if n else 0 for n in worker_counts(found, 0)]
    batches = [b.keys for b in found]
    assert len(batches) == 5 and all(corpus.fold_of[k] == 5 for b in batches for k in b)


def test_a_resumed_and_a_re_dealt_epoch_keep_the_same_clips(corpus):
    train = selections(corpus, 2)["train"]

    def two():
        return [loader_for(corpus, train, workers=1, rank=r, world_size=2, seed=7) for r in range(2)]

    whole = [[tuple(b.keys) for b in loader] for loader in two()]
    saved = two()
    for loader in saved:
        next(iter(loader))
    states = [json.loads(json.dumps(loader.state_dict())) for loader in saved]
    for r, state in enumerate(states):  # the same layout: the rest of each rank's epoch
        again = two()[r]
        again.load_state_dict(state)
        assert [tuple(b.keys) for b in again] == whole[r][1:]
    one = loader_for(corpus, train, workers=0, seed=7)  # 2 x 1 -> 1 x 0: the rest re-dealt on one process
    one.load_state_dict(regroup(states, 0, 1, 0, loader_quotas(one), 2))
    rest = [tuple(b.keys) for b in one]
    assert sorted(rest) == sorted(whole[0][1:] + whole[1][1:])
    assert all(corpus.fold_of[k] != 2 for b in rest for k in b)


def test_a_keep_rule_of_other_shards_is_refused(corpus):
    keep = selections(corpus, 1)["train"].keep_rule(corpus)
    wrong = Keep(keep.keys, {**keep.counts, "other.tar": 0})
    config = LoaderConfig(shards=[str(corpus.dir)], mode="finetune", clip_seconds=1.0, num_workers=0)
    with pytest.raises(MaeastError, match="keep-rule was built for other shards"):
        StreamingLoader(config, keep=wrong)


# ---- no keep-rule: the loader as it was ------------------------------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("keep_pretrain")
    build(make_corpus(root / "corpus", speech=6, music=6), root / "shards")
    return root / "shards"


def pretrain_config(shards) -> LoaderConfig:
    return LoaderConfig(shards=[str(shards)], batch_size=3, num_workers=2, shuffle_buffer=4, bucket_batches=2,
                        min_seconds=0.0, seed=11)


def test_pretraining_without_a_keep_rule_is_unchanged(shards):
    plain = [(b.keys, b.features) for b in StreamingLoader(pretrain_config(shards))]
    assert sorted(k for keys, _ in plain for k in keys) == corpus_keys(shards)
    explicit = [(b.keys, b.features) for b in StreamingLoader(pretrain_config(shards), keep=None)]
    # a keep-rule that keeps every clip walks the keep path, which draws no random number of its own
    every = Keep.of({path.name: [key for key, _ in iter_meta(path)] for path in shard_paths(shards, "train")},
                    lambda key: True)
    kept = [(b.keys, b.features) for b in StreamingLoader(pretrain_config(shards), keep=every)]
    for other in (explicit, kept):
        assert [keys for keys, _ in other] == [keys for keys, _ in plain]
        assert all(a.equal(b) for (_, a), (_, b) in zip(other, plain))  # same crops


def test_the_loader_stream_ids_are_the_ones_every_run_was_seeded_with():
    assert LOADER_STREAMS == {"shard_deal": 1, "pass_order": 2, "crop": 3, "shuffle": 4, "mix": 5, "bucket": 6,
                              "dali_reader": 7, "cache_order": 7, "class_repeat": 8, "ffcv_order": 8,
                              "cache_draws": 9}
