"""Held-out evaluation: the masked losses on clips the model never trains on, with the two baselines.

Every evaluation reads the same batches (eval.batches of the eval split, no shuffling, fixed crops)
and draws the same masks, one view of each clip whatever model.views, so its figures are comparable across
steps and runs. Every process
evaluates all of them (under ZeRO-3 each forward is a collective), so no reduction is needed.

Baselines: `mse_zero` is the MSE of predicting zeros for every masked patch (the targets are the
normalized input, so this is their mean square); `infonce_chance` is the InfoNCE of a model that
cannot tell the masked patches of a clip apart: ln(masked tokens of the clip), token-weighted.
"""

from __future__ import annotations

import math

import torch

from maeast.pretrain.config import PretrainConfig
from maeast.train import rng
from maeast.model.losses import normalize_patches

def masked_figures(out, norm_targets: bool) -> dict[str, float]:
    """Token-weighted sums of one batch's figures: tokens, mse, infonce, mse_zero, infonce_chance."""
    valid = ~out.target_pad  # [B, M] real masked tokens
    per_clip = valid.sum(dim=1).double()  # [B]
    tokens = float(per_clip.sum())
    target = normalize_patches(out.target.float()) if norm_targets else out.target.float()
    zero = (target.square().mean(dim=-1) * valid).sum()  # [] sum over real masked tokens
    sums = {"tokens": tokens, "mse_zero": float(zero),
            "infonce_chance": float((per_clip * per_clip.clamp(min=1).log()).sum())}
    for part in ("mse", "infonce"):
        if part in out.parts:
            sums[part] = float(out.parts[part]) * tokens
    return sums


@torch.no_grad()
def evaluate(engine, cfg: PretrainConfig, loader_factory) -> dict[str, float]:
    """Mean figures over eval.batches held-out batches; `loader_factory()` gives a fresh loader."""
    engine.eval()
    totals: dict[str, float] = {}
    clips = 0
    try:
        for index, batch in enumerate(loader_factory()):
            if index == cfg.eval.batches:
                break
            generator = rng.generator("eval_masks", cfg.run.seed, index)
            batch = batch.to(engine.device)
            out = engine.forward(batch.features, batch.padding_mask, generator, 1)  # one view, whatever model.views
            for key, value in masked_figures(out, cfg.model.norm_targets).items():
                totals[key] = totals.get(key, 0.0) + value
            clips += len(batch)
    finally:
        engine.train()
    tokens = max(totals.pop("tokens", 0.0), 1.0)
    result = {key: value / tokens for key, value in totals.items()}
    result["clips"] = clips
    result["mse_ratio"] = result["mse"] / result["mse_zero"] if "mse" in result and result["mse_zero"] else math.nan
    return result


def eval_line(record: dict) -> str:
    return (f"eval step {record['step']}: mse {record['mse']:.4f} (zeros {record['mse_zero']:.4f}), "
            f"infonce {record.get('infonce', math.nan):.3f} (chance {record['infonce_chance']:.3f})")
