"""Which model a fine-tuning run reports, beyond "the best valid epoch" or "the last": SSAST's two protocols.

    window = average_window(cfg.run.average_epochs, cfg.epochs)     # (first, last) or None
    total = WeightSum(); total.add(engine.full_state_dict())        # after each epoch of the window
    model.load_state_dict(total.mean())                             # the averaged weights
    results = select_over_folds(results, "accuracy")                 # every fold at the best mean epoch

Weight averaging (AS-20K; YuanGongND/ssast src/traintest.py validate_wa, run_as.sh --wa True --wa_start 6
--wa_end 25): the state dicts saved after epochs wa_start..wa_end are summed key by key and divided by their
count, and that model is evaluated and reported. Here the sum is kept as the epochs end (and saved with each
checkpoint), not as one saved model per epoch. Integer buffers (BatchNorm's num_batches_tracked) are
counters, not weights: the last epoch's value is kept.

Selection by valid (run.select "valid"): the epoch of the best valid metric; a tie (frequent on a small valid set:
the same clips right at many epochs) goes to the lower valid loss, then to the earlier epoch (`better_on_valid`,
applied as the epochs end; `valid_choice` records, in the fold's result, which epochs tied and what decided).

Fold-mean selection (ESC-50; src/finetune/esc50/get_esc_result.py): maeast.finetune.metrics.best_epoch_over_folds
picks the epoch, and each fold reports its own test score at that epoch (kept per epoch in the fold's result).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from maeast.errors import MaeastError
from maeast.finetune.metrics import best_epoch_over_folds

WEIGHT_SUM = "weight_sum.pt"
"""The running sum's file in a fold checkpoint folder."""


def average_window(epochs_asked: list[int] | None, epochs: int) -> tuple[int, int] | None:
    """run.average_epochs within a run of `epochs` epochs: (first, last) of the epochs averaged, or None when
    off or when the run ends before `first` (then its last epoch is reported)."""
    if epochs_asked is None or epochs_asked[0] > epochs:
        return None
    return epochs_asked[0], min(epochs_asked[1], epochs)


class WeightSum:
    """A running sum of state dicts (float tensors in float32 on the CPU) and how many were added."""

    def __init__(self, total: dict[str, torch.Tensor] | None = None, count: int = 0):
        self.total, self.count = total or {}, count

    def add(self, weights: dict[str, torch.Tensor]) -> None:
        for name, value in weights.items():
            value = value.detach().cpu()
            if not value.is_floating_point():
                self.total[name] = value.clone()  # a counter: the latest
            elif name in self.total:
                self.total[name] += value.float()
            else:
                self.total[name] = value.float().clone()
        self.count += 1

    def mean(self) -> dict[str, torch.Tensor]:
        if not self.count:
            raise ValueError("no weights were added to average")
        return {k: v / self.count if v.is_floating_point() else v for k, v in self.total.items()}

    def save(self, folder: Path) -> None:
        torch.save({"total": self.total, "count": self.count}, Path(folder) / WEIGHT_SUM)

    @classmethod
    def load(cls, folder: Path) -> "WeightSum":
        """The sum saved in a checkpoint folder (an empty one when it holds none)."""
        file = Path(folder) / WEIGHT_SUM
        if not file.is_file():
            return cls()
        saved = torch.load(file, map_location="cpu", weights_only=True)
        return cls(saved["total"], saved["count"])


def select_over_folds(results: list[dict], metric: str) -> list[dict]:
    """Fold results with a per-epoch record ("test_by_epoch": {epoch: test scores}) -> copies that report each
    fold at the epoch whose test metric averaged over the folds is best (selected_by "fold_mean")."""
    bare = next((r["fold"] for r in results if not r.get("test_by_epoch")), None)
    if bare is not None:
        raise MaeastError(f"fold {bare}'s result.json has no test scores per epoch (it finished without run.select "
                          f"fold_mean); delete that fold's folder and resume to rerun it")
    per_fold = [{int(e): s[metric] for e, s in r["test_by_epoch"].items()} for r in results]
    epoch, _ = best_epoch_over_folds(per_fold)
    return [{**r, "epoch": epoch, "step": next(h["step"] for h in r["history"] if h["epoch"] == epoch),
             "test": r["test_by_epoch"][str(epoch)], "selected_by": "fold_mean"} for r in results]


def eval_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The evaluation loss of a set of predictions: cross-entropy for class ids [N], binary cross-entropy with
    logits for multi-hot labels [N, C] (the training losses); nan without clips."""
    if not len(labels):
        return math.nan
    logits = logits.float()
    if labels.ndim == 1:
        return float(F.cross_entropy(logits, labels.long()))
    return float(F.binary_cross_entropy_with_logits(logits, labels.float()))


def _key(valid: dict, metric: str) -> tuple[float, float]:
    """(metric, -loss): larger is better; a missing or nan loss (results of older runs) ranks last."""
    loss = valid.get("loss", math.inf)
    return valid[metric], -(math.inf if loss is None or math.isnan(loss) else loss)


def better_on_valid(scores: dict, best: dict | None, metric: str) -> bool:
    """Whether an epoch's scores ({"valid": {metric, "loss"}, ...}) beat the best so far: a higher valid metric;
    at an equal one a lower valid loss; at equal both the earlier epoch stays."""
    return best is None or _key(scores["valid"], metric) > _key(best["valid"], metric)


def valid_choice(history: list[dict], metric: str) -> dict:
    """How selection by valid chose, from the fold's history ({"epoch", "valid", "valid_loss"} per evaluation):
    the epoch, the epochs that tied at its valid metric, and the rule that decided among them."""
    scored = [h for h in history if h.get("valid") is not None]
    if not scored:
        return {"rule": "no valid evaluation", "epoch": None, "tied": []}
    key = lambda h: _key({metric: h["valid"], "loss": h.get("valid_loss")}, metric)  # noqa: E731
    best = max(scored, key=lambda h: (key(h), -h["epoch"]))
    tied = [h["epoch"] for h in scored if h["valid"] == best["valid"]]
    if len(tied) == 1:
        rule = f"the best valid {metric}"
    elif len({key(h) for h in scored if h["epoch"] in tied}) > 1:
        rule = f"{len(tied)} epochs tied at the best valid {metric}; the lowest valid loss decided"
    else:
        rule = f"{len(tied)} epochs tied at the best valid {metric} and loss; the earliest was kept"
    return {"rule": rule, "epoch": best["epoch"], "tied": tied, "valid": best["valid"],
            "valid_loss": best.get("valid_loss")}
