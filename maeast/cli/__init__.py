"""The `maeast` command line: thin Typer commands over plain functions."""

from __future__ import annotations

from maeast.cli.common import new_app
from maeast.cli import data, shard, shard_stats  # noqa: F401  (shard_stats registers `shard stats`)

app = new_app("maeast: pack audio into shards, pretrain MAE-AST, fine-tune, evaluate, embed.")
app.add_typer(shard.app, name="shard")
app.add_typer(data.app, name="data")


def main() -> None:
    app()
