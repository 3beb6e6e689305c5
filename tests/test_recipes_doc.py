"""docs/recipes.md agrees with what maeast resolves: every "ours" cell of every section.

Sections are `## pretrain: <preset>` (load_config(preset), as `maeast pretrain --config`) and
`## task: <task>` (load_finetune_config with the default finetune_patch config and the task, as
`maeast finetune --task`; keys `task.<field>` read the Task dataclass). See the file's head.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import yaml

from maeast.configio import to_dict
from maeast.pretrain.config import load_config, shipped_configs
from maeast.finetune.config import load_finetune_config
from maeast.finetune.tasks import get_task

DOC = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
COLUMNS = ["key", "official", "source", "ours", "note"]
HEADING = re.compile(r"^## (pretrain|task): (\S+)\s*$")


@dataclasses.dataclass
class Row:
    line: int
    key: str
    ours: str


@dataclasses.dataclass
class Section:
    kind: str
    name: str
    line: int
    header: list[str] | None = None
    rows: list[Row] = dataclasses.field(default_factory=list)
    tables: int = 0


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse(text: str) -> list[Section]:
    """The sections of recipes.md with their one table each; anything off the format is an error."""
    sections: list[Section] = []
    in_table = False
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("## "):
            m = HEADING.match(line)
            assert m, f"recipes.md:{n}: a level-2 heading must be '## pretrain: <preset>' or '## task: <task>'"
            sections.append(Section(m.group(1), m.group(2), n))
            in_table = False
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        assert sections, f"recipes.md:{n}: a table before any section"
        sec = sections[-1]
        if not in_table:
            sec.tables += 1
            sec.header = cells(line)
            in_table = True
            continue
        row = cells(line)
        if set("".join(row)) <= set("-: "):
            continue  # the |---| separator
        assert len(row) == len(COLUMNS), f"recipes.md:{n}: {len(row)} cells, the table has {len(COLUMNS)}"
        key = row[0]
        assert key == "-" or re.fullmatch(r"`[A-Za-z0-9_.]+`", key), f"recipes.md:{n}: key {key!r} not in backticks"
        sec.rows.append(Row(n, key.strip("`"), row[3]))
    return sections


SECTIONS = parse(DOC.read_text())


FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def scalar(cell: str):
    """An "ours" cell as YAML reads it; 1e-5 is a float here too (PyYAML's YAML 1.1 wants 1.0e-5)."""
    def fix(v):
        if isinstance(v, list):
            return [fix(x) for x in v]
        return float(v) if isinstance(v, str) and FLOAT.fullmatch(v) else v
    return fix(yaml.safe_load(cell)) if cell else None


def lookup(tree: dict, key: str, where: str):
    node = tree
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"{where}: {key!r} is not a resolved config key"
        node = node[part]
    return node


def same(ours, actual) -> bool:
    if isinstance(actual, tuple):
        actual = list(actual)
    if isinstance(ours, list) and isinstance(actual, list):
        return len(ours) == len(actual) and all(same(a, b) for a, b in zip(ours, actual))
    if isinstance(ours, bool) or isinstance(actual, bool) or ours is None or actual is None:
        return ours is actual or ours == actual and type(ours) is type(actual)
    if isinstance(ours, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(ours, actual, rel_tol=1e-9, abs_tol=0.0)
    return ours == actual


def resolver(sec: Section):
    """key -> the value maeast resolves for this section."""
    if sec.kind == "pretrain":
        tree = to_dict(load_config(sec.name))
        return lambda key, where: lookup(tree, key, where)
    tree = to_dict(load_finetune_config("finetune_patch", task=sec.name))
    task = dataclasses.asdict(get_task(sec.name))

    def get(key: str, where: str):
        if key.startswith("task."):
            return lookup(task, key.removeprefix("task."), where)
        return lookup(tree, key, where)
    return get


def test_format():
    assert SECTIONS, "recipes.md has no sections"
    names = [(s.kind, s.name) for s in SECTIONS]
    assert len(names) == len(set(names)), f"a section appears twice: {names}"
    for sec in SECTIONS:
        where = f"recipes.md:{sec.line} ({sec.kind}: {sec.name})"
        assert sec.tables == 1, f"{where}: {sec.tables} tables, one expected"
        assert sec.header == COLUMNS, f"{where}: columns {sec.header}, expected {COLUMNS}"
        assert sec.rows, f"{where}: an empty table"
        keys = [r.key for r in sec.rows if r.key != "-"]
        assert len(keys) == len(set(keys)), f"{where}: a key listed twice"


def test_every_shipped_pretrain_preset_has_a_section():
    documented = {s.name for s in SECTIONS if s.kind == "pretrain"}
    assert set(shipped_configs("pretrain_")) <= documented


@pytest.mark.parametrize("sec", SECTIONS, ids=[f"{s.kind}:{s.name}" for s in SECTIONS])
def test_ours_matches_resolved(sec):
    get = resolver(sec)
    for row in sec.rows:
        if row.key == "-":
            continue
        where = f"recipes.md:{row.line}"
        ours = scalar(row.ours)
        actual = get(row.key, where)
        assert same(ours, actual), f"{where}: {sec.kind} {sec.name} `{row.key}`: the doc says {ours!r}, maeast " \
                                   f"resolves {actual!r}"


def test_parser_catches_drift():
    """A wrong cell, an unknown key and a malformed heading all fail (the checks above can fail)."""
    sec = Section("pretrain", "pretrain_tiny", 1)
    get = resolver(sec)
    assert same(scalar("64"), get("model.dim", "x")) and not same(scalar("65"), get("model.dim", "x"))
    assert same(scalar("[0.9, 0.98]"), get("optim.betas", "x"))
    assert not same(scalar("true"), 1) and not same(scalar("1"), True)
    assert scalar("1e-5") == 1e-5 and scalar("[1e-6, 2]") == [1e-6, 2] and scalar("step") == "step"
    with pytest.raises(AssertionError, match="not a resolved config key"):
        get("model.no_such_field", "x")
    with pytest.raises(AssertionError, match="level-2 heading"):
        parse("## pretrain pretrain_tiny\n")
    table = "## task: esc50\n\n| key | official | source | ours | note |\n|---|---|---|---|---|\n| `optim.lr` | 1 | s | 2 |\n"
    with pytest.raises(AssertionError, match="4 cells"):
        parse(table)
