"""The DeepSpeed config, generated from a recipe's optim section and micro batch: one source of truth for batch,
clipping and schedule. (Pretraining with model.views K counts its batch sizes in masked views: the micro batch
is data.batch_size views, read as data.batch_size / K clips, so these keys are those of K = 1.)

A JSON under launch/ adds only ZeRO, precision and offload knobs (ZERO_KEYS). Batch and clipping are
ours (train_batch_size, train_micro_batch_size_per_gpu, gradient_accumulation_steps, gradient_clipping: a
JSON may repeat our value but never differ); the optimizer and schedule are torch objects handed to DeepSpeed. A JSON that sets an
owned key to anything else, or names an optimizer or scheduler, is an error naming the key.

Precision: "bf16": {"enabled": "auto"} means bf16 weights (fp32 master copy in the optimizer) on CUDA,
fp32 on CPU; true on a machine without CUDA is an error. fp16 is not offered.
"""

from __future__ import annotations

import json
from pathlib import Path

from maeast.train.config import accumulation
from maeast.errors import MaeastError

ZERO_KEYS = ("zero_optimization", "bf16", "communication_data_type", "zero_allow_untested_optimizer",
             "zero_force_ds_cpu_optimizer", "wall_clock_breakdown", "prescale_gradients",
             "gradient_predivide_factor", "aio", "comms_logger")
"""What a JSON under launch/ may set: ZeRO, precision, offload and communication knobs."""

DEFAULT_ZERO = {"zero_optimization": {"stage": 0}, "bf16": {"enabled": "auto"}}
"""`maeast pretrain` without a JSON: plain data parallelism, bf16 on CUDA, fp32 on CPU."""


def read_zero_json(path: str | Path | None) -> dict:
    """A DeepSpeed JSON of ZeRO/precision/offload knobs (None: DEFAULT_ZERO)."""
    if path is None:
        return json.loads(json.dumps(DEFAULT_ZERO))
    path = Path(path)
    if not path.is_file():
        raise MaeastError(f"DeepSpeed config {path} not found; use one of launch/ds_zero1.json, ds_zero2.json, "
                          f"ds_zero3.json")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MaeastError(f"DeepSpeed config {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise MaeastError(f"DeepSpeed config {path} must be a JSON object")
    return data


def deepspeed_config(optim, micro_batch: int, world_size: int, zero: dict, cuda: bool,
                     where: str = "DeepSpeed config") -> dict:
    """The whole DeepSpeed config: batch and clipping from optim (an OptimConfig) and the micro batch,
    ZeRO/precision/offload from `zero`."""
    ours = {
        "train_batch_size": optim.global_batch,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation(optim.global_batch, micro_batch, world_size),
        "gradient_clipping": optim.clip_grad,
    }
    for key, value in zero.items():
        if key in ("optimizer", "scheduler"):
            raise MaeastError(f"{where} sets {key!r}; the optimizer and schedule come from the config's optim and "
                              f"schedule sections: delete {key!r} from the JSON")
        if key in ours and value != ours[key]:
            raise MaeastError(f"{where} sets {key}={value!r} but the config gives {ours[key]!r}; batch and "
                              f"clipping come from the config (optim.global_batch, data.batch_size, "
                              f"optim.clip_grad): delete {key!r} from the JSON")
        if key == "fp16":
            raise MaeastError(f"{where} sets fp16; maeast trains in bf16 (on CUDA) or fp32: use "
                              f"\"bf16\": {{\"enabled\": \"auto\"}}")
        if key not in ours and key not in ZERO_KEYS:
            raise MaeastError(f"{where} sets {key!r}, which a launch JSON may not set; allowed: "
                              f"{', '.join(ZERO_KEYS)}")
    out = {**ours, **{k: v for k, v in zero.items() if k not in ours}}
    out["bf16"] = {**zero.get("bf16", {}), "enabled": _bf16(zero.get("bf16", {}).get("enabled", "auto"), cuda, where)}
    out.setdefault("zero_optimization", {"stage": 0})
    stage = out["zero_optimization"].get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise MaeastError(f"{where}: zero_optimization.stage {stage!r} must be 0, 1, 2 or 3")
    out["zero_allow_untested_optimizer"] = True  # our torch AdamW: no DeepSpeed op to compile
    out["steps_per_print"] = 2 ** 31 - 1  # progress is ours (rank 0, rich)
    return out


def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(ds_config: dict) -> bool:
    device = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return device not in (None, "none")


def _bf16(enabled, cuda: bool, where: str) -> bool:
    if enabled == "auto":
        return cuda
    if isinstance(enabled, bool):
        if enabled and not cuda:
            raise MaeastError(f"{where} enables bf16 without a CUDA device; on CPU maeast trains in fp32: "
                              f"use \"bf16\": {{\"enabled\": \"auto\"}}")
        return enabled
    raise MaeastError(f"{where}: bf16.enabled must be true, false or \"auto\", got {enabled!r}")
