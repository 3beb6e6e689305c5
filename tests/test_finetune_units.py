"""Fine-tuning pieces without the engine: metrics, augmentation, pooling, heads, lr scales, configs, tasks."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from maeast.errors import MaeastError
from maeast.finetune.augment import mixup, spec_augment
from maeast.finetune.cache import epoch_rows, unique_rows
from maeast.finetune.config import load_finetune_config
from maeast.model.heads import FROZEN_PROTOCOLS, Classifier, Head, HeadSpec, mean_pool, pooled_layers
from maeast.train.config import OptimConfig
from maeast.train.optim import build_optimizer
from maeast.finetune.metrics import average_precision, confusion_matrix, mean_average_precision, score, summarize
from maeast.finetune.tasks import TASKS, get_task
from maeast.model import Encoder, make_config


# ---- metrics ------------------------------------------------------------------------------------

def test_average_precision_by_hand():
    # Scores falling: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.6 (neg), 0.5 (pos). Precision at each positive:
    # 1/1, 2/3, 3/5; each adds recall 1/3 -> AP = (1 + 2/3 + 3/5) / 3.
    scores = torch.tensor([0.6, 0.9, 0.5, 0.8, 0.7])
    targets = torch.tensor([0, 1, 1, 0, 1])
    assert average_precision(scores, targets) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # A tie between a positive and a negative at the top is one threshold: precision 1/2 there.
    tied = torch.tensor([0.9, 0.9, 0.1])
    assert average_precision(tied, torch.tensor([1, 0, 0])) == pytest.approx(0.5)
    assert math.isnan(average_precision(scores, torch.zeros(5)))


def test_mean_average_precision_skips_classes_without_positives():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.7, 0.6, 0.2], [0.1, 0.3, 0.9]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]])
    # class 0: ranked 0.9 (pos) 0.7 (neg) 0.2 (neg) 0.1 (pos) -> (1 + 2/4) / 2 = 0.75
    # class 1: ranked 0.8 (pos) 0.6 (pos) ... -> 1.0; class 2: no positive -> left out
    value, per_class = mean_average_precision(scores, targets)
    assert per_class[0] == pytest.approx(0.75) and per_class[1] == pytest.approx(1.0) and math.isnan(per_class[2])
    assert value == pytest.approx(0.875)
    assert score("map", scores, targets)["map"] == pytest.approx(0.875)


def test_accuracy_confusion_and_summary():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    out = score("accuracy", logits, labels)
    assert out["accuracy"] == 0.5 and out["clips"] == 4
    assert confusion_matrix(logits, labels, 3).tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]
    s = summarize([0.5, 0.7, 0.9])
    assert s["mean"] == pytest.approx(0.7) and s["std"] == pytest.approx(math.sqrt(0.08 / 3))


# ---- augmentation -------------------------------------------------------------------------------

def test_spec_augment_masks_one_band_each_inside_the_real_frames():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 50, 16) + 5.0
    pad = torch.arange(50)[None, :] >= torch.tensor([50, 40, 30, 50])[:, None]  # [4, 50]
    x[pad] = 0.0
    before = x.clone()
    y = spec_augment(x, pad, freq_mask=6, time_mask=10, generator=g)
    assert torch.equal(x, before)  # the input is untouched
    changed = y != x  # [B, T, F]
    assert not changed[pad].any()  # padding stays as it was
    for b in range(4):
        rows = changed[b].any(dim=1).nonzero().squeeze(1)
        cols = changed[b].any(dim=0).nonzero().squeeze(1)
        mean = x[b][~pad[b]].mean()
        assert torch.allclose(y[b][changed[b]], mean.expand(int(changed[b].sum())))
        if len(rows):  # each band is contiguous and narrower than its maximum (or spans the time mask's rows)
            assert rows.max() - rows.min() + 1 <= 50 and cols.max() - cols.min() + 1 <= 16
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(spec_augment(x, pad, 6, 10, g2), y)  # a function of the generator
    assert spec_augment(x, pad, 0, 0, g) is x


def test_mixup_is_a_convex_mix_of_clips_and_targets():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 20, 4)
    targets = torch.eye(8)  # a class per clip: each mixed target names both clips
    pad = torch.arange(20)[None, :] >= torch.tensor([20, 15, 20, 10, 20, 20, 5, 20])[:, None]
    y, mask, t = mixup(x, pad, targets, prob=1.0, alpha=10.0, generator=g)
    assert torch.allclose(t.sum(dim=1), torch.ones(8))  # still distributions
    assert ((t > 0).sum(dim=1) <= 2).all()
    # every row is lam * its own clip + (1 - lam) * the clip its target names, lam = its own target
    for i in range(8):
        lam = t[i, i]
        j = int(torch.where(torch.arange(8) == i, -1.0, t[i]).argmax()) if lam < 1 else i
        assert torch.allclose(y[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5)
        assert 0.05 < lam <= 1  # Beta(10, 10) draws sit near 1/2
    assert (mask == (pad & mask)).all() and (mask.sum(dim=1) <= pad.sum(dim=1)).all()
    assert mixup(x, pad, targets, 0.0, 10.0, g)[0] is x


# ---- pooling, heads, classifier -----------------------------------------------------------------

def test_mean_pool_ignores_padding():
    x = torch.randn(2, 3, 5, 4)  # [B, L, N, D]
    pad = torch.tensor([[False] * 5, [False, False, True, True, True]])
    pooled = mean_pool(x, pad)
    assert torch.allclose(pooled[0], x[0].mean(dim=1)) and torch.allclose(pooled[1], x[1, :, :2].mean(dim=1))


def test_padded_clip_pools_as_alone_and_head_weights_start_equal():
    torch.manual_seed(0)
    encoder = Encoder(make_config("tiny")).eval()
    clip = torch.randn(1, 64, 128)
    padded = torch.cat([clip, torch.zeros(1, 32, 128)], dim=1)
    pad = torch.arange(96)[None, :] >= 64
    alone = pooled_layers(encoder, clip, None, weighted=True)  # [1, depth, D]
    together = pooled_layers(encoder, torch.cat([padded, torch.randn(1, 96, 128)]), torch.cat([pad, pad & False]),
                             weighted=True)
    assert alone.shape == (1, 2, 64) and torch.allclose(alone[0], together[0], atol=1e-5)
    head = Head(layers=2, dim=64, classes=3, norm="none")
    expected = head.linear(alone.mean(dim=1))  # zero weights: softmax = 1/2 each
    assert torch.allclose(head(alone), expected, atol=1e-6)
    model = Classifier(encoder, head, weighted=True)
    assert model(clip).shape == (1, 3)


def test_lr_scales_layer_decay_and_head_lr():
    encoder = Encoder(make_config("tiny"))  # depth 2
    model = Classifier(encoder, Head(1, 64, 5), weighted=False)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, layer_decay=0.5, head_lr=10.0))
    by_name = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            by_name[names[id(p)]] = group["lr"]
    assert by_name["encoder.proj.weight"] == pytest.approx(1e-3 * 0.5 ** 3)
    assert by_name["encoder.transformer.blocks.0.fc1.weight"] == pytest.approx(1e-3 * 0.5 ** 2)
    assert by_name["encoder.transformer.blocks.1.fc1.weight"] == pytest.approx(1e-3 * 0.5)
    assert by_name["head.linear.weight"] == pytest.approx(1e-2)


def test_cache_epoch_rows_cover_every_clip_and_dedupe():
    g = torch.Generator().manual_seed(0)
    rows = epoch_rows(10, micro=4, world=1, rank=0, generator=g)
    assert len(rows) == 3 and set(torch.cat(rows).tolist()) == set(range(10))
    g0, g1 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    r0, r1 = epoch_rows(16, 4, 2, 0, g0), epoch_rows(16, 4, 2, 1, g1)
    assert not set(torch.cat(r0).tolist()) & set(torch.cat(r1).tolist())  # ranks share the order, not the clips
    assert unique_rows(["a", "b", "a", "c", "b"]) == [0, 1, 3]


# ---- tasks and configs --------------------------------------------------------------------------

def test_unknown_task_is_one_line_listing_the_valid_ones():
    with pytest.raises(MaeastError) as info:
        get_task("esc51")
    message = str(info.value)
    assert "\n" not in message and all(name in message for name in TASKS)
    from maeast.cli import app
    from maeast.cli.finetune import register
    if "finetune" not in {c.name for c in app.registered_commands}:
        register(app)
    result = CliRunner().invoke(app, ["finetune", "--task", "esc51"])
    assert result.exit_code == 2 and "esc51" in result.output and "speechcommands_v2" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["finetune_patch", "finetune_frame", "finetune_small", "finetune_tiny"])
def test_every_shipped_finetune_config_loads_for_every_task(name):
    for task in TASKS:
        cfg = load_finetune_config(name, task=task)
        assert cfg.task == task and cfg.clip_seconds == TASKS[task].clip_seconds


def test_recipes_and_overrides():
    esc = load_finetune_config("finetune_patch", task="esc50")
    assert (esc.optim.lr, esc.optim.head_lr, esc.schedule.epochs, esc.optim.global_batch) == (1e-4, 1.0, 50, 48)
    assert (esc.augment.freq_mask, esc.augment.time_mask, esc.augment.mixup) == (24, 96, 0.0)
    audioset = load_finetune_config("finetune_patch", task="audioset", overrides=["--optim.lr", "1e-5"])
    assert audioset.optim.lr == 1e-5 and audioset.augment.mixup == 0.5 and TASKS["audioset"].loss == "bce"
    frozen = load_finetune_config("finetune_patch", task="voxceleb", freeze_encoder=True, folds=None)
    assert frozen.run.freeze_encoder and frozen.head_spec == FROZEN_PROTOCOLS["superb"] and frozen.protocol == "superb"
    assert frozen.peak_lr == frozen.optim.frozen_lr
    assert load_finetune_config("finetune_patch", task="esc50").head_spec == HeadSpec(False, "layer", 0)
    with pytest.raises(MaeastError, match="unknown config key 'optim.lrr'"):
        load_finetune_config("finetune_patch", task="esc50", overrides=["--optim.lrr", "1"])
    with pytest.raises(MaeastError, match="shipped: finetune_frame, finetune_patch, finetune_small, finetune_tiny"):
        load_finetune_config("finetune_pach", task="esc50")
    with pytest.raises(MaeastError, match="head.layers"):
        load_finetune_config("finetune_patch", task="esc50", overrides=["head.layers=first"])
