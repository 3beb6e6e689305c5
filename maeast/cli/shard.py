"""`maeast shard build|merge|inspect`: pack corpora into shards (on one machine, or in parts merged after) and
look at what was packed."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from maeast.cli.common import console, friendly, new_app
from maeast.errors import MaeastError
from maeast.shards.build import Packed, build_shards
from maeast.shards.format import read_index
from maeast.shards.inspect import verify_shards
from maeast.shards.parts import PARTS, build_part, merge_parts
from maeast.shards.recipes import RECIPES
from maeast.shards.storage import redact

app = new_app("Pack corpora into webdataset shards (FLAC + JSON) and inspect them.")


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MaeastError(f"recipe option {pair!r} is not KEY=VALUE (e.g. -o version=2)")
        options[key.strip()] = value.strip()
    return options


@app.command("build")
@friendly
def build(
    recipe: str = typer.Argument(..., help=f"Corpus layout: {', '.join(sorted(RECIPES))}."),
    root: Path = typer.Option(..., "--root", help="The corpus as distributed (its top folder)."),
    out: str = typer.Option("shards", "--out", help="Output folder for shards and index.json, or a URL: "
                            "s3://bucket/prefix (endpoint and credentials from the AWS variables), gs://..., "
                            "file://..."),
    shard_size: float = typer.Option(256.0, "--shard-size", help="Target shard size in MB."),
    workers: int = typer.Option(1, "--workers", "-j", help="Decoding processes."),
    sample_rate: int = typer.Option(16000, "--sample-rate", help="Sample rate of the packed audio."),
    codec: str = typer.Option("flac", "--codec", help="Audio in the shards: flac (about half the size) or wav "
                              "(16-bit PCM: no decoding, 1.3-1.5x the streaming loader's clips/s on CPU)."),
    option: Optional[List[str]] = typer.Option(None, "--option", "-o", help="Recipe option KEY=VALUE (repeatable)."),
    part: Optional[str] = typer.Option(None, "--part", help="I/N: pack only part I of N (numbered from 1) into "
                                       "OUT/.parts, e.g. one Slurm array task each; then `maeast shard merge OUT`."),
) -> None:
    """Pack a corpus into shards; run the same command again to resume an interrupted build."""
    options = parse_options(option)
    progress, advance, begin = packing_progress(f"packing {recipe}" + (f" part {part}" if part else ""))
    arguments = dict(options=options, shard_size_mb=shard_size, workers=workers, sample_rate=sample_rate,
                     codec=codec, progress=advance, on_start=begin)
    try:
        if part is not None:
            record = build_part(recipe, root, out, part, **arguments)
        else:
            index = build_shards(recipe, root, out, **arguments)
    finally:
        progress.stop()
    if part is not None:
        lo, hi = record["range"]
        total = record["total"]
        held = f"items {lo}-{hi - 1} of {total}" if hi > lo else f"no item (N is over the {total} items)"
        console.print(f"part {part}: {held} packed into {redact(out)}/{PARTS}; once every part is done: "
                      f"maeast shard merge {redact(out)}", highlight=False)
    else:
        print_index(index, redact(out))


@app.command("merge")
@friendly
def merge(
    out: str = typer.Argument(..., help="The --out of the parts (`maeast shard build ... --part I/N`): a folder or "
                              "a URL."),
) -> None:
    """Write the shards and index.json of a build from its finished parts: the files of a build on one machine."""
    progress, advance, begin = packing_progress("merging parts")
    try:
        index = merge_parts(out, progress=advance, on_start=begin)
    finally:
        progress.stop()
    print_index(index, redact(out))


def packing_progress(title: str):
    """A progress bar over the items of a build: (the bar, its per-item callback, its start callback)."""
    hours = 0.0
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:>7.1f} files/s"), TextColumn("{task.fields[hours]:.3f} h packed"),
               TextColumn("{task.fields[rejects]} rejected"), TimeElapsedColumn(), TimeRemainingColumn()]
    progress = Progress(*columns, console=console, transient=False)
    task = progress.add_task(title, total=None, start=False, rate=0.0, hours=0.0, rejects=0)
    rejects = 0

    def begin(total: int) -> None:
        """Show the bar once the output is writable and the recipe has listed its items, so that an
        error before that is the only line printed."""
        progress.update(task, total=total)
        progress.start_task(task)
        progress.start()

    def advance(packed: Packed) -> None:
        nonlocal hours, rejects
        hours += packed.seconds / 3600
        rejects += packed.reject is not None
        elapsed = progress.tasks[task].elapsed or 1e-9
        progress.update(task, advance=1, hours=hours, rejects=rejects,
                        rate=progress.tasks[task].completed / elapsed)

    return progress, advance, begin


@app.command("inspect")
@friendly
def inspect(
    shard_dir: str = typer.Argument(..., help="A folder written by `maeast shard build`, or its URL (s3://, gs://, "
                                    "http(s)://, file://, pipe:)."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash every shard and decode every sample."),
) -> None:
    """Summarize a shard folder's index; with --verify, check every byte (exit 1 on any mismatch)."""
    print_index(read_index(shard_dir), shard_dir)
    if verify:
        with console.status("verifying shards") as status:
            report = verify_shards(shard_dir, on_shard=lambda name: status.update(f"verifying {name}"))
        for problem in report.problems:
            console.print(f"[red]mismatch[/] {problem}", highlight=False)
        if not report.ok:
            console.print(f"[bold red]{len(report.problems)} problem(s)[/] in {report.shards} shards")
            raise typer.Exit(1)
        console.print(f"[green]verified[/] {report.shards} shards, {report.samples} samples: all hashes and samples good")


def print_index(index: dict, shard_dir: Path) -> None:
    table = Table(title=f"{index['corpus']} ({index['recipe']}) in {shard_dir}")
    for column in ("split", "samples", "hours", "shards", "MB", "labels"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, split in index["splits"].items():
        mb = sum(s["bytes"] for s in split["shards"]) / 1e6
        table.add_row(name, str(split["samples"]), f"{split['hours']:.3f}", str(len(split["shards"])),
                      f"{mb:.1f}", str(len(split["labels"])))
    console.print(table)
    rejects = index["rejects"]
    reasons = ", ".join(f"{k}: {v}" for k, v in rejects["reasons"].items()) or "none"
    console.print(f"vocabulary: {len(index['labels'])} labels{' (multi-label)' if index['multi_label'] else ''}; "
                  f"rejected: {rejects['count']} ({reasons}; see {rejects['file']})", highlight=False)
    if index.get("report"):
        facts = ", ".join(f"{k}={v}" for k, v in index["report"].items() if v is not None)
        if facts:
            console.print(f"recipe report: {facts}", highlight=False)
