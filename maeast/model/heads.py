"""Fine-tuning's classifier on the encoder: pool each layer's tokens (mean, or mean and std), weigh the
layers (or set them side by side), norm, (projector), Linear.

    head = make_head(FROZEN_PROTOCOLS["superb"], encoder, classes=50)  # on pooled features [B, L, D]
    model = Classifier(encoder, head, weighted=True)                   # fbank [B, T, F] -> logits [B, C]

Mean pooling over real tokens commutes with a weighted sum of layers and with any affine map, so a
frozen encoder's pooled per-layer features (`pooled_layers`) can be cached once and the head trained
on them alone: the head's input is the same whether it comes from the cache or from the encoder.
SUPERB's head (s3prl downstream/*/expert.py: projector = Linear(D -> 256) on every frame, then
downstream/model.py UtteranceLevel: MeanPooling over the real frames, Linear(256 -> C)) is therefore
exactly Linear(256 -> C)(Linear(D -> 256)(mean of the weighted layers)), which is what Head computes
with projector=256 and norm "none"; its layer weights (s3prl upstream/interfaces.py Featurizer) start
at zero, i.e. equal after the softmax. The "stats" protocol pools each layer to its mean and standard
deviation (per layer, so it caches the same way) and reads the layers side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from maeast.model.encoder import Encoder


def mean_pool(x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """x [B, ..., N, D] tokens, padding_mask [B, N] True = pad -> [B, ..., D], the mean of real tokens."""
    if padding_mask is None:
        return x.mean(dim=-2)
    keep = (~padding_mask).to(x.dtype)  # [B, N]
    keep = keep.view(keep.shape[0], *([1] * (x.ndim - 3)), keep.shape[1], 1)  # [B, 1.., N, 1]
    return (x * keep).sum(dim=-2) / keep.sum(dim=-2).clamp(min=1.0)


def stats_pool(x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """x [B, ..., N, D] tokens -> [B, ..., 2D]: the mean of the real tokens, then their standard deviation
    (divisor: their count). Statistics pooling, of encoder tokens or of fbank frames (maeast.probing)."""
    mean = mean_pool(x, padding_mask)
    std = mean_pool((x - mean.unsqueeze(-2)).square(), padding_mask).sqrt()
    return torch.cat([mean, std], dim=-1)


def pooled_layers(encoder: Encoder, features: torch.Tensor, padding_mask: torch.Tensor | None, weighted: bool,
                  generator: torch.Generator | None = None, stats: bool = False) -> torch.Tensor:
    """fbank [B, T, F] -> pooled tokens [B, L, D] (mean), or [B, L, 2D] (mean, then std) when stats: every
    layer (L = depth) when weighted, else the output."""
    out = encoder(features, padding_mask, layer_results=weighted, generator=generator)
    tokens = (torch.stack(out.layers, dim=1) if weighted else out.x.unsqueeze(1)).float()  # [B, L, N, D]
    return (stats_pool if stats else mean_pool)(tokens, out.padding_mask)


NORMS = {
    "layer": lambda dim: nn.LayerNorm(dim),  # SSAST's mlp_head
    "batch": lambda dim: nn.BatchNorm1d(dim, affine=False),  # MAE's linear probe: standardize each feature
    "none": lambda dim: nn.Identity(),
}


@dataclass(frozen=True)
class HeadSpec:
    """What a classifier head is: which layers it reads, its norm, its projector."""

    weighted: bool
    """True: a learned softmax-weighted sum of every layer (SUPERB's featurizer); False: the last layer."""
    norm: str
    """A key of NORMS, before the linear layers."""
    projector: int = 0
    """Width of a Linear(D -> projector) before the classifier (SUPERB's projector_dim); 0: none."""
    stats: bool = False
    """Pool each layer's tokens to their mean and standard deviation [2D] (statistics pooling, as the fbank
    mean+std baseline pools its frames), not the mean alone [D]."""
    concat: bool = False
    """With weighted: every layer's pooled features side by side [L x D] instead of a weighted sum."""


FROZEN_PROTOCOLS = {
    "superb": HeadSpec(weighted=True, norm="none", projector=256),  # the SUPERB benchmark's frozen upstream
    "linear_probe": HeadSpec(weighted=False, norm="batch", projector=0),  # MAE's linear probe
    # maeast's: every layer's tokens pooled to mean and std, side by side, standardized, Linear: the same
    # pooling as the fbank mean+std baseline (maeast.probing), read from every layer as SUPERB does.
    "stats": HeadSpec(weighted=True, norm="batch", projector=0, stats=True, concat=True),
}
"""The heads of a frozen encoder, by protocol name (FinetuneConfig.head.frozen)."""


class Head(nn.Module):
    """Pooled layers [B, L, D] -> logits [B, C]: softmax(w) . layers (w learned, zeros at start) or the
    layers side by side (concat), norm, projector (if any), Linear. `dim` is the pooled width (2 x the
    encoder's with stats); `stats` says which pooling the head reads (Classifier pools accordingly)."""

    def __init__(self, layers: int, dim: int, classes: int, norm: str = "layer", projector: int = 0,
                 stats: bool = False, concat: bool = False):
        super().__init__()
        self.stats, self.concat = stats, concat
        width = dim * layers if concat else dim
        self.layer_weights = nn.Parameter(torch.zeros(layers)) if layers > 1 and not concat else None
        self.norm = NORMS[norm](width)
        self.projector = nn.Linear(width, projector) if projector else None
        self.linear = nn.Linear(projector or width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] pooled layers -> logits [B, C]."""
        if self.concat:
            x = x.flatten(1)  # [B, L x D]
        elif self.layer_weights is None:
            x = x[:, 0]  # [B, D]
        else:
            x = torch.einsum("l,bld->bd", self.layer_weights.softmax(dim=0), x)
        x = self.norm(x)
        if self.projector is not None:
            x = self.projector(x)  # [B, P]
        return self.linear(x)  # [B, C]


class Classifier(nn.Module):
    """Encoder + Head, trained whole: fbank [B, T, F] (+ padding mask) -> logits [B, C]."""

    def __init__(self, encoder: Encoder, head: Head, weighted: bool):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.weighted = weighted

    def forward(self, features: torch.Tensor, padding_mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return self.head(pooled_layers(self.encoder, features, padding_mask, self.weighted, generator, self.head.stats))


def head_layers(encoder: Encoder, weighted: bool) -> int:
    """How many layers the head weighs: the encoder's depth, or 1."""
    return encoder.cfg.depth if weighted else 1


def make_head(spec: HeadSpec, encoder: Encoder, classes: int) -> Head:
    """A fresh head of `spec` on the encoder's layers."""
    return Head(head_layers(encoder, spec.weighted), encoder.cfg.dim * (2 if spec.stats else 1), classes, spec.norm,
                spec.projector, spec.stats, spec.concat)


def head_record(spec: HeadSpec, encoder: Encoder, protocol: str) -> dict:
    """The "head" entry of classifier.json: enough to rebuild the head (head_from_record)."""
    return {"layers": head_layers(encoder, spec.weighted), **asdict(spec), "protocol": protocol}


def head_from_record(record: dict, dim: int, classes: int) -> Head:
    """The head a classifier.json "head" entry describes (entries written before the projector, the
    statistics pooling or the concatenation: without them)."""
    stats = bool(record.get("stats", False))
    return Head(record["layers"], dim * (2 if stats else 1), classes, record["norm"], record.get("projector", 0),
                stats, bool(record.get("concat", False)))
