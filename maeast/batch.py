"""The batch record that every loader yields and every model consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from maeast.features import FbankConfig, featurize


@dataclass
class Batch:
    """One batch of clips as features, or as waveforms whose features are computed where the batch goes.

    features:     [B, T, F] log-mel fbank frames (float32); None while the batch holds waveforms.
    padding_mask: [B, T] bool, True where a frame is padding (None when no clip is padded).
    labels:       [B] int64 class ids (single-label), [B, C] float multi-hot (multi-label),
                  or None (pretraining).
    keys:         the B sample keys, in batch order.
    waveform:     [B, N] float audio, zero-padded, with lengths [B] (real samples per row): what the
                  stream loader yields with loader.fbank_on "device"; `to(device)` then computes the
                  features on that device with `fbank` (an FbankConfig) at `sample_rate`, through the
                  same maeast.features.featurize that the loader's workers use.
    """

    features: torch.Tensor | None
    padding_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    keys: list[str] = field(default_factory=list)
    waveform: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    fbank: FbankConfig | None = None
    sample_rate: int = 16000

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """The batch on `device`, with its features (computed there from the waveforms if it holds them)."""
        def move(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        if self.features is None:
            features, mask = featurize(move(self.waveform), move(self.lengths), self.fbank, self.sample_rate)
            return Batch(features, mask, move(self.labels), list(self.keys))
        return Batch(move(self.features), move(self.padding_mask), move(self.labels), list(self.keys))

    def frames(self) -> torch.Tensor:
        """Real (unpadded) fbank frames of each clip, [B] int64, read where the batch is (call it on the
        loader's CPU batch, before `to(device)`, to learn the figures without waiting on a device)."""
        if self.features is None and self.fbank.target_frames is not None:  # every clip cut or padded to it
            return torch.full((len(self),), self.fbank.target_frames, dtype=torch.long)
        if self.features is None:
            return self.fbank.num_frames(self.lengths, self.sample_rate).long()
        if self.padding_mask is None:
            return torch.full((len(self),), self.features.shape[1], dtype=torch.long)
        return (~self.padding_mask).sum(dim=1)

    def __len__(self) -> int:
        return (self.features if self.features is not None else self.waveform).shape[0]
