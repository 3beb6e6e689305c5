"""Precision, decided here only: bf16 autocast on CUDA when asked, fp32 everywhere else.

Training asks with the DeepSpeed config's bf16 flag ("auto": on CUDA; its weights are bf16 then, with an
fp32 master copy); a forward outside the engine on the engine's module (the online probe) runs as the
engine does: `module_autocast`, bf16 when the weights are. Inference (maeast.load_encoder, maeast embed,
maeast predict, maeast evaluate) asks for bf16 whenever it runs on CUDA: `inference_autocast`.
The model itself never chooses: it runs in whatever precision its caller set. On the CPU every context
here is a no-op, so CPU results do not depend on it.
"""

from __future__ import annotations

import torch


def autocast(device: torch.device | str, bf16: bool = True) -> torch.autocast:
    """The whole forward under bf16 autocast on CUDA when bf16; a no-op context otherwise."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and torch.device(device).type == "cuda")


def inference_autocast(device: torch.device | str) -> torch.autocast:
    """Inference with exported or fine-tuned weights: bf16 autocast on CUDA, fp32 on the CPU."""
    return autocast(device, bf16=True)


def module_autocast(module: torch.nn.Module) -> torch.autocast:
    """A forward of a training engine's module outside Engine.forward, in the engine's precision: bf16
    autocast when its weights are bf16 (DeepSpeed bf16, CUDA only), fp32 otherwise."""
    weight = next(module.parameters())
    return autocast(weight.device, bf16=weight.dtype == torch.bfloat16)
