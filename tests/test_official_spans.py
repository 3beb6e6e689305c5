"""Spans both ways: retain_spans keeps the wav2vec 2.0 spans visible (MAE-AST-Public's code), mask_spans masks
them (its README and the paper: "an average 75% masking ratio" at random_mask_prob 1.45)."""

from __future__ import annotations

import pytest
import torch

from maeast.model import build_model
from maeast.model.masking import MASKS, mask_spans_mask, retain_spans_mask

FRAME_GRID = (499, 1)  # 10 s of 2x128 frames
PATCH_GRID = (62, 8)  # 10 s of 16x16 patches


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_both_are_registered_with_their_options():
    assert MASKS["mask_spans"] is mask_spans_mask and MASKS["retain_spans"] is retain_spans_mask


@pytest.mark.parametrize("grid", [FRAME_GRID, PATCH_GRID])
@pytest.mark.parametrize("seed", range(3))
def test_the_same_draws_give_complementary_masks(grid, seed):
    rows_real = torch.full((8,), grid[0])
    kept = retain_spans_mask(rows_real, grid, 0.75, gen(seed), span_length=10, span_prob=1.45)
    masked = mask_spans_mask(rows_real, grid, 0.75, gen(seed), span_length=10, span_prob=1.45)
    assert torch.equal(masked.mask, 1 - kept.mask)  # the spans: visible in one, masked in the other


@pytest.mark.parametrize("grid", [FRAME_GRID, PATCH_GRID])
def test_the_masked_share_at_1_45_is_about_75_percent(grid):
    """The README's figure holds for mask_spans only; retain_spans masks the complement, about 26%."""
    rows_real = torch.full((8,), grid[0])
    spans = [float(mask_spans_mask(rows_real, grid, 0.75, gen(s)).mask.mean()) for s in range(20)]
    share = sum(spans) / len(spans)
    assert 0.70 < share < 0.78
    kept = [float(retain_spans_mask(rows_real, grid, 0.75, gen(s)).mask.mean()) for s in range(20)]
    assert abs(sum(kept) / len(kept) - (1 - share)) < 1e-6  # float32 means


@pytest.mark.parametrize("grid", [FRAME_GRID, PATCH_GRID, (7, 3)])
def test_mask_spans_invariants_with_padding(grid):
    """Every clip masks the same count (fairseq's evening out), a padded clip keeps more visible; the index
    sets partition the real tokens and restore is the inverse permutation."""
    rows, cols = grid
    rows_real = torch.tensor([rows, rows - 1, max(2, rows // 2), rows])
    m = mask_spans_mask(rows_real, grid, 0.75, gen(4), span_length=2 if rows < 10 else 10)
    B, N = rows_real.shape[0], rows * cols
    ids_shuffle = m.ids_restore.argsort(1)
    assert torch.equal(m.ids_restore.gather(1, ids_shuffle), torch.arange(N).expand(B, N))
    n_masked = {int((~m.masked_pad[b]).sum()) for b in range(B)}
    assert len(n_masked) == 1
    for b in range(B):
        n_real = int(rows_real[b]) * cols
        keep, masked = m.ids_keep[b][~m.keep_pad[b]], m.ids_masked[b][~m.masked_pad[b]]
        assert int(m.n_keep[b]) == len(keep) == n_real - len(masked) > 0
        assert set(keep.tolist()) | set(masked.tolist()) == set(range(n_real))
        assert not set(keep.tolist()) & set(masked.tolist())
        assert int(m.mask[b].sum()) == len(masked) and torch.all(m.mask[b, masked] == 1)


def test_a_model_trains_with_mask_spans():
    model = build_model("tiny", mask_type="mask_spans", span_prob=1.45, patch_time=2, patch_freq=128, dropout=0.0,
                        attn_dropout=0.0, input_dropout=0.0, layerdrop=0.0)
    g = gen(1)
    x = torch.randn(3, 160, 128, generator=g) - 4.0
    pad = torch.arange(160)[None, :] >= torch.tensor([160, 130, 100])[:, None]
    out = model(x, padding_mask=pad, generator=gen(2))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
