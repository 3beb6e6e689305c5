"""Scores of a set of predictions: accuracy, mean average precision, the confusion matrix, fold summaries.

    scores = score("accuracy", logits, labels)    # logits [N, C]; labels [N] int64 or [N, C] multi-hot

Average precision is scikit-learn's (and AST/SSAST's, which call it): the precision at each distinct
score threshold, weighted by the recall it adds, AP = sum_k (R_k - R_{k-1}) P_k, tied scores taken
together. mAP averages it over the classes that have a positive clip (a class without one has no AP).
"""

from __future__ import annotations

import math

import torch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """logits [N, C], labels [N] class ids -> the fraction whose argmax is the label."""
    return float((logits.argmax(dim=1) == labels).double().mean()) if len(labels) else math.nan


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """scores [N], targets [N] in {0, 1} -> AP (nan without a positive)."""
    positives = float(targets.sum())
    if positives == 0:
        return math.nan
    order = torch.argsort(scores.double(), descending=True, stable=True)
    s, t = scores.double()[order], targets.double()[order]  # [N] by falling score
    last_of_tie = torch.ones_like(s, dtype=torch.bool)
    last_of_tie[:-1] = s[1:] != s[:-1]  # a threshold ends where the next score differs
    tp = torch.cumsum(t, 0)[last_of_tie]  # [K] true positives at each threshold
    seen = (torch.nonzero(last_of_tie).squeeze(1) + 1).double()  # [K] clips at or above it
    recall = tp / positives
    precision = tp / seen
    gained = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((gained * precision).sum())


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> tuple[float, list[float]]:
    """scores [N, C], targets [N, C] multi-hot -> (mAP over classes with a positive, AP per class)."""
    per_class = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    valid = [ap for ap in per_class if not math.isnan(ap)]
    return (sum(valid) / len(valid) if valid else math.nan), per_class


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """[C, C] int64 counts: row = true class, column = predicted class."""
    predicted = logits.argmax(dim=1)
    flat = labels.long() * classes + predicted
    return torch.bincount(flat, minlength=classes * classes).view(classes, classes)


METRICS = ("accuracy", "map")
"""The metrics a task scores with (score's names)."""


def score(metric: str, logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """{metric: value, "clips": N} (+ "confusion" for accuracy, "ap" per class for mAP)."""
    logits = logits.float()
    if metric == "map":
        value, per_class = mean_average_precision(logits, labels.float())
        return {"map": value, "clips": len(labels), "ap": per_class}
    if metric == "accuracy":
        labels = labels if labels.ndim == 1 else labels.argmax(dim=1)
        return {"accuracy": accuracy(logits, labels), "clips": len(labels),
                "confusion": confusion_matrix(logits, labels, logits.shape[1]).tolist()}
    raise ValueError(f"unknown metric {metric!r}; one of {', '.join(METRICS)}")


def summarize(values: list[float]) -> dict[str, float]:
    """Per-fold values -> {"mean", "std"} (std over folds, population: ddof 0; 0 for one fold)."""
    if not values:
        return {"mean": math.nan, "std": math.nan}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {"mean": mean, "std": std}


def best_epoch_over_folds(per_fold: list[dict[int, float]]) -> tuple[int, float]:
    """Per fold {epoch: test metric} -> (the epoch whose mean over the folds is best, that mean).

    SSAST's get_esc_result.py: the folds' result.csv rows (one per epoch) are averaged and the best row
    taken, `best_epoch = np.argmax(result[:, 0])`, "the best epoch based on AVERAGED accuracy across 5 folds,
    not the best epoch for each fold (which leads to over-optimistic results)". Only epochs that every fold
    evaluated count; a tie goes to the earliest epoch, as np.argmax."""
    if not per_fold:
        raise ValueError("no fold to select an epoch over")
    common = sorted(set.intersection(*(set(f) for f in per_fold)))
    if not common:
        raise ValueError("the folds share no evaluated epoch")
    means = {e: sum(f[e] for f in per_fold) / len(per_fold) for e in common}
    best = max(common, key=lambda e: (means[e], -e))
    return best, means[best]
