"""The hand-made baseline of a task: a logistic regression on each clip's fbank mean and std, on the task's
own splits (every fold of a cross-validation task), the row `maeast compare` sets beside the encoders.

    result = fbank_baseline("esc50", "shards/demo/events")
    # -> {"metric": "accuracy", "folds": [1, ..., 5], "values": [...], "mean", "std", "chance", "clips", "seconds"}

Each clip is read once as the frozen runs' evaluation passes read it (cropped from its start to the
task's clip length, or whole) with the fbank the random-init runs use (mae_ast, normalized with the
corpus's statistics); its statistics and the regression are maeast.probing's, which the online probe
during pretraining shares. Multi-label tasks have no such baseline (None).
"""

from __future__ import annotations

import time

import torch

from maeast.features.stats import corpus_features
from maeast.finetune.cache import unique_rows
from maeast.finetune.data import Selection, open_corpus, selections
from maeast.finetune.metrics import summarize
from maeast.finetune.tasks import get_task
from maeast.finetune.utterances import evaluation_loader, whole_clips
from maeast.loaders import StreamConfig
from maeast.probing import fbank_stats, logistic_regression

BATCH = 64
MAX_SECONDS = 600.0  # padded audio per batch when whole clips are read


def split_stats(corpus, split: str, clip_seconds: float, fbank) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(keys, fbank statistics [N, 2F], labels [N]) of every clip of a split, each once."""
    loader = evaluation_loader(corpus, Selection(split), whole=whole_clips(corpus, split, evaluation=True),
                               batch_size=BATCH, max_seconds=MAX_SECONDS, clip_seconds=clip_seconds, fbank=fbank,
                               stream=StreamConfig(num_workers=0))
    keys, xs, ys = [], [], []
    for batch in loader:
        keys += batch.keys
        xs.append(fbank_stats(batch.features, batch.padding_mask))
        ys.append(batch.labels)
    rows = torch.tensor(unique_rows(keys), dtype=torch.long)
    return [keys[i] for i in rows], torch.cat(xs)[rows], torch.cat(ys)[rows]


def fbank_baseline(task: str, shards: str, clip_seconds: float | None = None) -> dict | None:
    """The baseline's test accuracy on every fold (or the test split) of a single-label task; None for multi-label."""
    started = time.perf_counter()
    corpus = open_corpus(get_task(task), shards)
    if corpus.multi_label:
        return None
    clip_seconds = clip_seconds or corpus.task.clip_seconds or corpus.longest
    fbank = corpus_features(corpus.dir, "mae_ast")
    read: dict[str, tuple] = {}
    folds = corpus.folds or [None]
    values, clips, chance = [], 0, []
    for fold in folds:
        picks = selections(corpus, fold)
        sets = []
        for role in ("train", "test"):
            sel = picks[role]
            if sel.split not in read:
                read[sel.split] = split_stats(corpus, sel.split, clip_seconds, fbank)
            keys, x, y = read[sel.split]
            rows = torch.tensor(sel.rows(keys, corpus), dtype=torch.long)
            sets += [x[rows], y[rows]]
        values.append(logistic_regression(*sets, classes=len(corpus.labels)))
        clips += len(sets[3])
        chance.append(float(torch.bincount(sets[3]).max()) / max(len(sets[3]), 1))
    return {"metric": "accuracy", "folds": folds, "values": values, **summarize(values),
            "chance": sum(chance) / len(chance), "clips": clips, "seconds": time.perf_counter() - started}
