"""Training augmentation for full fine-tuning: SpecAugment masks and mixup, pure batched functions.

Every draw comes from an explicit torch.Generator; inputs are never written in place.

SpecAugment as SSAST applies it (torchaudio's FrequencyMasking / TimeMasking, one mask of each per
clip): width w = floor(u * max_width), start = floor(v * (size - w)). SSAST masks the raw log-mel with
0, *before* its normalization (src/dataloader.py __getitem__), so a masked cell ends up at
(0 - mean) / (2 * std), not at the dataset mean: `fill` = FbankConfig.pad_value gives exactly that
(data.input ssast). Without a fill (data.input mae_ast: raw log-mel that the model normalizes), a
masked cell takes its clip's mean over real frames.

Mixup as SSAST: with probability p a clip is mixed with another clip, weight lam ~ Beta(alpha, alpha)
(alpha 10), targets mixed alike. SSAST mixes waveforms before the fbank (src/dataloader.py _wav2fbank):
`wave_mixup`, data.input ssast, with the partner drawn from the batch (SSAST draws it from the whole
set). data.input mae_ast mixes fbank frames instead (`mixup`), as the features come from the loader.

Noise and roll as SSAST's --noise (src/dataloader.py, the last step of __getitem__, on the fbank
normalized to (x - mean) / (2 * std)): uniform noise of a random amplitude, then a circular shift in time.

The order is SSAST's: mixup, then SpecAugment, then noise and roll.
"""

from __future__ import annotations

import numpy as np
import torch


def _band(size: int, max_width: int, batch: int, generator: torch.Generator, device) -> torch.Tensor:
    """[B, size] bool: one band per row, width floor(u * max_width), start floor(v * (size - width))."""
    u = torch.rand(batch, 2, generator=generator).to(device)  # [B, 2]
    width = (u[:, 0] * max_width).floor()
    start = (u[:, 1] * (size - width).clamp(min=0)).floor()
    pos = torch.arange(size, device=device).unsqueeze(0)  # [1, size]
    return (pos >= start[:, None]) & (pos < (start + width)[:, None])


def spec_augment(features: torch.Tensor, padding_mask: torch.Tensor | None, freq_mask: int, time_mask: int,
                 generator: torch.Generator, fill: float | None = None) -> torch.Tensor:
    """features [B, T, F] -> a masked copy: one frequency band and one time band per clip set to `fill`
    (None: the clip's mean over its real frames); padded frames stay as they are."""
    if freq_mask == 0 and time_mask == 0:
        return features
    B, T, F = features.shape
    real = torch.ones(B, T, dtype=torch.bool, device=features.device) if padding_mask is None else ~padding_mask
    weights = real.to(features.dtype).unsqueeze(2)  # [B, T, 1]
    mean = (features * weights).sum(dim=(1, 2)) / (weights.sum(dim=(1, 2)) * F).clamp(min=1)  # [B]
    masked = torch.zeros(B, T, F, dtype=torch.bool, device=features.device)
    if freq_mask:
        masked |= _band(F, freq_mask, B, generator, features.device).unsqueeze(1)  # [B, 1, F]
    if time_mask:
        masked |= _band(T, time_mask, B, generator, features.device).unsqueeze(2)  # [B, T, 1]
    masked &= real.unsqueeze(2)
    if fill is not None:
        return features.masked_fill(masked, fill)
    return torch.where(masked, mean.view(B, 1, 1).to(features.dtype), features)


def beta(alpha: float, size: int, generator: torch.Generator) -> torch.Tensor:
    """[size] float32 draws of Beta(alpha, alpha), seeded from the torch generator."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size)).float()


def mixup(features: torch.Tensor, padding_mask: torch.Tensor | None, targets: torch.Tensor, prob: float,
          alpha: float, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """features [B, T, F], targets [B, C] float -> mixed copies: row i becomes lam_i * row i +
    (1 - lam_i) * row perm_i for the clips chosen with probability `prob` (lam_i = 1 otherwise).
    A mixed frame is padding only where both clips are padded."""
    B = features.shape[0]
    if prob == 0.0 or B < 2:
        return features, padding_mask, targets
    perm = torch.randperm(B, generator=generator).to(features.device)  # [B]
    chosen = torch.rand(B, generator=generator) < prob
    lam = torch.where(chosen, beta(alpha, B, generator), torch.ones(B)).to(features.device)  # [B]
    mixed = lam.view(B, 1, 1) * features + (1 - lam).view(B, 1, 1) * features[perm]
    mixed_targets = lam.view(B, 1) * targets + (1 - lam).view(B, 1) * targets[perm]
    if padding_mask is not None:
        partner = torch.where(chosen.to(padding_mask.device).unsqueeze(1), padding_mask[perm], padding_mask)
        padding_mask = padding_mask & partner
    return mixed, padding_mask, mixed_targets


def wave_mixup(wave: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, prob: float, alpha: float,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded clips [B, N] with their lengths [B], targets [B, C] float -> (mixed clips, mixed targets):
    SSAST's mixup on waveforms (YuanGongND/ssast src/dataloader.py _wav2fbank with filename2): for the
    clips chosen with probability `prob`, both clips minus their means, the partner zero-padded or cut to
    the clip's length, lam * clip + (1 - lam) * partner, minus its mean again; lam ~ Beta(alpha, alpha),
    targets lam * own + (1 - lam) * partner's. A mixed clip keeps its length. Draws from `generator`, in
    this order: the partners (randperm), the choice [B] (rand) and the weights (beta)."""
    B, N = wave.shape
    if prob == 0.0 or B < 2:
        return wave, targets
    perm = torch.randperm(B, generator=generator)  # [B]
    chosen = torch.rand(B, generator=generator) < prob  # [B]
    lam = torch.where(chosen, beta(alpha, B, generator), torch.ones(B))  # [B]
    inside = (torch.arange(N).unsqueeze(0) < lengths.unsqueeze(1)).to(wave.device)  # [B, N]
    count = lengths.clamp(min=1).to(wave.device, torch.float64)
    mean = (wave.double() * inside).sum(dim=1) / count  # [B], in float64 as maeast.features.fbank
    centred = (wave - mean.float().unsqueeze(1)) * inside  # [B, N]: zero past each clip's end
    lam_w = lam.to(wave.device).unsqueeze(1)  # [B, 1]
    mixed = (lam_w * centred + (1 - lam_w) * centred[perm.to(wave.device)]) * inside  # partner cut to the length
    mixed = (mixed - ((mixed.double().sum(dim=1) / count).float()).unsqueeze(1)) * inside
    out = torch.where(chosen.to(wave.device).unsqueeze(1), mixed, wave)
    lam_t = lam.to(targets.device).unsqueeze(1)
    return out, lam_t * targets + (1 - lam_t) * targets[perm.to(targets.device)]


MAX_SHIFT = 10
"""SSAST rolls by np.random.randint(-10, 10): -10..9 frames."""


def noise_roll(features: torch.Tensor, padding_mask: torch.Tensor | None, unit: float | None,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """features [B, T, F] -> (noisy, rolled copy, its padding mask rolled alike). Per clip, SSAST's

        fbank = fbank + torch.rand(fbank.shape[0], fbank.shape[1]) * np.random.rand() / 10
        fbank = torch.roll(fbank, np.random.randint(-10, 10), 0)

    drawn from `generator` in this order: the noise [B, T, F] (torch.rand), the amplitudes [B] (torch.rand)
    and the shifts [B] (torch.randint(-10, 10)). `unit` is one unit of SSAST's normalized features in ours:
    1.0 for features normalized with dataset statistics (an fbank preset with norm_mean/norm_std); None for
    raw log-mel: twice each clip's standard deviation over its real frames (SSAST divides by 2 x std)."""
    B, T, F = features.shape
    noise = torch.rand(B, T, F, generator=generator)  # [B, T, F]
    amplitude = torch.rand(B, generator=generator) / 10  # [B]
    shift = torch.randint(-MAX_SHIFT, MAX_SHIFT, (B,), generator=generator)  # [B]
    scale = amplitude.to(features.device)  # [B]
    if unit is None:
        real = (torch.ones(B, T, dtype=torch.bool, device=features.device) if padding_mask is None
                else ~padding_mask).unsqueeze(2).to(torch.float32)  # [B, T, 1]
        count = (real.sum(dim=(1, 2)) * F).clamp(min=2)  # [B]
        x = features.float()
        mean = (x * real).sum(dim=(1, 2)) / count
        std = (((x - mean.view(B, 1, 1)) ** 2 * real).sum(dim=(1, 2)) / count).sqrt()
        scale = scale * 2 * std
    else:
        scale = scale * unit
    noisy = features + (noise.to(features.device) * scale.view(B, 1, 1)).to(features.dtype)
    source = (torch.arange(T).unsqueeze(0) - shift.unsqueeze(1)) % T  # [B, T]: torch.roll's out[t] = x[t - k]
    source = source.to(features.device)
    rolled = noisy.gather(1, source.unsqueeze(2).expand(B, T, F))
    return rolled, None if padding_mask is None else padding_mask.gather(1, source)
