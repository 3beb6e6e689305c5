"""The `maeast` command line: thin Typer commands over plain functions."""

from __future__ import annotations

from maeast.cli import compare, config, data, finetune, shard, shard_ffcv, shard_stats, tools, train  # noqa: F401  (modules register commands)
from maeast.cli.common import new_app

app = new_app("maeast: pack audio into shards, pretrain MAE-AST, fine-tune, evaluate, embed.")
app.add_typer(shard.app, name="shard")
app.add_typer(data.app, name="data")
app.add_typer(config.app, name="config")
train.register(app)
finetune.register(app)
tools.register(app)
compare.register(app)


def main() -> None:
    app()
