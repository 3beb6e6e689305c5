"""`maeast compare`: what a pretrained encoder buys over random weights, as one table.

Registered as a top-level command by `register(app)` (maeast/cli/__init__.py).
"""

from __future__ import annotations

from pathlib import Path

import typer

from maeast.cli.common import console, friendly

EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


@friendly
def compare_command(
    ctx: typer.Context,
    checkpoint: Path = typer.Option(..., "--checkpoint", help="The pretrained encoder: RUN/encoder of a `maeast "
                                    "pretrain` run (or the run folder, or RUN/checkpoints/step_N)."),
    task: list[str] = typer.Option(..., "--task", help="TASK=SHARDS, repeatable (e.g. esc50=shards/demo/events); "
                                   "TASK alone reads the task's default shards/CORPUS; custom=SHARDS: any labelled "
                                   "shard folder, as `maeast finetune --task custom` reads it."),
    config: str = typer.Option("finetune_small", "--config", "-c", help="Fine-tuning config of every run (a shipped "
                               "name or a YAML file); the random-init encoder takes the checkpoint's architecture."),
    out: Path = typer.Option(Path("runs/compare"), "--out", "-o", help="Folder of the runs, results.json and "
                             "results.png."),
    resume: bool = typer.Option(False, "--resume", help="Continue interrupted runs (finished runs are always reused)."),
) -> None:
    """For each task: a head on a frozen random encoder, a head on the frozen pretrained encoder (the
    frozen protocol: the config's head.frozen, e.g. superb, stats or linear_probe), and full
    fine-tuning of the pretrained encoder; then one table of the test metric (mean +- std over folds), chance and time, each row
    naming its protocol. Extra --section.key VALUE arguments override the config of every run (e.g.
    --schedule.frozen_epochs 20)."""
    from maeast.finetune.compare import parse_task, run_matrix
    from maeast.finetune.results import summary_lines, table, write_json, write_png
    tasks = [parse_task(t) for t in task]
    rows = run_matrix(checkpoint, tasks, config, out, overrides=list(ctx.args), resume=resume, console=console)
    title = f"What pretraining buys: {checkpoint}, fine-tuned with {config}"
    json_path = write_json(rows, out / "results.json", {"checkpoint": str(checkpoint), "config": config,
                                                        "overrides": list(ctx.args)})
    png_path = write_png(rows, out / "results.png", title.replace(": ", "\n", 1))
    print_whole(console, table(rows, title))
    for line in summary_lines(rows):
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"wrote {json_path} and {png_path}", highlight=False, soft_wrap=True)


def print_whole(out, renderable) -> None:
    """Print a table whole, at its natural width, whatever the terminal: rich lays out a file or a pipe (a logged
    demo) at 80 columns and would cut the table's figures to "70.2 +- ..."."""
    from rich.console import Console
    from rich.measure import Measurement
    natural = Measurement.get(out, out.options.update_width(10_000), renderable).maximum
    if natural <= out.width:
        out.print(renderable)
        return
    Console(file=out.file, width=natural, force_terminal=out.is_terminal, no_color=out.no_color).print(renderable)


def register(app: typer.Typer) -> None:
    """Add compare as a top-level command of the `maeast` app."""
    app.command("compare", context_settings=EXTRA_ARGS)(compare_command)
