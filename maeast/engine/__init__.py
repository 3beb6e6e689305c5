"""Masked pretraining on a DeepSpeed ZeRO engine: configs, the loop, checkpoints, exports, pictures.

    from maeast.engine import load_config, pretrain, read_encoder
    cfg = load_config("pretrain_patch_random", ["--run.dir", "runs/patch_random"])
    result = pretrain(cfg, deepspeed_config_path="launch/ds_zero2.json")
    encoder, info = read_encoder(result.encoder)      # (Encoder, encoder.json) for fine-tuning

Read top to bottom: config (TrainConfig) -> ds_config (the DeepSpeed config) -> optim (AdamW, schedule) ->
distributed (process group helpers) -> engine (the only module importing deepspeed) -> checkpoint
(atomic saves, resume, export) -> evaluate -> logging -> loop (pretrain) -> plots.
"""

from maeast.engine.checkpoint import load_model, read_encoder
from maeast.engine.config import TrainConfig, build_config, load_config, shipped_configs
from maeast.engine.ds_config import deepspeed_config
from maeast.engine.loop import NonFiniteLoss, PretrainResult, pretrain

__all__ = ["TrainConfig", "build_config", "load_config", "shipped_configs", "deepspeed_config", "pretrain",
           "PretrainResult", "NonFiniteLoss", "read_encoder", "load_model"]
