"""Selection by valid on a small valid set: ties at the best valid metric go to the lower valid loss, then to the
earlier epoch, and the fold's result records which epochs tied and what decided (maeast.finetune.select)."""

from __future__ import annotations

import math

import torch

from maeast.finetune.select import better_on_valid, eval_loss, valid_choice


def online(history: list[dict], metric: str = "accuracy") -> int:
    """The epoch keep_best ends with, fed the history epoch by epoch."""
    best = None
    for h in history:
        scores = {"valid": {metric: h["valid"], "loss": h.get("valid_loss")}}
        if better_on_valid(scores, best, metric):
            best = {**scores, "epoch": h["epoch"]}
    return best["epoch"]


def test_a_tie_at_the_best_accuracy_goes_to_the_lowest_valid_loss():
    history = [{"epoch": e, "valid": 0.75 if e in (4, 9, 30) else 0.5, "valid_loss": 2.0 - e / 40} for e in range(1, 61)]
    assert online(history) == 30  # not epoch 4, the first of the tied maxima
    choice = valid_choice(history, "accuracy")
    assert choice["epoch"] == 30 and choice["tied"] == [4, 9, 30] and choice["valid"] == 0.75
    assert "3 epochs tied" in choice["rule"] and "lowest valid loss decided" in choice["rule"]


def test_a_clear_best_and_a_full_tie_keep_the_earlier_epoch():
    clear = [{"epoch": 1, "valid": 0.5, "valid_loss": 0.1}, {"epoch": 2, "valid": 0.8, "valid_loss": 0.9}]
    assert online(clear) == 2 and valid_choice(clear, "accuracy")["rule"] == "the best valid accuracy"
    same = [{"epoch": e, "valid": 0.8, "valid_loss": 0.3} for e in (1, 2, 3)]
    assert online(same) == 1 and valid_choice(same, "accuracy")["epoch"] == 1
    assert "earliest was kept" in valid_choice(same, "accuracy")["rule"]


def test_histories_without_a_loss_select_as_before():
    old = [{"epoch": 1, "valid": 0.6}, {"epoch": 2, "valid": 0.6}, {"epoch": 3, "valid": 0.4}]
    assert online(old) == 1 and valid_choice(old, "accuracy")["epoch"] == 1
    assert valid_choice([{"epoch": 1, "test": 0.5}], "accuracy")["epoch"] is None


def test_eval_loss_is_the_training_loss():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ids = torch.tensor([0, 1, 0])
    assert math.isclose(eval_loss(logits, ids), float(torch.nn.functional.cross_entropy(logits, ids)))
    hot = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert math.isclose(eval_loss(logits, hot), float(torch.nn.functional.binary_cross_entropy_with_logits(logits, hot)))
    assert math.isnan(eval_loss(logits[:0], ids[:0]))
