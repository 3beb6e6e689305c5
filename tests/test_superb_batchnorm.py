"""The input BatchNorm both ways: ours leaves padded frames out of the training statistics, s3prl's trainable
upstream (nn.BatchNorm2d on zero-padded fbanks) counts them: model.input_norm batchnorm_padded, offered to
SUPERB fine-tuning as model.input_norm."""

from __future__ import annotations

import json

import pytest
import torch

from maeast.errors import MaeastError
from maeast.finetune.sections import ModelSection
from maeast.model import build_model
from maeast.model.norm import MaskedBatchNorm


def padded_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 16, generator=g) * 2.0 - 5.0  # log-mel-like values, far from 0
    pad = torch.arange(50)[None, :] >= torch.tensor([50, 31, 12])[:, None]
    return x.masked_fill(pad[..., None], 0.0), pad  # the loader's zero-padded fbank


def test_counting_padding_is_batchnorm2d_on_the_zero_padded_batch():
    x, pad = padded_batch()
    theirs = torch.nn.BatchNorm2d(1, affine=False).train()
    expected = theirs(x.unsqueeze(1)).squeeze(1) * 0.5
    ours = MaskedBatchNorm(0.5, count_padding=True).train()
    y = ours(x, pad)
    assert torch.allclose(y[~pad], expected[~pad], atol=1e-5)  # real frames; padded ones come out 0
    assert not y[pad].any()
    assert torch.allclose(ours.running_mean, theirs.running_mean) and torch.allclose(ours.running_var, theirs.running_var)
    real_only = MaskedBatchNorm(0.5).train()
    assert not torch.allclose(real_only(x, pad)[~pad], y[~pad], atol=1e-3)  # the two differ with padding


def test_in_eval_mode_both_use_the_running_statistics():
    x, pad = padded_batch()
    a, b = MaskedBatchNorm(0.5), MaskedBatchNorm(0.5, count_padding=True)
    for m in (a, b):
        m.running_mean.fill_(-4.0)
        m.running_var.fill_(3.0)
        m.eval()
    assert torch.equal(a(x, pad), b(x, pad))


def test_an_encoder_loads_either_way_and_the_option_is_checked():
    ours = build_model("tiny")
    theirs = build_model("tiny", input_norm="batchnorm_padded")
    theirs.load_state_dict(ours.state_dict())  # the same buffers: a checkpoint fine-tunes either way
    assert ModelSection(input_norm="batchnorm_padded").input_norm == "batchnorm_padded"
    assert ModelSection().input_norm is None
    with pytest.raises(MaeastError, match="model.input_norm 'batch' unknown"):
        ModelSection(input_norm="batch")


def test_er_fine_tunes_with_s3prls_batchnorm(iemocap, tmp_path):  # noqa: F811  (a fixture of tests.official_trees)
    from maeast.finetune import finetune, load_finetune_config
    from maeast.shards.build import build_shards
    build_shards("iemocap", iemocap, tmp_path / "iemocap")
    cfg = load_finetune_config("finetune_tiny", task="iemocap", shards=str(tmp_path / "iemocap"),
                               run_dir=str(tmp_path / "er"), folds=[2],
                               overrides=["--schedule.steps", "2", "--model.input_norm", "batchnorm_padded"])
    result = finetune(cfg)
    assert json.loads((tmp_path / "er" / "model.json").read_text())["model"]["input_norm"] == "batchnorm_padded"
    assert result.folds[0]["history"] and result.folds[0]["choice"]["epoch"] is not None
