"""The batch record that every loader yields and every model consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Batch:
    """One batch of clips as features.

    features:     [B, T, F] log-mel fbank frames (float32).
    padding_mask: [B, T] bool, True where a frame is padding (None when no clip is padded).
    labels:       [B] int64 class ids (single-label), [B, C] float multi-hot (multi-label),
                  or None (pretraining).
    keys:         the B sample keys, in batch order.
    """

    features: torch.Tensor
    padding_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    keys: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        def move(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(move(self.features), move(self.padding_mask), move(self.labels), list(self.keys))

    def __len__(self) -> int:
        return self.features.shape[0]
