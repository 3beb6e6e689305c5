"""`folder`: one class per subfolder (recursive), optional train/valid/test folders above them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from maeast.errors import MaeastError
from maeast.shards.recipes.base import AUDIO_EXTENSIONS, FFMPEG_EXTENSIONS, Item, Scan, audio_files, make_key, recipe

SPLIT_FOLDERS = {"train": "train", "valid": "valid", "validation": "valid", "dev": "valid", "val": "valid",
                 "test": "test", "eval": "test"}


def seeded_split(key: str, seed: int, valid_fraction: float, test_fraction: float) -> str:
    """A split that depends only on the key and the seed: stable as files are added or removed."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    return "test" if u < test_fraction else "valid" if u < test_fraction + valid_fraction else "train"


def parse_fraction(value, name: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise MaeastError(f"option {name} must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= f < 1.0:
        raise MaeastError(f"option {name} must be between 0 and 1, got {value!r}")
    return f


@recipe("folder")
def scan(root: Path, corpus: str = "", valid_fraction: str = "0", test_fraction: str = "0", seed: str = "0") -> Scan:
    """Label = the first folder below the root (or below a train/valid/test folder when those exist).

    Without split folders every clip is in `train`, unless valid_fraction / test_fraction ask for a
    seeded split (by key hash, so the same files always land in the same split).
    """
    valid_f, test_f = parse_fraction(valid_fraction, "valid_fraction"), parse_fraction(test_fraction, "test_fraction")
    if valid_f + test_f >= 1.0:
        raise MaeastError("valid_fraction + test_fraction must be below 1")
    files = audio_files(root, AUDIO_EXTENSIONS + FFMPEG_EXTENSIONS)
    top = {p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1}
    has_split_folders = bool(top) and top <= set(SPLIT_FOLDERS)
    items = []
    for path in files:
        parts = path.relative_to(root).parts
        split = "train"
        if has_split_folders:
            split, parts = SPLIT_FOLDERS[parts[0]], parts[1:]
        label = (parts[0],) if len(parts) > 1 else ()
        key = make_key(*path.relative_to(root).with_suffix("").parts)
        if not has_split_folders and (valid_f or test_f):
            split = seeded_split(key, int(seed), valid_f, test_f)
        items.append(Item(key=key, path=path, split=split, labels=label))
    return Scan(corpus=corpus or make_key(root.name), items=items,
                report={"split_folders": has_split_folders, "seeded_split": [valid_f, test_f, int(seed)]
                        if not has_split_folders and (valid_f or test_f) else None})
