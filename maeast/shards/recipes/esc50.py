"""ESC-50: audio/*.wav and meta/esc50.csv, as in the karolpiczak/ESC-50 repository.

esc50.csv columns: filename, fold, target, category, esc10, src_file, take. The vocabulary is the
categories ordered by target id, so label ids are ESC-50's targets. Every clip goes to split "train"
with its fold (1-5) set: the fold is the cross-validation key (train on four folds, test on the
fifth). The esc10 flag, source file and take are kept in each sample's JSON.

Options: subset=esc50|esc10 (esc10: only the ESC-10 clips, its 10 categories in target order, so
their ids are 0-9 rather than ESC-50's targets; the target is kept in each sample's JSON).
"""

from __future__ import annotations

import csv
from pathlib import Path

from maeast.errors import MaeastError
from maeast.shards.recipes.base import (AUDIO_EXTENSIONS, Item, Scan, audio_files, make_key, recipe,
                                        require_dir, require_file)

COLUMNS = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
EXAMPLES = 5


def read_meta(path: Path) -> list[dict]:
    """esc50.csv -> one dict per clip, with fold and target as ints and esc10 as a bool."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != COLUMNS:
            raise MaeastError(f"{path}:1: expected the header {','.join(COLUMNS)}, got {header}")
        for row in reader:
            if not row:
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != len(COLUMNS):
                raise MaeastError(f"{where}: expected {len(COLUMNS)} fields ({','.join(COLUMNS)}), got {row}")
            rec = dict(zip(COLUMNS, row))
            if not (rec["fold"].isdigit() and rec["target"].isdigit()) or rec["esc10"] not in ("True", "False"):
                raise MaeastError(f"{where}: fold and target must be integers and esc10 True/False, got {row}")
            if not rec["filename"] or not rec["category"]:
                raise MaeastError(f"{where}: empty filename or category in {row}")
            rec.update(fold=int(rec["fold"]), target=int(rec["target"]), esc10=rec["esc10"] == "True")
            rows.append(rec)
    if not rows:
        raise MaeastError(f"{path} lists no clips")
    return rows


def vocabulary(rows: list[dict], path: Path) -> list[str]:
    """Categories ordered by target id; each target must name one category and ids must be 0..N-1."""
    by_target: dict[int, str] = {}
    for rec in rows:
        if by_target.setdefault(rec["target"], rec["category"]) != rec["category"]:
            raise MaeastError(f"{path}: target {rec['target']} is both {by_target[rec['target']]!r} "
                              f"and {rec['category']!r}")
    targets = sorted(by_target)
    if len(set(by_target.values())) != len(targets):
        raise MaeastError(f"{path}: one category has several target ids")
    if targets != list(range(len(targets))):
        gap = next(i for i, t in enumerate(targets) if t != i)
        raise MaeastError(f"{path}: target ids must run 0..{len(targets) - 1}; target {gap} has no clip")
    return [by_target[t] for t in targets]


@recipe("esc50")
def scan(root: Path, subset: str = "esc50") -> Scan:
    if subset not in ("esc50", "esc10"):
        raise MaeastError(f"esc50 option subset={subset!r}: use esc50 or esc10")
    meta = require_file(root / "meta" / "esc50.csv", "ESC-50 metadata meta/esc50.csv")
    audio_dir = require_dir(root / "audio", "ESC-50 audio folder audio/")
    every = read_meta(meta)
    labels = vocabulary(every, meta)
    rows = [r for r in every if r["esc10"]] if subset == "esc10" else every
    if subset == "esc10":
        labels = [c for c in labels if c in {r["category"] for r in rows}]
    items, missing = [], []
    for rec in rows:
        path = audio_dir / rec["filename"]
        if not path.is_file():
            missing.append(rec["filename"])
            continue
        items.append(Item(key=make_key(Path(rec["filename"]).stem), path=path, split="train",
                          labels=(rec["category"],), fold=rec["fold"],
                          extra={"target": rec["target"], "esc10": rec["esc10"],
                                 "src_file": rec["src_file"], "take": rec["take"]}))
    listed = {r["filename"] for r in every}
    unlisted = [p.name for p in audio_files(audio_dir, AUDIO_EXTENSIONS) if p.name not in listed]
    folds: dict[str, int] = {}
    for item in sorted(items, key=lambda i: i.fold):
        folds[str(item.fold)] = folds.get(str(item.fold), 0) + 1
    report = {"subset": subset, "classes": len(labels), "listed": len(rows), "missing_audio": len(missing),
              "missing_examples": missing[:EXAMPLES], "unlisted_files": len(unlisted),
              "unlisted_examples": unlisted[:EXAMPLES], "folds": folds,
              "cv": "fold is the cross-validation key; every clip is in split train"}
    return Scan(corpus="esc50" if subset == "esc50" else "esc10", items=items, labels=labels, report=report)
