"""Token masks: pure batched functions, one draw per clip, an explicit torch.Generator, no sample loop.

Every mask function has the signature `fn(rows_real [B], grid (rows, cols), ratio, generator, **opts)`
and returns a `Masking`. It only scores the tokens (lower = masked first); `masking_from_order` turns
any score into the index sets, so every mask shares the same invariants:

- clip b has n_real = rows_real[b] * cols real tokens; it keeps n_keep = max(1, floor((1 - ratio) *
  n_real)) of them visible (the official `int((1 - random_mask_prob) * T)`) and masks exactly the rest
  (n_masked = n_real - n_keep); padding tokens are neither visible nor masked;
- fixed shapes: the visible set has K = max(1, floor((1 - ratio) * N)) slots and the masked set
  M = N - K slots, N = rows * cols tokens of the padded batch. Both depend on the batch's shape only
  (no host sync, static for torch.compile); a clip with fewer real tokens fills its spare slots with
  filler flagged in keep_pad / masked_pad (the encoder gets them as key padding, the losses skip them).
  Without padding every slot is real. The one exception: retain_spans sets its own visible count,
  the same for every clip, so its K depends on the draw (a host sync);
- ids_restore is the inverse of the permutation ids_shuffle = [visible, masked, padding], with the
  visible and the masked tokens each in token (time-major) order.

The official code (MAE-AST-Public mae_ast/models/mae_ast.py, forward_mask) drew the chunk mask once
per batch because its Python loop was slow; `chunk` gives every clip its own mask of true 2-D squares
at the cost of a scatter. The official variants are here by name, equal to the official index sets on
the same random draws (tests/test_masking.py records the draws made here and replays them into a
transcription of the official code): `chunk_official` (one chunk size and one mask per batch, blocks
in token-index space) and `retain_spans` (wav2vec 2.0 span sampling, whose spans are the tokens
*kept*, as the official code does); `mask_spans` masks the same spans instead, as the official README and
the paper describe that model (75% masked at span_prob 1.45). Each picks its tokens from explicit draws in a pure function (`chunk_official_cover`,
`span_keep`); they loop only to draw again in the rare case the official loop would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from maeast.errors import MaeastError
from maeast.model.tokens import token_padding


@dataclass
class Masking:
    ids_keep: torch.Tensor  # [B, K] long: visible tokens, the first n_keep[b] real
    keep_pad: torch.Tensor  # [B, K] bool: True for a filler slot
    ids_masked: torch.Tensor  # [B, M] long: masked tokens (the targets), the first n_masked[b] real
    masked_pad: torch.Tensor  # [B, M] bool: True for a filler slot
    ids_restore: torch.Tensor  # [B, N] long: where each token sits in [visible, masked, padding]
    mask: torch.Tensor  # [B, N] float: 1 = masked real token, 0 = visible or padding
    token_pad: torch.Tensor  # [B, N] bool: True for a padding token
    n_keep: torch.Tensor  # [B] long


MaskFn = Callable[..., Masking]


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) drawn on the generator's device, moved to `device`."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where, dtype=dtype).to(device)


def _randint(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    where = generator.device if generator is not None else device
    return torch.randint(low, high, shape, generator=generator, device=where).to(device)


def visible_count(n: int | torch.Tensor, ratio: float) -> int | torch.Tensor:
    """Visible tokens out of n real ones: max(1, floor((1 - ratio) * n)), the official int() in float64."""
    if isinstance(n, torch.Tensor):
        return torch.floor((1.0 - ratio) * n.double()).long().clamp(min=1)
    return max(1, math.floor((1.0 - ratio) * n))


def masking_from_order(order: torch.Tensor, rows_real: torch.Tensor, grid: tuple[int, int],
                       ratio: float) -> Masking:
    """Mask the lowest-scored real tokens of each clip, keeping visible_count of them; order is [B, N]."""
    n_real = rows_real * grid[1]  # [B]
    n_keep = torch.minimum(visible_count(n_real, ratio), n_real)  # [B]
    return masking_from_counts(order, rows_real, grid, n_keep, visible_count(order.shape[1], ratio))


def masking_from_counts(order: torch.Tensor, rows_real: torch.Tensor, grid: tuple[int, int],
                        n_keep: torch.Tensor, K: int) -> Masking:
    """Mask the lowest-scored real tokens of each clip, keeping n_keep[b] <= K of them; order is [B, N]."""
    B, N = order.shape
    cols = grid[1]
    device = order.device
    token_pad = token_padding(rows_real, grid)  # [B, N]
    n_real = rows_real * cols  # [B]
    n_masked = n_real - n_keep  # [B]
    M = N - K

    rank = order.masked_fill(token_pad, math.inf).argsort(dim=1).argsort(dim=1)  # [B, N]
    masked = rank < n_masked[:, None]  # [B, N] real tokens only: padding ranks last
    category = torch.where(token_pad, 2, masked.long())  # 0 visible, 1 masked, 2 padding
    idx = torch.arange(N, device=device)
    ids_shuffle = (category * N + idx).argsort(dim=1)  # [B, N]
    ids_restore = ids_shuffle.argsort(dim=1)  # [B, N]

    slot_m = torch.arange(M, device=device)
    where_m = (n_keep[:, None] + slot_m).clamp(max=N - 1)  # [B, M]
    return Masking(
        ids_keep=ids_shuffle[:, :K],
        keep_pad=torch.arange(K, device=device)[None, :] >= n_keep[:, None],
        ids_masked=ids_shuffle.gather(1, where_m),
        masked_pad=slot_m[None, :] >= n_masked[:, None],
        ids_restore=ids_restore,
        mask=masked.float(),
        token_pad=token_pad,
        n_keep=n_keep,
    )


def random_mask(rows_real: torch.Tensor, grid: tuple[int, int], ratio: float,
                generator: torch.Generator | None = None) -> Masking:
    """Uniformly random tokens (MAE; the official 'random_mask')."""
    B, N = rows_real.shape[0], grid[0] * grid[1]
    return masking_from_order(_rand((B, N), generator, rows_real.device), rows_real, grid, ratio)


def chunk_mask(rows_real: torch.Tensor, grid: tuple[int, int], ratio: float,
               generator: torch.Generator | None = None, chunk_min: int = 3, chunk_max: int = 5) -> Masking:
    """Square blocks of side chunk_min..chunk_max tokens (SSAST), spans of frames when cols = 1.

    Blocks are drawn in sequence, each with its own side and a top-left corner that keeps it inside
    the clip's real grid; tokens are masked in block order, so the mask is whole blocks plus part of
    the last one. Enough blocks are drawn to cover the ratio with a wide margin; a token no block
    reached ranks after every block (in random order), so the count stays exact in any case.
    """
    rows, cols = grid
    B, N, device = rows_real.shape[0], rows * cols, rows_real.device
    area_min = chunk_min * min(chunk_min, cols)
    n_blocks = math.ceil(2.5 * N * math.log(1.0 / (1.0 - ratio)) / area_min) + 1

    side = _randint(chunk_min, chunk_max + 1, (B, n_blocks), generator, device)  # [B, nb]
    real = rows_real[:, None].clamp(min=1)  # [B, 1]
    side_t = torch.minimum(side, real)
    side_f = side.clamp(max=cols)
    t0 = (_rand((B, n_blocks), generator, device) * (real - side_t + 1)).long()
    t0 = torch.minimum(t0, real - side_t)
    f0 = (_rand((B, n_blocks), generator, device) * (cols - side_f + 1)).long().clamp(max=cols - side_f)

    d = torch.arange(chunk_max, device=device)
    dt, df = d[:, None], d[None, :]  # [S, 1], [1, S]
    inside = (dt < side_t[..., None, None]) & (df < side_f[..., None, None])  # [B, nb, S, S]
    token = (t0[..., None, None] + dt) * cols + f0[..., None, None] + df  # [B, nb, S, S]
    token = torch.where(inside, token, N).flatten(1)  # outside -> a spare column
    block = torch.arange(n_blocks, device=device)[None, :, None, None].expand_as(inside).flatten(1)
    first = torch.full((B, N + 1), n_blocks, dtype=torch.long, device=device)
    first.scatter_reduce_(1, token, block, reduce="amin")  # [B, N + 1] first block covering a token
    order = first[:, :N].double() + _rand((B, N), generator, device).double()
    return masking_from_order(order, rows_real, grid, ratio)


def tf_mask(rows_real: torch.Tensor, grid: tuple[int, int], ratio: float,
            generator: torch.Generator | None = None) -> Masking:
    """Whole time rows and whole frequency columns (Audio-MAE's time-frequency mask).

    Rows and columns are each put in random order and interleaved by the fraction of their axis
    they cover, so about the same fraction of rows and of columns is masked and their union is the
    exact ratio (the last line is partial). With frame tokens (cols = 1) it masks whole frames.
    """
    rows, cols = grid
    B, N, device = rows_real.shape[0], rows * cols, rows_real.device
    row_noise = _rand((B, rows), generator, device).masked_fill(
        torch.arange(rows, device=device)[None, :] >= rows_real[:, None], 2.0)
    row_score = (row_noise.argsort(1).argsort(1) + 1).double() / rows_real[:, None].clamp(min=1)  # [B, R]
    col_score = (_rand((B, cols), generator, device).argsort(1).argsort(1) + 1).double() / cols  # [B, C]
    order = torch.minimum(row_score[:, :, None], col_score[:, None, :]).reshape(B, N)
    order = order + _rand((B, N), generator, device).double() * (0.5 / N)  # ties below any gap 1/N
    return masking_from_order(order, rows_real, grid, ratio)


MIN_SPANS = 2
"""Fewest spans per clip in retain_spans (MAE-AST's compute_mask_indices(..., min_masks=2))."""


def chunk_official_cover(n_tokens: int, cols: int, side: int, starts: torch.Tensor,
                         n_masked: int) -> torch.Tensor | None:
    """The official chunk mask from its draws: [n_tokens] bool, True for the n_masked masked tokens.

    Block j covers tokens starts[j] + a + cols * b (a, b < side) below n_tokens: a square in
    token-index space, so on patches it wraps from the last mel column into the next time row, and on
    frames (cols = 1) it is a span of 2 side - 1. Blocks are taken in order until they cover more than
    n_masked tokens; the n_masked lowest indices of that union are masked (the official list(set)[:n],
    a set of small ints iterating in increasing order). None when the starts run out first.
    """
    device = starts.device
    a = torch.arange(side, device=device)
    offsets = (a[:, None] * cols + a[None, :]).flatten()  # [side^2]
    token = starts[:, None] + offsets  # [nb, side^2]
    block = torch.arange(starts.shape[0], device=device)[:, None].expand_as(token)
    token = torch.where(token < n_tokens, token, n_tokens)  # past the end -> a spare slot
    first = torch.full((n_tokens + 1,), starts.shape[0], dtype=torch.long, device=device)
    first.scatter_reduce_(0, token.flatten(), block.flatten(), reduce="amin")  # first block covering a token
    newly = torch.bincount(first[:n_tokens], minlength=starts.shape[0] + 1)[:-1]  # [nb] tokens each block adds
    enough = (newly.cumsum(0) > n_masked).nonzero()
    if enough.numel() == 0:
        return None
    covered = first[:n_tokens] <= enough[0, 0]  # the union of the blocks drawn by the official loop
    return covered & (covered.long().cumsum(0) <= n_masked)


def chunk_official_mask(rows_real: torch.Tensor, grid: tuple[int, int], ratio: float,
                        generator: torch.Generator | None = None, chunk_min: int = 3,
                        chunk_max: int = 5) -> Masking:
    """The official 'chunk_mask': one chunk side and one mask for the whole batch (chunk_official_cover).

    The blocks are drawn over the batch's N tokens, with top-left corners uniform in [0, N), as the
    official code drew them over its (never padded) batch; a clip with padding masks its n_masked
    real tokens first among the batch's masked ones, then among the rest, in index order.
    """
    rows, cols = grid
    N, device = rows * cols, rows_real.device
    n_masked = N - visible_count(N, ratio)
    side = int(_randint(chunk_min, chunk_max + 1, (1,), generator, device))
    area = len({a + cols * b for a in range(side) for b in range(side)})  # side^2, or 2 side - 1 on frames
    per_draw = math.ceil(2.5 * N * math.log(1.0 / (1.0 - ratio)) / area) + 1  # enough blocks, almost always
    starts = _randint(0, N, (per_draw,), generator, device)
    while (covered := chunk_official_cover(N, cols, side, starts, n_masked)) is None:  # rare: more blocks
        starts = torch.cat([starts, _randint(0, N, (per_draw,), generator, device)])
    idx = torch.arange(N, device=device)
    order = torch.where(covered, idx, N + idx).double()  # [N] the masked ones first, in index order
    return masking_from_order(order.expand(rows_real.shape[0], N), rows_real, grid, ratio)


def span_keep(n_real: torch.Tensor, n_tokens: int, round_u: torch.Tensor, start_noise: torch.Tensor,
              pick_noise: torch.Tensor, span_length: int, span_prob: float) -> torch.Tensor:
    """fairseq's compute_mask_indices (static lengths, overlap allowed) from its draws: [B, n_tokens] bool.

    Clip b (n_real[b] real tokens) gets num = max(MIN_SPANS, int(span_prob * n_real / span_length + u))
    spans (u = round_u[b]) whose starts are a random subset of [0, n_start) (the num lowest of
    start_noise[b, :n_start]); n_start = n_real - span_length, or num + 1 when that is not more than
    num. The spans' union is cut to the real tokens, then every clip keeps a random subset (the
    lowest pick_noise) of the smallest union's size, so all clips have the same count.
    """
    B, width = start_noise.shape
    device = start_noise.device
    num = torch.floor(span_prob * n_real.double() / span_length + round_u.double()).long().clamp(min=MIN_SPANS)
    n_start = torch.where(n_real - span_length <= num, num + 1, n_real - span_length)  # [B]
    col = torch.arange(width, device=device)
    rank = start_noise.masked_fill(col[None, :] >= n_start[:, None], math.inf).argsort(1).argsort(1)
    is_start = (rank < num[:, None])[:, :n_tokens].long()  # [B, n_tokens]; starts past the grid cover nothing
    ends = is_start.cumsum(1)  # [B, N] starts at or before t
    before = torch.nn.functional.pad(ends, (span_length, 0))[:, :n_tokens]  # starts at or before t - span_length
    real = torch.arange(n_tokens, device=device)[None, :] < n_real[:, None]
    covered = (ends > before) & real  # [B, N]
    fewest = covered.sum(1).min()
    pick = pick_noise.masked_fill(~covered, math.inf).argsort(1).argsort(1)
    return covered & (pick < fewest)


def _span_draws(rows_real: torch.Tensor, grid: tuple[int, int], generator: torch.Generator | None,
                span_length: int, span_prob: float):
    """Endless span_keep draws over the batch (at most 100): [B, N] bool, the spans' union evened out."""
    rows, cols = grid
    B, N, device = rows_real.shape[0], rows * cols, rows_real.device
    n_real = rows_real * cols
    most_spans = max(MIN_SPANS, math.floor(span_prob * N / span_length) + 1)
    width = max(N, most_spans + 1)  # the widest start range, n_real - span_length or num + 1
    f64 = torch.float64  # no ties among the noise: the subsets are exact
    for _ in range(100):
        yield span_keep(n_real, N, _rand((B,), generator, device, f64), _rand((B, width), generator, device, f64),
                        _rand((B, N), generator, device, f64), span_length, span_prob)


def retain_spans_mask(rows_real: torch.Tensor, grid: tuple[int, int], ratio: float,
                      generator: torch.Generator | None = None, span_length: int = 10,
                      span_prob: float = 1.45) -> Masking:
    """The official code's 'retain_spans': wav2vec 2.0 spans (span_keep) are the *kept* tokens, the rest masked.

    MAE-AST's forward_mask names fairseq's compute_mask_indices output `retained_indices` and masks its
    complement, so the spans' coverage is what stays visible: span_prob 1.45, the value the README
    gives for "an average 75% masking ratio", keeps 74% of the tokens (masks 26%) of 10 s clips in
    batches of 8 (measured over 200 draws, frame and patch grids alike); 0.29 keeps 23%. `ratio` is
    not used. Every clip keeps the same count, the official batch shape (a host sync: K depends on the
    draw), and the draw is repeated while a clip would keep nothing, as the official loop does.
    `mask_spans` is the README's and the paper's reading: the same spans, masked.
    """
    n_real = rows_real * grid[1]
    for keep in _span_draws(rows_real, grid, generator, span_length, span_prob):
        K = int(keep[0].sum())
        if K > 0:
            return masking_from_counts(keep.double(), rows_real, grid, torch.full_like(n_real, K), K)
    raise MaeastError(f"retain_spans kept no token in 100 draws: a clip has {int(n_real.min())} tokens; drop clips "
                      f"shorter than model.span_length ({span_length}) tokens")


def mask_spans_mask(rows_real: torch.Tensor, grid: tuple[int, int], ratio: float,
                    generator: torch.Generator | None = None, span_length: int = 10,
                    span_prob: float = 1.45) -> Masking:
    """wav2vec 2.0 spans *masked*, as MAE-AST-Public's README ("1.45 ... creates an average 75% masking
    ratio") and the paper (75% for both released models) describe the frame chunk model: the draws of
    retain_spans (span_keep), the spans' union masked and the rest visible, so span_prob 1.45 masks about
    74% of the tokens. As in fairseq's compute_mask_indices, every clip masks the same count (the batch's
    fewest), so a clip with padding keeps more visible. `ratio` is not used; the draw is repeated while a
    clip would keep nothing visible."""
    n_real = rows_real * grid[1]
    for masked in _span_draws(rows_real, grid, generator, span_length, span_prob):
        n_keep = n_real - masked.sum(1)  # [B]
        if bool((n_keep > 0).all()):
            return masking_from_counts((~masked).double(), rows_real, grid, n_keep, int(n_keep.max()))
    raise MaeastError(f"mask_spans masked every token in 100 draws (model.span_prob {span_prob} on clips of "
                      f"{int(n_real.min())} tokens); lower model.span_prob")


MASKS: dict[str, MaskFn] = {"random": random_mask, "chunk": chunk_mask, "tf": tf_mask,
                            "chunk_official": chunk_official_mask, "retain_spans": retain_spans_mask,
                            "mask_spans": mask_spans_mask}
"""Mask functions by name (ModelConfig.mask_type)."""

MASK_OPTIONS: dict[str, tuple[str, ...]] = {"chunk": ("chunk_min", "chunk_max"),
                                            "chunk_official": ("chunk_min", "chunk_max"),
                                            "retain_spans": ("span_length", "span_prob"),
                                            "mask_spans": ("span_length", "span_prob")}
"""ModelConfig fields that a mask function takes as keyword options."""
