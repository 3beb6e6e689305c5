"""Fine-tuning and evaluation on the downstream tasks, frozen or full, on maeast.engine's one trainer.

    from maeast.finetune import load_finetune_config, finetune, evaluate_run
    cfg = load_finetune_config("finetune_patch", task="esc50", checkpoint="runs/pretrain/encoder")
    result = finetune(cfg)                  # every fold; result.summary = {"mean", "std"} of the test metric
    report = evaluate_run(cfg.run.dir)      # re-score the exported classifiers

Read top to bottom: tasks (the six tasks and their recipes) -> config (FinetuneConfig) -> data (shards,
folds, loaders) -> augment (SpecAugment, mixup) -> cache (a frozen encoder's features) -> sources (what
a pass iterates) -> metrics -> evaluate -> fold (one fold, its checkpoints) -> loop (a run).
The classifier (Head, Classifier) is maeast.model's; its files are maeast.artifacts'.
"""

from maeast.artifacts import load_classifier
from maeast.finetune.config import FinetuneConfig, build_finetune_config, load_finetune_config
from maeast.finetune.evaluate import EvalReport, evaluate_run, report_table, write_report
from maeast.model import Classifier, Head
from maeast.finetune.loop import FinetuneResult, finetune
from maeast.finetune.tasks import TASKS, Task, get_task

__all__ = ["FinetuneConfig", "build_finetune_config", "load_finetune_config", "finetune", "FinetuneResult",
           "evaluate_run", "EvalReport", "report_table", "write_report", "load_classifier", "Classifier", "Head",
           "TASKS", "Task", "get_task"]
