"""`maeast shard stats`: the corpus's fbank mean and std, written into the shard index."""

from __future__ import annotations

from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from maeast.cli.common import console, friendly
from maeast.cli.shard import app
from maeast.shards.format import read_index, shard_paths


@app.command("stats")
@friendly
def stats(
    shard_dir: str = typer.Argument(..., help="A folder written by `maeast shard build`, or its URL (s3://, gs://)."),
    preset: str = typer.Option("ssast", "--preset", help="Fbank preset: mae_ast or ssast (maeast.features)."),
    split: str = typer.Option("train", "--split", help="Split to measure (statistics come from training data)."),
    max_clips: Optional[int] = typer.Option(None, "--max-clips", help="Measure only the first N clips."),
) -> None:
    """Raw log-mel mean and std over all frames and bins, saved in index.json under "stats"."""
    from maeast.features.config import get_config
    from maeast.features.stats import corpus_stats, write_stats
    config = get_config(preset)
    index = read_index(shard_dir)
    shard_paths(shard_dir, split, index)  # an unknown split fails here, before the progress bar
    total = index["splits"][split]["samples"]
    total = min(total, max_clips) if max_clips else total
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{config.name} fbank of {split}", total=total)
        result = corpus_stats(shard_dir, config, split, max_clips, on_clip=lambda: progress.advance(task))
    path = write_stats(shard_dir, config, result)
    table = Table(title=f"{config.name} raw log-mel statistics of {shard_dir} ({split})")
    for column in ("clips", "frames", "mean", "std"):
        table.add_column(column, justify="right")
    table.add_row(str(result["clips"]), str(result["frames"]), f"{result['mean']:.6f}", f"{result['std']:.6f}")
    console.print(table)
    console.print(f"written to {path} under stats.{config.name}", highlight=False)
