"""Weight initialisation: the one place that sets initial values.

'official' follows the MAE-AST code: fairseq's init_bert_params on both transformer stacks (every
Linear weight normal(0, 0.02), biases 0, LayerNorm 1 / 0), PyTorch's default init for the token
projection, the encoder-to-decoder projection and the two heads, and a mask token drawn uniform in
[0, 1). 'mae' follows facebookresearch/mae: xavier-uniform for every Linear, biases 0, a mask token
normal(0, 0.02).
"""

from __future__ import annotations

import torch.nn as nn

from maeast.model.transformer import Transformer


def _bert_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        nn.init.zeros_(module.bias)


def _xavier_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


def init_weights(module: nn.Module, scheme: str = "official") -> None:
    """Initialise `module` (an Encoder, a Decoder or a whole model) in place."""
    for m in module.modules():
        if scheme == "official" and isinstance(m, Transformer):
            m.apply(_bert_linear)
        elif scheme == "mae":
            _xavier_linear(m)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for name, p in module.named_parameters():
        if name.endswith("mask_token") and scheme == "official":
            nn.init.uniform_(p)  # [0, 1), as the official decoder_mask_emb
        elif name.endswith("mask_token"):
            nn.init.normal_(p, std=0.02)
