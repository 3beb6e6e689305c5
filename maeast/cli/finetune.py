"""`maeast finetune` and `maeast evaluate`: thin commands over maeast.finetune.

Registered as top-level commands by `register(app)` (maeast/cli/__init__.py).
"""

from __future__ import annotations

from pathlib import Path

import typer

from maeast.cli.common import console, friendly
from maeast.errors import MaeastError

EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}
TASK_HELP = ("audioset, esc50, speechcommands_v1, speechcommands_v2, voxceleb, iemocap, or custom: any labelled "
             "shard folder given with --data (folder or tsv recipe), its loss, metric, splits and clip length read "
             "off the corpus.")


@friendly
def finetune_command(
    ctx: typer.Context,
    task: str = typer.Option(..., "--task", help=f"The downstream task: {TASK_HELP}"),
    data: str | None = typer.Option(None, "--data", help="Shard folder of the task's corpus, or its URL (s3://, "
                                    "gs://, http(s)://; default shards/CORPUS; required for custom)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Pretrained encoder: RUN/encoder, a pretraining "
                                           "run folder or RUN/checkpoints/step_N; none: random weights (the baseline)."),
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder", "--freeze_encoder",
                                        help="Train only the head on the frozen encoder (features cached), by "
                                        "the SUPERB protocol: every layer weighted (equal at start), Linear(D->256), "
                                        "mean pool, Linear; --head.frozen linear_probe: MAE's linear probe (last "
                                        "layer, mean pool, BatchNorm, Linear); --head.frozen stats: every layer's "
                                        "mean and std side by side, BatchNorm, Linear."),
    config: str = typer.Option("finetune_patch", "--config", "-c", help="A shipped config (finetune_patch, "
                               "finetune_frame, finetune_small, finetune_tiny) or a YAML file."),
    fold: int | None = typer.Option(None, "--fold", help="Cross-validation tasks: run only this fold (default: all)."),
    deepspeed_config: Path | None = typer.Option(None, "--deepspeed-config", "--deepspeed_config",
                                                 help="ZeRO/precision/offload JSON (launch/ds_zero*.json)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in run.dir (finished folds are kept; "
                                "run.resume must; --run.resume auto: continue it if there is one, else start)."),
) -> None:
    """Fine-tune an encoder on a downstream task and report the test metric per fold, mean and std.
    Extra --section.key VALUE arguments override the config (e.g. --optim.lr 5e-5 --run.dir runs/esc50;
    custom: --data.valid_fraction, --data.test_fraction, --data.split_seed, --data.clip_seconds). SIGTERM or
    SIGUSR1 saves the fold's checkpoint after the current step and exits 75; --run.resume auto continues it."""
    from maeast.finetune import finetune, load_finetune_config
    from maeast.finetune.tasks import get_task
    get_task(task)
    cfg = load_finetune_config(config, task=task, overrides=list(ctx.args),
                               checkpoint=str(checkpoint) if checkpoint else None,
                               freeze_encoder=True if freeze_encoder else None,
                               shards=str(data) if data else None, folds=[fold] if fold is not None else None)
    result = finetune(cfg, deepspeed_config_path=deepspeed_config, resume=resume, console=console)
    from maeast.train.distributed import is_main
    if not is_main():
        return  # the table is rank 0's
    if result.stopped:
        console.print(f"stopped at run.stop_at {cfg.run.stop_at} after {len(result.folds)} finished fold(s); "
                      f"--resume (or --run.resume auto) continues {result.run_dir}", highlight=False, soft_wrap=True)
        return
    from rich.table import Table
    table = Table(title=f"{result.task} ({cfg.mode.title(cfg)}, "
                        f"{cfg.checkpoint or 'random init'}): test {result.metric}")
    for column in ("fold", result.metric, "epoch", "selected by"):
        table.add_column(column, justify="left" if column == "fold" else "right")
    for f in result.folds:
        table.add_row("-" if f["fold"] is None else str(f["fold"]), f"{100 * f['test'][result.metric]:.2f}%",
                      str(f["epoch"]), f["selected_by"])
    s = result.summary
    table.add_row("mean +- std", f"{100 * s['mean']:.2f}% +- {100 * s['std']:.2f}%", "", "", style="bold")
    console.print(table)
    console.print(f"done in {result.seconds:.0f} s; classifiers and results.json in {result.run_dir}", highlight=False,
                  soft_wrap=True)


@friendly
def evaluate_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A `maeast finetune` run folder (or one fold's "
                                    "folder or classifier folder)."),
    task: str | None = typer.Option(None, "--task", help=f"Check the run's task ({TASK_HELP})"),
    data: str | None = typer.Option(None, "--data", help="Shard folder (or URL) to score on (default: the run's)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for evaluation.json and the confusion "
                                    "PNGs (default CHECKPOINT/evaluation)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Clips per batch."),
    max_seconds: float = typer.Option(320.0, "--max-seconds", help="Tasks scored on whole clips (voxceleb, "
                                      "iemocap): the most padded audio in one batch, in seconds (clips x the "
                                      "longest); lower it if long clips run out of memory."),
) -> None:
    """Score a fine-tuned run on its test clips: the metric per fold, mean and std, a JSON file, and a
    confusion matrix per fold for single-label tasks."""
    from maeast.finetune import evaluate_run, report_table, write_report
    from maeast.finetune.tasks import get_task
    if task is not None:
        get_task(task)
    if not max_seconds > 0:
        raise MaeastError(f"--max-seconds {max_seconds} must be positive (seconds of padded audio per batch)")
    report = evaluate_run(checkpoint, task=task, data=data, batch_size=batch_size, max_seconds=max_seconds)
    console.print(report_table(report))
    paths = write_report(report, out or Path(checkpoint) / "evaluation")
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add finetune and evaluate as top-level commands of the `maeast` app."""
    app.command("finetune", context_settings=EXTRA_ARGS)(finetune_command)
    app.command("evaluate")(evaluate_command)
