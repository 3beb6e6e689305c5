"""What a recipe returns: the clips of one corpus with their labels, splits and folds."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from maeast.errors import MaeastError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".opus")
FFMPEG_EXTENSIONS = (".mkv", ".m4a", ".mp4", ".webm", ".aac")


@dataclass(frozen=True)
class Item:
    """One clip to pack.

    key:    unique within the corpus, made of [A-Za-z0-9_-] (see `make_key`).
    path:   the source audio file.
    split:  train, valid, test (or a recipe's own split names).
    labels: label names (empty for unlabelled audio; several for multi-label corpora).
    fold:   cross-validation fold, where the corpus defines one.
    start, end: a segment of the file in seconds (None: from the start / to the end).
    extra:  recipe-specific metadata stored with the sample (transcript, original ids...).
    """

    key: str
    path: Path
    split: str
    labels: tuple[str, ...] = ()
    fold: int | None = None
    speaker: str | None = None
    start: float | None = None
    end: float | None = None
    extra: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Scan:
    """A recipe's result: the items in a deterministic order, and the corpus's label vocabulary."""

    corpus: str
    items: list[Item]
    labels: list[str] = field(default_factory=list)  # vocabulary; a label's id is its position
    multi_label: bool = False
    report: dict = field(default_factory=dict)  # facts for the index: coverage, left-out counts


_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def make_key(*parts: object) -> str:
    """A webdataset-safe key: no dots (they start the extension), no slashes."""
    return "-".join(_KEY_BAD.sub("_", str(p)).strip("_") or "_" for p in parts)


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise MaeastError(f"{what} not found: {path} (check --root)")
    return path


def require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MaeastError(f"{what} not found: {path} (it ships with the corpus; check --root)")
    return path


def audio_files(root: Path, extensions=AUDIO_EXTENSIONS) -> list[Path]:
    """Every audio file below root, sorted, hidden files and folders left out."""
    exts = {e.lower() for e in extensions}
    found = [p for p in root.rglob("*")
             if p.suffix.lower() in exts and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(found)


# name -> scan function (root: Path, **options) -> Scan
RECIPES: dict[str, Callable[..., Scan]] = {}


def recipe(name: str):
    """Register a scan function under a recipe name."""

    def register(fn):
        RECIPES[name] = fn
        return fn

    return register


def run_recipe(name: str, root: Path, options: dict[str, str] | None = None) -> Scan:
    """Look the recipe up, check its options against its signature, and scan the corpus."""
    if name not in RECIPES:
        raise MaeastError(f"unknown recipe {name!r}; valid recipes: {', '.join(sorted(RECIPES))}")
    fn = RECIPES[name]
    options = dict(options or {})
    accepted = [p for p in inspect.signature(fn).parameters if p != "root"]
    for key in options:
        if key not in accepted:
            valid = ", ".join(accepted) or "none"
            raise MaeastError(f"recipe {name!r} has no option {key!r}; its options: {valid}")
    require_dir(Path(root), f"{name} root folder")
    return fn(Path(root), **options)
