"""`maeast config reference`: every config key with its type, default and meaning (docs/config.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from maeast.cli.common import console, friendly, new_app

app = new_app("The configuration reference.")


@app.command("reference")
@friendly
def reference(
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the markdown here (default: print it)."),
    check: bool = typer.Option(False, "--check", help="Exit 2 if --out differs from what the code gives."),
) -> None:
    """Every key of the pretraining and fine-tuning configs, as markdown tables read from the code."""
    from maeast.configref import check_written, markdown
    text = markdown()
    if out is None:
        print(text)
    elif check:
        check_written(text, out)
        console.print(f"{out} is up to date", highlight=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        console.print(f"wrote {out}", highlight=False)
