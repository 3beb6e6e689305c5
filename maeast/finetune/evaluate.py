"""`maeast evaluate`: score a fine-tuned run's classifiers on their test clips, per fold, with mean and std.

    report = evaluate_run("runs/esc50", data=None)     # every fold*/classifier of the run
    write_report(report, out_dir)                      # evaluation.json, confusion_fold{k}.png

Each fold's classifier is scored on exactly the clips that fold's fine-tuning reported: the held-out
fold of the train split (cross-validation) or the task's test split, cropped from each clip's start,
or whole where the task scores whole clips (Task.eval_whole, maeast.finetune.utterances).
A custom run's test clips are found again the way the run found them: its own test split, or the part
of its train split that the seeded split recorded in classifier.json carves out.
`predict` is shared with the fine-tuning loop, so a re-evaluation reproduces the run's figures; the classifier
runs in maeast.precision's inference precision (bf16 autocast on CUDA, as the engine fine-tuned it; fp32 on CPU).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from maeast.artifacts import classifier_folders, features_of, load_classifier
from maeast.errors import MaeastError
from maeast.finetune.cache import unique_rows
from maeast.finetune.custom import SeededSplit
from maeast.finetune.data import open_corpus, selections
from maeast.finetune.metrics import score, summarize
from maeast.finetune.tasks import get_task
from maeast.finetune.utterances import evaluation_loader, whole_clips
from maeast.loaders import StreamConfig
from maeast.precision import inference_autocast


@dataclass
class Predictions:
    keys: list[str]
    logits: torch.Tensor  # [N, C]
    labels: torch.Tensor  # [N] int64 or [N, C] multi-hot


@torch.no_grad()
def predict(forward: Callable, batches: Iterable) -> Predictions:
    """forward(x, padding_mask) -> logits over batches of (x, padding_mask, labels, keys); once per key."""
    keys, logits, labels = [], [], []
    for x, pad, y, k, *_ in batches:
        if not len(k):
            continue
        logits.append(forward(x, pad).float().cpu())
        labels.append(y.cpu())
        keys += k
    if not keys:
        raise MaeastError("an evaluation pass found no clip; check the shards and the folds")
    rows = torch.tensor(unique_rows(keys))
    return Predictions([keys[i] for i in rows.tolist()], torch.cat(logits)[rows], torch.cat(labels)[rows])


@dataclass
class FoldScore:
    fold: int | None
    scores: dict  # metrics.score output: {metric, "clips", "confusion" or "ap"}
    classifier: Path


@dataclass
class EvalReport:
    run: Path
    task: str
    metric: str
    labels: list[str]
    folds: list[FoldScore] = field(default_factory=list)

    @property
    def values(self) -> list[float]:
        return [f.scores[self.metric] for f in self.folds]

    @property
    def summary(self) -> dict[str, float]:
        return summarize(self.values)

    def to_dict(self) -> dict:
        return {"run": str(self.run), "task": self.task, "metric": self.metric, "labels": self.labels,
                "folds": [{"fold": f.fold, "classifier": str(f.classifier), **f.scores} for f in self.folds],
                **self.summary}


def evaluate_run(run: str | Path, task: str | None = None, data: str | Path | None = None,
                 batch_size: int = 32, workers: int = 1, device: str | torch.device = "cpu",
                 max_seconds: float = 320.0) -> EvalReport:
    """Score every fold's classifier on its test clips, with its recorded features (data: the run's unless given);
    a Task.eval_whole task's clips whole, in batches of at most max_seconds of padded audio."""
    report = None
    for folder in classifier_folders(run):
        model, info = load_classifier(folder, device)
        if task is not None and task != info["task"]:
            get_task(task)
            raise MaeastError(f"{folder} was fine-tuned for task {info['task']!r}, not {task!r}")
        seeded = SeededSplit(**info["seeded_split"]) if info.get("seeded_split") else None
        corpus = open_corpus(get_task(info["task"]), data or info["shards"], info.get("train_split"), seeded)
        the_task = corpus.task  # custom: resolved on the corpus as in the run
        if the_task.metric != info["metric"]:
            raise MaeastError(f"{corpus.dir} is scored by {the_task.metric} but {folder} was fine-tuned with "
                              f"{info['metric']}; give the shards it was fine-tuned on")
        if report is None:
            report = EvalReport(Path(run), the_task.name, the_task.metric, corpus.labels)
        if corpus.labels != info["labels"]:
            raise MaeastError(f"{corpus.dir} has labels {corpus.labels[:4]}... but {folder} was trained on "
                              f"{info['labels'][:4]}...; give the shards it was fine-tuned on")
        fold = info.get("fold")
        if fold is not None and fold not in corpus.folds:
            raise MaeastError(f"{corpus.dir} has no fold {fold} (folds {corpus.folds})")
        selection = selections(corpus, fold)["test"]
        loader = evaluation_loader(corpus, selection, whole=whole_clips(corpus, selection.split, evaluation=True),
                                   batch_size=batch_size, max_seconds=max_seconds, clip_seconds=info["clip_seconds"],
                                   fbank=features_of(info), stream=StreamConfig(num_workers=workers))
        batches = ((b.features.to(device), _to(b.padding_mask, device), b.labels, b.keys)
                   for b in loader)
        preds = predict(lambda x, pad: _forward(model, x, pad), batches)
        report.folds.append(FoldScore(fold, score(the_task.metric, preds.logits, preds.labels), folder))
    return report


def _forward(model, x, pad):
    with inference_autocast(x.device):  # bf16 on CUDA, as the fine-tuning engine ran and scored it
        return model(x, pad)


def _to(t, device):
    return None if t is None else t.to(device)


# ---- the report ---------------------------------------------------------------------------------

def report_table(report: EvalReport, title: str | None = None):
    """A rich table: one row per fold, then the mean and std."""
    from rich.table import Table
    table = Table(title=title or f"{report.task}: {report.metric} ({report.run})")
    table.add_column("fold")
    table.add_column(report.metric, justify="right")
    table.add_column("clips", justify="right")
    for f in report.folds:
        table.add_row("-" if f.fold is None else str(f.fold), _pct(f.scores[report.metric]), str(f.scores["clips"]))
    s = report.summary
    table.add_row("mean +- std", f"{_pct(s['mean'])} +- {_pct(s['std'])}", str(sum(f.scores["clips"] for f in report.folds)),
                  style="bold")
    return table


def _pct(v: float) -> str:
    return "nan" if math.isnan(v) else f"{100 * v:.2f}%"


def write_report(report: EvalReport, out: str | Path) -> dict[str, Path]:
    """evaluation.json, and for single-label tasks confusion_fold{k}.png (matplotlib Agg); returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "evaluation.json"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    for f in report.folds:
        if "confusion" in f.scores:
            name = f"confusion_{'main' if f.fold is None else f'fold{f.fold}'}.png"
            paths[name] = plot_confusion(torch.tensor(f.scores["confusion"]), report.labels, out / name,
                                         f"{report.task} fold {f.fold}: {report.metric} "
                                         f"{_pct(f.scores[report.metric])}")
    return paths


def plot_confusion(matrix: torch.Tensor, labels: list[str], path: Path, title: str) -> Path:
    """A row-normalized confusion matrix (rows: true class) with the counts written in the cells."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = matrix.double()
    share = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(labels)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    if n <= 40:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=6,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
