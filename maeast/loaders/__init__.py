"""Loaders: shards -> batches of fbank features (maeast.batch.Batch), for pretraining and fine-tuning.

    from maeast.loaders import LoaderConfig, build_loader
    loader = build_loader(LoaderConfig(shards=["shards/librispeech"], batch_size=8))
    for batch in loader: ...          # Batch(features [B, T, F], padding_mask, labels, keys)

Three backends with one batch contract and one fbank (maeast.features):
  "stream" (StreamingLoader): webdataset on CPU worker processes; resumable mid-epoch.
  "dali"   (maeast.loaders.dali.DaliLoader): DALI's webdataset reader and audio decoder, the
           fbank on the GPU when there is one (the `dali` extra; only that module imports DALI).
  "ffcv"   (maeast.loaders.ffcv.FFCVLoader): precomputed fixed-size fbanks in a .beton written
           by `maeast shard ffcv` (the `ffcv` extra; only that module imports ffcv).
"""

from __future__ import annotations

from maeast.loaders.config import BatchConfig, LoaderConfig, StreamConfig
from maeast.loaders.keep import Keep
from maeast.loaders.loader import StreamingLoader
from maeast.loaders.state import merge_states


def build_loader(config: LoaderConfig, rank: int | None = None, world_size: int | None = None,
                 features=None, keep: Keep | None = None, device: str | None = None):
    """The loader of config.backend; each has __iter__ (Batch), __len__, set_epoch, state_dict,
    load_state_dict, stats, labels and multi_label. features: the fbank recipe in place of config.fbank's
    preset; keep: only these clips (by key); device: where DALI runs ("cpu", or None: the current GPU)."""
    if config.backend == "dali":
        from maeast.loaders.dali import DaliLoader
        return DaliLoader(config, rank, world_size, device=device, features=features, keep=keep)
    if config.backend == "ffcv":
        from maeast.loaders.ffcv import FFCVLoader
        return FFCVLoader(config, rank, world_size, features, keep)
    return StreamingLoader(config, rank, world_size, features, keep)


__all__ = ["BatchConfig", "Keep", "LoaderConfig", "StreamConfig", "StreamingLoader", "build_loader", "merge_states"]
