"""Mask invariants: exact counts, inverse permutation, per-clip draws, chunk blocks, determinism; the
official masks equal a transcription of the official code on the same random draws."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maeast.model import masking
from maeast.model.masking import (MASKS, chunk_mask, chunk_official_cover, chunk_official_mask, random_mask,
                                  retain_spans_mask, tf_mask, visible_count)

PATCH_GRID = (62, 8)  # 10 s of 16x16 patches
FRAME_GRID = (499, 1)  # 10 s of 2x128 frames


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def check_invariants(m, rows_real, grid, ratio):
    """ratio None: the mask sets its own visible count (retain_spans), the same for every clip."""
    rows, cols = grid
    B, N = rows_real.shape[0], rows * cols
    K = visible_count(N, ratio) if ratio is not None else int(m.n_keep[0])
    assert m.ids_keep.shape == m.keep_pad.shape == (B, K)
    assert m.ids_masked.shape == m.masked_pad.shape == (B, N - K)
    ids_shuffle = m.ids_restore.argsort(1)
    assert torch.equal(m.ids_restore.gather(1, ids_shuffle), torch.arange(N).expand(B, N))  # a permutation
    assert torch.equal(ids_shuffle[:, :K], m.ids_keep)  # restore is the inverse of [visible, masked, padding]
    for b in range(B):
        n_real = int(rows_real[b]) * cols
        n_keep = max(1, math.floor((1 - ratio) * n_real)) if ratio is not None else K  # the official int()
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


@pytest.mark.parametrize("name", sorted(set(MASKS) - {"mask_spans"}))  # its own: tests/test_official_spans.py
@pytest.mark.parametrize("grid", [PATCH_GRID, FRAME_GRID, (7, 3)])
def test_mask_invariants_with_padding(name, grid):
    rows = grid[0]
    rows_real = torch.tensor([rows, rows - 1, max(1, rows // 2), 1, rows])
    ratio = None if name == "retain_spans" else 0.75
    check_invariants(MASKS[name](rows_real, grid, 0.75, generator=gen()), rows_real, grid, ratio)


def test_ten_second_clips_keep_the_official_floor():
    m = random_mask(torch.tensor([62, 62]), PATCH_GRID, 0.75, gen())
    assert m.ids_keep.shape == (2, 124) and m.ids_masked.shape == (2, 372)
    assert not m.keep_pad.any() and not m.masked_pad.any()
    f = random_mask(torch.tensor([499]), FRAME_GRID, 0.75, gen())
    assert f.ids_keep.shape == (1, 124) and f.ids_masked.shape == (1, 375)  # int(0.25 * 499), not round's 125
    assert visible_count(10, 0.7) == 3 and visible_count(torch.tensor([10, 3]), 0.7).tolist() == [3, 1]


@pytest.mark.parametrize("name", sorted(set(MASKS) - {"chunk_official"}))  # one mask per batch, by design
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


# ---- the official masks, transcribed, on the same random draws ---------------------------------
# MAE-AST-Public mae_ast/models/mae_ast.py (MAE_AST.forward_mask) and fairseq
# fairseq/data/data_utils.py (compute_mask_indices, static lengths, no_overlap=False), with Python's
# `random` and numpy's `np.random` replaced by Replay, which hands out the draws our implementation made.

class Replay:
    """The draws recorded from maeast.model.masking, in the shapes the official calls consume them."""

    def __init__(self, ints=(), floats=()):
        self.ints = [t.flatten().tolist() for t in ints]  # randint draws, in order
        self.floats = list(floats)  # rand draws, in order

    def randrange(self, start, stop=None):  # random.randrange: the next recorded int
        while not self.ints[0]:
            self.ints.pop(0)
        value = self.ints[0].pop(0)
        assert (0 if stop is None else start) <= value < (start if stop is None else stop)
        return value

    def shuffle(self, idx):  # random.shuffle as a permutation: the recorded noise, highest first
        order = torch.argsort(self.floats.pop(0), descending=True).tolist()
        idx[:] = [idx[i] for i in order]


class NumpyReplay:
    """np.random.rand / np.random.choice(n or array, k, replace=False) from recorded uniform draws."""

    def __init__(self, u, start_noise, pick_noise):
        self.rands = [0.5] + u.tolist()  # the first rand() is all_num_mask's: unused when padding_mask is given
        self.start_noise, self.pick_noise, self.row = start_noise, pick_noise, None

    def rand(self):
        return self.rands.pop(0)

    def choice(self, a, k, replace=True):
        assert not replace
        if isinstance(a, (int, np.integer)):  # row self.row's span starts: a random k-subset of range(a)
            return torch.argsort(self.start_noise[self.row, :a])[:k].numpy()
        return a[torch.argsort(self.pick_noise[self.row, torch.as_tensor(a)])[:k].numpy()]  # the equal-count cut


def official_random_mask(T, B, prob, rnd):
    num_retained_tokens = max(1, int((1 - prob) * T))
    retained_idx, masked_idx = [], []
    for i in range(B):
        idx = list(range(T))
        rnd.shuffle(idx)
        retained_idx.append(idx[:num_retained_tokens])
        masked_idx.append(idx[num_retained_tokens:])
    return retained_idx, masked_idx


def official_chunk_mask(T, B, prob, feature_dim, ast_kernel_stride_chan, rnd):
    num_retained_tokens = max(1, int((1 - prob) * T))
    retained_idx, masked_idx = [], []
    cur_masked_idx = set()
    chunk_size = rnd.randrange(3, 5 + 1)
    chan_adjust = feature_dim // ast_kernel_stride_chan
    num_masked_tokens = T - num_retained_tokens
    while len(cur_masked_idx) <= num_masked_tokens:
        t_topleft = rnd.randrange(T)
        for t_offset in range(0, chunk_size):
            for c_offset in range(0, chunk_size):
                mask_cand = t_topleft + t_offset + chan_adjust * c_offset
                if (mask_cand < T):
                    cur_masked_idx.add(mask_cand)
    cur_masked_idx = list(cur_masked_idx)
    cur_masked_idx = cur_masked_idx[:num_masked_tokens]
    cur_retained_idx = list(set(range(T)).difference(cur_masked_idx))
    for i in range(B):
        retained_idx.append(cur_retained_idx)
        masked_idx.append(cur_masked_idx)
    return retained_idx, masked_idx


def compute_mask_indices(shape, padding_mask, mask_prob, mask_length, mask_type="static", mask_other=0.0,
                         min_masks=0, no_overlap=False, min_space=0, rng=None):
    assert mask_type == "static" and not no_overlap  # the only path MAE-AST's retain_spans takes
    bsz, all_sz = shape
    mask = np.full((bsz, all_sz), False)
    all_num_mask = int(mask_prob * all_sz / float(mask_length) + rng.rand())
    all_num_mask = max(min_masks, all_num_mask)
    mask_idcs = []
    for i in range(bsz):
        rng.row = i  # replay: the draws of row i (not in the official code)
        if padding_mask is not None:
            sz = all_sz - padding_mask[i].long().sum().item()
            num_mask = int(mask_prob * sz / float(mask_length) + rng.rand())
            num_mask = max(min_masks, num_mask)
        else:
            sz = all_sz
            num_mask = all_num_mask
        lengths = np.full(num_mask, mask_length)
        if sum(lengths) == 0:
            lengths[0] = min(mask_length, sz - 1)
        min_len = min(lengths)
        if sz - min_len <= num_mask:
            min_len = sz - num_mask - 1
        mask_idc = rng.choice(sz - min_len, num_mask, replace=False)
        mask_idc = np.asarray([mask_idc[j] + offset for j in range(len(mask_idc)) for offset in range(lengths[j])])
        mask_idcs.append(np.unique(mask_idc[mask_idc < sz]))
    min_len = min([len(m) for m in mask_idcs])
    for i, mask_idc in enumerate(mask_idcs):
        rng.row = i  # replay: the draws of row i (not in the official code)
        if len(mask_idc) > min_len:
            mask_idc = rng.choice(mask_idc, min_len, replace=False)
        mask[i, mask_idc] = True
    return mask


def official_retain_spans(B, T, padding_mask, prob, mask_length, rng):
    retained_indices = compute_mask_indices((B, T), padding_mask, prob, mask_length, "static", 0,
                                            min_masks=2, no_overlap=False, min_space=0, rng=rng)
    assert retained_indices[0].sum() > 0  # the official loop would draw again
    retained_idx = [np.where(retained_indices[i])[0] for i in range(B)]
    masked_idx = [np.where(~retained_indices[i])[0] for i in range(B)]
    return retained_idx, masked_idx


@pytest.fixture
def recorded(monkeypatch):
    """Record every draw maeast.model.masking makes: {'rand': [...], 'randint': [...]}."""
    draws = {"rand": [], "randint": []}
    rand, randint = masking._rand, masking._randint

    def rec_rand(*args, **kwargs):
        draws["rand"].append(out := rand(*args, **kwargs))
        return out

    def rec_randint(*args, **kwargs):
        draws["randint"].append(out := randint(*args, **kwargs))
        return out
    monkeypatch.setattr(masking, "_rand", rec_rand)
    monkeypatch.setattr(masking, "_randint", rec_randint)
    return draws


def index_sets(m, b):
    return set(m.ids_keep[b][~m.keep_pad[b]].tolist()), set(m.ids_masked[b][~m.masked_pad[b]].tolist())


@pytest.mark.parametrize("grid", [PATCH_GRID, FRAME_GRID, (7, 3)])
@pytest.mark.parametrize("seed", range(4))
def test_random_mask_equals_the_official_on_the_same_draws(recorded, grid, seed):
    B, T = 3, grid[0] * grid[1]
    m = random_mask(torch.full((B,), grid[0]), grid, 0.75, gen(seed))
    kept, masked = official_random_mask(T, B, 0.75, Replay(floats=list(recorded["rand"][0])))
    assert [index_sets(m, b) for b in range(B)] == [(set(k), set(x)) for k, x in zip(kept, masked)]


@pytest.mark.parametrize("grid,n_mels,stride", [(PATCH_GRID, 128, 16), (FRAME_GRID, 128, 128), ((20, 8), 128, 16),
                                                ((3, 8), 128, 16)])  # (3, 8), seed 5: a second round of blocks
@pytest.mark.parametrize("seed", range(6))
def test_chunk_official_equals_the_official_on_the_same_draws(recorded, grid, n_mels, stride, seed):
    B, T = 2, grid[0] * grid[1]
    m = chunk_official_mask(torch.full((B,), grid[0]), grid, 0.75, gen(seed))
    kept, masked = official_chunk_mask(T, B, 0.75, n_mels, stride, Replay(ints=recorded["randint"]))
    assert [index_sets(m, b) for b in range(B)] == [(set(k), set(x)) for k, x in zip(kept, masked)]


def test_chunk_official_is_one_mask_per_batch_and_follows_the_generator():
    rows_real = torch.full((4,), 62)
    a, b, c = (chunk_official_mask(rows_real, PATCH_GRID, 0.75, gen(s)) for s in (1, 1, 2))
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)
    assert all(torch.equal(a.mask[0], a.mask[i]) for i in range(4))


def test_chunk_official_blocks_wrap_in_token_index_space():
    """A block starting at the last mel column goes on in the next time row (the official indexing)."""
    covered = chunk_official_cover(40, 8, 3, torch.tensor([7]), n_masked=5)
    assert covered.nonzero().flatten().tolist() == [7, 8, 9, 15, 16]  # 7, 8, 9 | 15, 16, 17 | 23... cut at 5
    assert chunk_official_cover(40, 8, 3, torch.tensor([0]), n_masked=9) is None  # 9 tokens cover no more than 9


@pytest.mark.parametrize("grid", [PATCH_GRID, FRAME_GRID, (30, 1)])
@pytest.mark.parametrize("seed", range(6))
def test_retain_spans_equals_the_official_on_the_same_draws(recorded, grid, seed):
    rows = grid[0]
    rows_real = torch.tensor([rows, rows, rows - 3, rows // 2]) if seed % 2 else torch.full((4,), rows)
    B, T, cols = rows_real.shape[0], rows * grid[1], grid[1]
    m = retain_spans_mask(rows_real, grid, 0.75, gen(seed), span_length=10, span_prob=1.45)
    u, start_noise, pick_noise = recorded["rand"][-3:]  # the last draw (earlier ones kept nothing)
    padding_mask = torch.arange(T)[None, :] >= (rows_real * cols)[:, None]
    kept, masked = official_retain_spans(B, T, padding_mask, 1.45, 10, NumpyReplay(u, start_noise, pick_noise))
    for b in range(B):
        ours_kept, ours_masked = index_sets(m, b)
        n_real = int(rows_real[b]) * cols
        assert ours_kept == set(kept[b].tolist())  # the spans are the kept tokens
        assert ours_masked == {t for t in masked[b].tolist() if t < n_real}  # padding: neither set, here


@pytest.mark.parametrize("seed", range(4))
def test_retain_spans_keeps_whole_spans(seed):
    """One clip (nothing to even out): the kept tokens are runs of at least span_length (the spans)."""
    m = retain_spans_mask(torch.tensor([499]), FRAME_GRID, 0.75, gen(seed), span_length=10, span_prob=0.29)
    kept = (1 - m.mask[0]).int()
    edges = torch.diff(torch.cat([torch.tensor([0]), kept, torch.tensor([0])])).nonzero().flatten()
    starts, ends = edges[::2], edges[1::2]
    assert all(e - s >= 10 or e == 499 for s, e in zip(starts.tolist(), ends.tolist()))
    assert 0.1 < kept.float().mean() < 0.4  # span_prob 0.29: about 23% kept
