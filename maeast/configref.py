"""The config reference: every key of the pretraining and fine-tuning configs, from the dataclasses.

Each field of a config dataclass carries its documentation as the string literal under it (the
attribute-docstring convention); this module reads those with `ast` and renders one markdown
table per config, so the reference cannot drift from the code:

    maeast config reference --out docs/config.md     # what docs/config.md holds (a test checks it)
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import lru_cache

from maeast.errors import MaeastError


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field name: the string literal right under its annotation} of a dataclass and the ones it extends."""
    base = next((b for b in cls.__mro__[1:] if dataclasses.is_dataclass(b)), None)
    docs = dict(field_docs(base)) if base is not None else {}
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    for node, after in zip(body, body[1:] + [None]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) \
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    type: str
    default: str
    doc: str


def rows(cls: type, prefix: str = "") -> list[Row]:
    """One Row per leaf field of a config dataclass, nested sections flattened as section.key."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(kind):
            out += rows(kind, f"{prefix}{f.name}.")
            continue
        out.append(Row(prefix + f.name, _type_name(kind), _show(default), docs.get(f.name, "")))
    return out


def _type_name(kind) -> str:
    text = str(kind) if not isinstance(kind, type) else kind.__name__
    return text.replace("typing.", "").replace("NoneType", "None")


def _show(value) -> str:
    if dataclasses.is_dataclass(value):
        return "(section)"
    if isinstance(value, tuple):
        value = list(value)
    return "null" if value is None else str(value).replace("'", "")


def configs() -> dict[str, type]:
    from maeast.pretrain.config import PretrainConfig
    from maeast.finetune.config import FinetuneConfig
    return {"pretraining (`maeast pretrain`, `launch/pretrain.py`)": PretrainConfig,
            "fine-tuning (`maeast finetune`, `maeast compare`)": FinetuneConfig}


def markdown() -> str:
    """The whole reference as markdown."""
    from maeast.pretrain.config import shipped_configs
    parts = ["# Config reference", "",
             "Generated from the config dataclasses by `maeast config reference --out docs/config.md`; do not",
             "edit by hand. A run's config is layered: these defaults <- the model preset (pretraining) or",
             "the task's published recipe (fine-tuning) <- the YAML file (`--config NAME` for a shipped one,",
             "or a path) <- `--section.key VALUE` on the command line. An unknown key is an error naming it.",
             "",
             f"Shipped pretraining configs: {', '.join(f'`{n}`' for n in shipped_configs())}.",
             f"Shipped fine-tuning configs: {', '.join(f'`{n}`' for n in shipped_configs('finetune_'))}.", ""]
    for title, cls in configs().items():
        parts += [f"## {title[0].upper()}{title[1:]}", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        parts += [f"| `{r.key}` | {r.type} | `{r.default}` | {r.doc.replace('|', '/')} |" for r in rows(cls)]
        parts.append("")
    return "\n".join(parts)


def check_written(text: str, path) -> None:
    """A one-line error if the committed reference differs from the code's."""
    from pathlib import Path
    path = Path(path)
    if not path.is_file() or path.read_text() != text:
        raise MaeastError(f"{path} is out of date; regenerate it with `maeast config reference --out {path}`")
