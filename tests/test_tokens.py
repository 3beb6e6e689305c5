"""Tokens: patchify / unpatchify, the official token order, token counts, positions."""

import math
import warnings

import pytest
import torch
import torch.nn as nn

from maeast.errors import MaeastError
from maeast.model import make_config, patchify, unpatchify
from maeast.model.encoder import Encoder
from maeast.model.positions import sinusoid
from maeast.model.tokens import grid_shape, pad_freq, real_rows, token_padding


@pytest.mark.parametrize("T,F,pt,pf", [(998, 128, 16, 16), (998, 128, 2, 128), (101, 128, 24, 24), (64, 32, 4, 8)])
def test_patchify_unpatchify_round_trip(T, F, pt, pf):
    x = torch.randn(3, T, F, generator=torch.Generator().manual_seed(0))
    x = pad_freq(x, pf)
    rows, cols = grid_shape(T, x.shape[-1], pt, pf)
    tokens = patchify(x, pt, pf)
    assert tokens.shape == (3, rows * cols, pt * pf)
    back = unpatchify(tokens, (rows, cols), pt, pf)
    assert torch.equal(back, x[:, : rows * pt])  # trailing frames short of a patch are dropped
    assert torch.equal(patchify(back, pt, pf), tokens)


@pytest.mark.parametrize("pt,pf", [(16, 16), (2, 128), (4, 32)])
def test_patchify_matches_official_unfold_order(pt, pf):
    """The official model cuts tokens with nn.Unfold on [B, 1, T, F]: same tokens, same order."""
    x = torch.randn(2, 998, 128)
    unfold = nn.Unfold(kernel_size=(pt, pf), stride=(pt, pf))
    official = unfold(x.unsqueeze(1)).transpose(-1, -2)  # [B, N, pt * pf]
    assert torch.equal(patchify(x, pt, pf), official)


def test_token_counts_for_ten_seconds():
    assert make_config("base").tokens_for(998) == 62 * 8 == 496
    assert make_config("base_frame").tokens_for(998) == 499
    assert make_config("base", patch_time=24, patch_freq=24).tokens_for(998) == 41 * 6


def test_pad_freq_pads_with_zeros_and_warns_in_the_encoder():
    x = torch.ones(1, 48, 128)
    padded = pad_freq(x, 24)
    assert padded.shape == (1, 48, 144) and torch.all(padded[..., 128:] == 0) and torch.equal(padded[..., :128], x)
    with pytest.warns(UserWarning, match="zero-padded to 144"):
        Encoder(make_config("tiny", patch_time=24, patch_freq=24))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Encoder(make_config("tiny"))  # 16 divides 128: no warning


def test_patchify_rejects_bins_that_are_not_a_multiple():
    with pytest.raises(MaeastError, match="pad_freq"):
        patchify(torch.zeros(1, 32, 100), 16, 16)


def test_token_padding_keeps_only_rows_made_of_real_frames():
    pm = torch.zeros(3, 100, dtype=torch.bool)
    pm[1, 90:] = True  # 90 real frames: 5 full rows of 16
    pm[2, 33:] = True  # 33 real frames: 2 rows
    rows = real_rows(pm, 3, 100, 16, pm.device)
    assert rows.tolist() == [6, 5, 2]
    pad = token_padding(rows, (6, 8))
    assert pad.sum(1).tolist() == [0, 8, 32]
    assert not pad[1, :40].any() and pad[1, 40:].all()
    assert real_rows(None, 2, 100, 16, pm.device).tolist() == [6, 6]


def test_sinusoid_matches_the_official_table():
    n, d = 50, 64
    pe = torch.zeros(n, d)
    for pos in range(n):
        for i in range(0, d, 2):
            angle = pos / (10000 ** (i / d))
            pe[pos, i], pe[pos, i + 1] = math.sin(angle), math.cos(angle)
    assert torch.allclose(sinusoid(n, d), pe, atol=1e-5)
