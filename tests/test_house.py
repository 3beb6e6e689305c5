"""The house rules that a reader relies on: the shared training layer below both recipes, and short functions."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "maeast"


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_the_shared_training_layer_imports_no_recipe():
    found = {(p.name, m) for p in (PACKAGE / "train").glob("*.py") for m in imports(p)
             if m.startswith(("maeast.pretrain", "maeast.finetune", "maeast.cli", "maeast.inference"))}
    assert found == set()
    # and pretraining and fine-tuning are recipes beside each other: neither imports the other
    assert not any(m.startswith("maeast.finetune") for p in (PACKAGE / "pretrain").glob("*.py") for m in imports(p))
    assert not any(m.startswith("maeast.pretrain") for p in (PACKAGE / "finetune").glob("*.py") for m in imports(p))


def test_no_function_is_over_80_lines():
    long = [(str(p.relative_to(PACKAGE)), n.name, n.end_lineno - n.lineno + 1) for p in PACKAGE.rglob("*.py")
            for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
    assert long == []


def test_fine_tuning_asks_its_mode_in_one_place():
    """The config's run.freeze_encoder is read where the mode is chosen (modes.mode_of) and where results.json
    reports it; nothing else forks on it."""
    readers = sorted((str(p.relative_to(PACKAGE)), node.lineno) for p in PACKAGE.rglob("*.py")
                     for node in ast.walk(ast.parse(p.read_text()))
                     if isinstance(node, ast.Attribute) and node.attr == "freeze_encoder")
    assert [path for path, _ in readers] == ["finetune/loop.py", "finetune/modes.py"]
