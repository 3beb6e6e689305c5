"""Precision, decided here only: bf16 autocast on CUDA when asked, fp32 everywhere else.

Training asks with the DeepSpeed config's bf16 flag ("auto": on CUDA; its weights are bf16 then, with an
fp32 master copy); inference (maeast.load_encoder, maeast embed) asks for bf16 whenever it runs on CUDA.
The model itself never chooses: it runs in whatever precision its caller set.
"""

from __future__ import annotations

import torch


def autocast(device: torch.device | str, bf16: bool = True) -> torch.autocast:
    """The whole forward under bf16 autocast on CUDA when bf16; a no-op context otherwise."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and torch.device(device).type == "cuda")
