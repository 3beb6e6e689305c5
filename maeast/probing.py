"""Scoring fixed features without training a network: the fbank-statistics baseline, a linear and a kNN probe.

    x = fbank_stats(features, padding_mask)                       # [B, T, F] -> [B, 2F] (the hand-made baseline)
    scores = score_features(train_x, train_y, test_x, test_y)     # {"linear": accuracy, "knn": accuracy}

The hand-made baseline every learned feature must beat is the fbank's mean and standard deviation over
time, fed to a logistic regression. The same logistic regression scores a frozen encoder's pooled
features (the online probe during pretraining, maeast.pretrain.probe) and the fbank statistics (that probe's
baseline and the demo table's, maeast.finetune.baseline), so the figures are comparable. It is
multinomial, L2-regularized, on features standardized with the training set's mean and std, fitted to
convergence with full-batch L-BFGS (deterministic, a second or two on a few thousand clips). The kNN
probe votes among the K nearest training clips by cosine similarity of the standardized features.
Single-label tasks only: labels are class ids [N].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maeast.model.heads import stats_pool

L2 = 1e-3           # weight decay of the logistic regression (on standardized features, mean loss)
MAX_ITER = 100      # L-BFGS iterations (it stops earlier once the gradient is under TOLERANCE)
TOLERANCE = 1e-5
K = 10              # neighbours of the kNN probe


def fbank_stats(features: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """fbank [B, T, F] -> [B, 2F]: each bin's mean and standard deviation over the real (unpadded) frames,
    pooled as the frozen "stats" head pools encoder tokens."""
    return stats_pool(features.float(), None if padding_mask is None else padding_mask.to(features.device))


def standardized(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets scaled with the training set's per-feature mean and std."""
    mean, std = train.mean(0), train.std(0).clamp(min=1e-6)
    return (train - mean) / std, (test - mean) / std


def logistic_regression(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                        classes: int | None = None, l2: float = L2) -> float:
    """Test accuracy of a multinomial logistic regression fitted on the training set."""
    train_x, test_x = standardized(train_x.double(), test_x.double())
    classes = classes or int(max(train_y.max(), test_y.max())) + 1
    weight = torch.zeros(train_x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=MAX_ITER, tolerance_grad=TOLERANCE,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((test_x @ weight + bias).argmax(1) == test_y).double().mean())


def knn(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
        k: int = K) -> float:
    """Test accuracy of a majority vote (ties: the nearer neighbours' class) among the k nearest training clips."""
    train_x, test_x = standardized(train_x.float(), test_x.float())
    similarity = F.normalize(test_x, dim=1) @ F.normalize(train_x, dim=1).T  # [N_test, N_train]
    k = min(k, len(train_x))
    nearest = similarity.topk(k, dim=1).indices  # [N_test, k], nearest first
    votes = F.one_hot(train_y[nearest], int(train_y.max()) + 1).float()  # [N_test, k, C]
    votes = votes * torch.linspace(1.0, 0.99, k)[None, :, None]  # ties go to the nearer neighbours
    return float((votes.sum(1).argmax(1) == test_y).float().mean())


def score_features(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                   test_y: torch.Tensor) -> dict[str, float]:
    """{"linear": logistic-regression accuracy, "knn": kNN accuracy} of fixed features [N, D]."""
    return {"linear": logistic_regression(train_x, train_y, test_x, test_y), "knn": knn(train_x, train_y, test_x, test_y)}
