"""Masked pretraining on a DeepSpeed ZeRO engine: configs, the loop, checkpoints, exports, pictures.

    from maeast.pretrain import load_config, pretrain
    cfg = load_config("pretrain_patch_random", ["--run.dir", "runs/patch_random"])
    result = pretrain(cfg, deepspeed_config_path="launch/ds_zero2.json")
    encoder, info = maeast.artifacts.read_encoder(result.encoder)   # (Encoder, encoder.json) for fine-tuning

Read top to bottom: config (PretrainConfig) -> ds_config (the DeepSpeed config) -> optim (AdamW, schedule) ->
distributed (process group helpers) -> engine (the only module importing deepspeed) -> checkpoint
(atomic saves, resume; the model files are maeast.artifacts') -> evaluate -> logging -> rng (named streams) ->
trainer (the one step loop, resume guard) -> loop (pretraining's use of it) -> plots.
"""

from maeast.pretrain.config import PretrainConfig, build_config, load_config, shipped_configs
from maeast.train.ds_config import deepspeed_config
from maeast.pretrain.loop import PretrainResult, pretrain
from maeast.train.trainer import NonFiniteLoss

__all__ = ["PretrainConfig", "build_config", "load_config", "shipped_configs", "deepspeed_config", "pretrain",
           "PretrainResult", "NonFiniteLoss"]
