"""`maeast data ...`: demo corpora made by real synthesizers."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from maeast.cli.common import console, friendly, new_app
from maeast.demo import SIZES, build_demo

app = new_app("Make data: demo corpora from real synthesizers (espeak-ng, fluidsynth, sox).")


@app.command("demo")
@friendly
def demo(
    out: Path = typer.Option(..., "--out", help="Folder for speech_commands/, esc50/ and librispeech/."),
    size: str = typer.Option("small", "--size", help=f"One of {', '.join(SIZES)} (full: over 1 h of unlabelled audio)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, byte-identical files."),
    workers: int = typer.Option(2, "--workers", "-j", help="Synthesizer processes."),
) -> None:
    """Synthesize keyword (Speech Commands), sound-event (ESC-50) and unlabelled (LibriSpeech)
    demo corpora in their official layouts."""
    summary = build_demo(out, size=size, seed=seed, workers=workers, progress=True)
    table = Table(title=f"demo corpora ({size}, seed {seed}) in {out}")
    for column in ("corpus", "files", "hours", "seconds", "path"):
        table.add_column(column, justify="left" if column in ("corpus", "path") else "right")
    for name, c in summary["corpora"].items():
        table.add_row(name, str(c["files"]), f"{c['hours']:.3f}", f"{c['seconds']:.1f}", c["path"])
    console.print(table)
    if "recordings" in summary:
        found = ", ".join(f"{name} {hours:.3f} h" for name, hours in summary["recordings"].items()) or "none"
        console.print(f"real recordings in librispeech/: {found}" + "".join(
            f"; {name} not installed (apt-get install {package})" for name, package in summary["recordings_missing"].items()))
    console.print(f"done in {summary['seconds']:.1f} s with {workers} worker(s)")
