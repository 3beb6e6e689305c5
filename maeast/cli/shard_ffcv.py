"""`maeast shard ffcv DIR`: precompute fixed-size fbanks of one split into an FFCV .beton."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from maeast.cli.common import console, friendly
from maeast.cli.shard import app


@app.command("ffcv")
@friendly
def ffcv(
    shard_dir: str = typer.Argument(..., help="A folder written by `maeast shard build`, or its URL (then give --out)."),
    split: str = typer.Option("train", "--split", help="Which split to write."),
    clip_seconds: Optional[float] = typer.Option(
        None, "--clip-seconds", help="Crop (from the start) or zero-pad every clip to this length; "
        "default: the split's longest clip, at most 10 s."),
    out: Optional[Path] = typer.Option(None, "--out", help="The .beton to write (default: DIR/CORPUS-SPLIT.beton, "
                                       "where fine-tuning's --data.backend ffcv looks for it)."),
    fbank: str = typer.Option("mae_ast", "--fbank", help="Fbank preset (maeast.features)."),
    workers: int = typer.Option(2, "--workers", "-j", help="Decoding worker processes."),
) -> None:
    """Write a split's fbanks and labels as a .beton for the FFCV loader (fixed-length fine-tuning sets)."""
    from maeast.loaders.ffcv import beton_name, write_beton

    with console.status(f"featurizing {shard_dir} ({split})"):
        record = write_beton(shard_dir, split, clip_seconds, out, fbank, workers)
    target = out or Path(shard_dir) / beton_name(record["corpus"], split)
    console.print(f"[green]wrote[/] {target}: {record['samples']} clips of {record['clip_seconds']:g} s "
                  f"({record['frames']} x {record['n_mels']} {record['fbank']} fbank), "
                  f"{len(record['labels'])} labels{' (multi-label)' if record['multi_label'] else ''}, "
                  f"{record['skipped']} skipped", highlight=False)
