"""Mask invariants: exact counts, inverse permutation, per-clip draws, chunk blocks, determinism."""

import pytest
import torch
import torch.nn.functional as F

from maeast.model.masking import MASKS, chunk_mask, random_mask, tf_mask, visible_count

PATCH_GRID = (62, 8)  # 10 s of 16x16 patches
FRAME_GRID = (499, 1)  # 10 s of 2x128 frames


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def check_invariants(m, rows_real, grid, ratio):
    rows, cols = grid
    B, N = rows_real.shape[0], rows * cols
    K = visible_count(N, ratio)
    assert m.ids_keep.shape == m.keep_pad.shape == (B, K)
    assert m.ids_masked.shape == m.masked_pad.shape == (B, N - K)
    ids_shuffle = m.ids_restore.argsort(1)
    assert torch.equal(m.ids_restore.gather(1, ids_shuffle), torch.arange(N).expand(B, N))  # a permutation
    assert torch.equal(ids_shuffle[:, :K], m.ids_keep)  # restore is the inverse of [visible, masked, padding]
    for b in range(B):
        n_real = int(rows_real[b]) * cols
        n_keep = max(1, round((1 - ratio) * n_real))
        n_masked = n_real - n_keep
        assert int(m.n_keep[b]) == n_keep and int((~m.keep_pad[b]).sum()) == n_keep
        assert int((~m.masked_pad[b]).sum()) == n_masked
        keep = m.ids_keep[b][~m.keep_pad[b]]
        masked = m.ids_masked[b][~m.masked_pad[b]]
        assert torch.equal(ids_shuffle[b, n_keep:n_real], masked)
        real = set(range(n_real))  # time-major: real tokens are the first rows
        assert set(keep.tolist()) | set(masked.tolist()) == real
        assert not set(keep.tolist()) & set(masked.tolist())
        assert torch.equal(keep, keep.sort().values) and torch.equal(masked, masked.sort().values)
        assert int(m.mask[b].sum()) == n_masked and torch.all(m.mask[b, masked] == 1)
        assert torch.equal(m.token_pad[b], torch.arange(N) >= n_real)


@pytest.mark.parametrize("name", sorted(MASKS))
@pytest.mark.parametrize("grid", [PATCH_GRID, FRAME_GRID, (7, 3)])
def test_mask_invariants_with_padding(name, grid):
    rows = grid[0]
    rows_real = torch.tensor([rows, rows - 1, max(1, rows // 2), 1, rows])
    check_invariants(MASKS[name](rows_real, grid, 0.75, generator=gen()), rows_real, grid, 0.75)


def test_ten_second_patch_clip_keeps_124_of_496():
    m = random_mask(torch.tensor([62, 62]), PATCH_GRID, 0.75, gen())
    assert m.ids_keep.shape == (2, 124) and m.ids_masked.shape == (2, 372)
    assert not m.keep_pad.any() and not m.masked_pad.any()


@pytest.mark.parametrize("name", sorted(MASKS))
def test_masks_differ_across_the_batch_and_follow_the_generator(name):
    rows_real = torch.full((8,), 62)
    a = MASKS[name](rows_real, PATCH_GRID, 0.75, generator=gen(1))
    b = MASKS[name](rows_real, PATCH_GRID, 0.75, generator=gen(1))
    c = MASKS[name](rows_real, PATCH_GRID, 0.75, generator=gen(2))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_restore, b.ids_restore)
    assert not torch.equal(a.mask, c.mask)
    assert len({tuple(row.tolist()) for row in a.mask.bool()}) == 8  # every clip its own mask


def fully_masked_window(mask_2d, side_t, side_f):
    """[R, C] 0/1 -> [R, C] bool: the token lies in some side_t x side_f window that is all masked."""
    x = mask_2d[None, None]
    window_all = -F.max_pool2d(-x, (side_t, side_f), stride=1)  # [1, 1, R-st+1, C-sf+1]: 1 if all masked
    covered = F.conv_transpose2d(window_all, torch.ones(1, 1, side_t, side_f))  # back onto the tokens
    return covered[0, 0] > 0


def uncovered(mask_flat, grid, side):
    rows, cols = grid
    m2 = mask_flat.reshape(rows, cols)
    cover = fully_masked_window(m2, side, min(side, cols))
    return int((m2.bool() & ~cover).sum())


@pytest.mark.parametrize("grid", [PATCH_GRID, FRAME_GRID])
def test_chunk_mask_is_made_of_3_to_5_blocks(grid):
    rows_real = torch.full((6,), grid[0])
    m = chunk_mask(rows_real, grid, 0.75, gen(3), chunk_min=3, chunk_max=5)
    for b in range(6):
        # Every masked token lies in a fully masked block of side >= 3, except part of the last block.
        assert uncovered(m.mask[b], grid, 3) <= 5 * 5 - 1
    r = random_mask(rows_real, grid, 0.75, gen(3))  # the check can fail: a random mask leaves many out
    assert min(uncovered(r.mask[b], grid, 3) for b in range(6)) > 25


def test_chunk_blocks_are_no_larger_than_chunk_max():
    grid = (40, 8)
    m = chunk_mask(torch.full((4,), 40), grid, 0.3, gen(4), chunk_min=3, chunk_max=3)
    for b in range(4):
        m2 = m.mask[b].reshape(grid)
        # With 3x3 blocks only, no fully masked 4x4 window can be made of fewer than 2 blocks: at a low
        # ratio most masked tokens lie in no 4x4 window, unlike with 5x5 blocks.
        big = fully_masked_window(m2, 4, 4)
        assert int((m2.bool() & big).sum()) < 0.5 * int(m2.sum())
    m5 = chunk_mask(torch.full((4,), 40), grid, 0.3, gen(4), chunk_min=5, chunk_max=5)
    assert all(uncovered(m5.mask[b], grid, 5) <= 24 for b in range(4))


def test_tf_mask_masks_whole_rows_and_columns():
    rows_real = torch.full((4,), 62)
    m = tf_mask(rows_real, PATCH_GRID, 0.75, gen(5))
    for b in range(4):
        m2 = m.mask[b].reshape(PATCH_GRID).bool()
        in_line = m2.all(dim=1, keepdim=True) | m2.all(dim=0, keepdim=True)  # full row or full column
        assert int((m2 & ~in_line).sum()) <= max(PATCH_GRID)  # only the last line is partial
        assert m2.all(dim=1).sum() > 10 and m2.all(dim=0).sum() >= 2  # both axes are used


def test_generator_on_its_own_device_is_used():
    rows_real = torch.full((2,), 10)
    assert torch.equal(random_mask(rows_real, (10, 8), 0.5, gen(7)).mask,
                       random_mask(rows_real, (10, 8), 0.5, gen(7)).mask)
    torch.manual_seed(0)
    a = random_mask(rows_real, (10, 8), 0.5, None).mask
    torch.manual_seed(0)
    assert torch.equal(a, random_mask(rows_real, (10, 8), 0.5, None).mask)  # None: the global RNG
