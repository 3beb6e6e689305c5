"""Every random stream of maeast, named in one place: each draw is seeded by derive_seed(seed, ...) of a
tuple that holds its stream's id.

    RUN_STREAMS      a run's own draws (masks, dropout, augmentation, a fresh head, the clip order of a fold):
                     derive_seed(run.seed, id, *key), the id SECOND; maeast.train.rng draws them
    LOADER_STREAMS   the data's draws (shard deals, shuffles, crops, mixing, repeats): derive_seed(data.seed,
                     *key, id), the id LAST; maeast.loaders (and fine-tuning's feature cache) draw them

Ids are fixed forever: changing one changes every run's numbers. An id may serve two streams whose keys
differ in length or that never meet in one run.
"""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """One 63-bit seed from a tuple of ints (seed, epoch, slot, ...), independent per tuple."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


LOADER_STREAMS = {
    "shard_deal": 1,    # sources.slot_shards: a source's shards shuffled before the deal, by (epoch, source)
    "pass_order": 2,    # sources.pass_order: a slot's shards in a later pass, by (epoch, source, slot, pass)
    "crop": 3,          # stream.materialize, dali: the crop offsets of a batch, by (epoch, slot or rank, position)
    "shuffle": 4,       # stream.planned_batches: the shuffle buffer of a pass, by (epoch, slot, pass)
    "mix": 5,           # stream._mixed: which source the next clip comes from, by (epoch, slot)
    "bucket": 6,        # stream.planned_batches: the order of a pool's batches (lengths.bucket), by (epoch, slot, pass)
    "dali_reader": 7,   # dali: the DALI reader's shuffling, by epoch
    "cache_order": 7,   # finetune.sources.CacheSource: an epoch's permutation of the cached features, by epoch
    "class_repeat": 8,  # stream._repeated: class-balanced repeats of a pass's clips, by (epoch, slot, pass)
    "ffcv_order": 8,    # ffcv: the order of an epoch's samples, by epoch
    "cache_draws": 9,   # finetune.sources.CacheSource.draws: pass p of the endless draws, by pass
}
"""The data's streams, by name: derive_seed(data seed, *key, id), the id last."""


RUN_STREAMS = {
    "masks": 1,             # pretraining: masks and layerdrop of a micro-batch, by (step, place); with
                            # model.views > 1 each view's mask generator is seeded by a draw of this one
    "dropout": 2,           # pretraining: dropout of a micro-batch (the global RNG), by (step, place)
    "eval_masks": 0x5EED,   # pretraining: the masks of held-out batch i, the same at every evaluation
    "head_init": 11,        # fine-tuning: a fold's fresh head, by fold
    "finetune_dropout": 12,  # fine-tuning: dropout of a micro-batch, by (fold, step, place)
    "augment": 13,          # fine-tuning: SpecAugment and mixup of a micro-batch, by (fold, step, place)
    "data_order": 14,       # fine-tuning: the order of a fold's training clips, by fold
}
"""The run's streams (maeast.train.rng), by name."""
