"""The config reference: every key documented, and docs/config.md what the code gives."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from maeast.cli import app
from maeast.configref import configs, markdown, rows
from maeast.pretrain.config import load_config
from maeast.finetune.config import load_finetune_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_every_key_is_documented():
    assert [r.key for cls in configs().values() for r in rows(cls) if not r.doc] == []


def test_the_reference_lists_every_key_a_config_accepts():
    # each listed key is a real override, and a shipped config resolves with every key present
    from maeast.configio import to_dict
    for cls, resolved in zip(configs().values(), (load_config("pretrain_tiny"), load_finetune_config("finetune_tiny"))):
        listed = {r.key for r in rows(cls)}
        flat = set()

        def walk(d, prefix=""):
            for k, v in d.items():
                walk(v, f"{prefix}{k}.") if isinstance(v, dict) else flat.add(prefix + k)
        walk(to_dict(resolved))
        assert listed == flat


def test_docs_config_md_is_up_to_date():
    assert DOC.read_text() == markdown(), "regenerate with `maeast config reference --out docs/config.md`"
    result = CliRunner().invoke(app, ["config", "reference", "--out", str(DOC), "--check"])
    assert result.exit_code == 0, result.output
