"""`tsv`: fairseq audio manifests, as the seed used them.

A manifest's first line is the audio root (absolute, or relative to the manifest's folder); each
following line is `relative/path<TAB>number_of_samples`, with an optional third column of labels
(comma-separated for multi-label). `--root` is the folder of manifests; `train.tsv`, `valid.tsv`,
`test.tsv` (any name) each become the split of their name.
"""

from __future__ import annotations

from pathlib import Path

from maeast.errors import MaeastError
from maeast.shards.recipes.base import Item, Scan, make_key, recipe


def _read_manifest(path: Path) -> tuple[Path, list[tuple[str, int, tuple[str, ...], int]]]:
    lines = path.read_text().splitlines()
    if not lines or not lines[0].strip():
        raise MaeastError(f"{path}: the first line must be the audio root folder (fairseq manifest format)")
    audio_root = Path(lines[0].strip())
    if not audio_root.is_absolute():
        audio_root = path.parent / audio_root
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.rstrip("\n").split("\t")
        if len(cols) < 2 or not cols[1].strip().isdigit():
            raise MaeastError(f"{path}:{number}: expected 'path<TAB>num_samples[<TAB>labels]', got {line!r}")
        labels = tuple(x.strip() for x in cols[2].split(",") if x.strip()) if len(cols) > 2 else ()
        rows.append((cols[0], int(cols[1]), labels, number))
    return audio_root, rows


@recipe("tsv")
def scan(root: Path, corpus: str = "") -> Scan:
    manifests = sorted(root.glob("*.tsv"))
    if not manifests:
        raise MaeastError(f"no .tsv manifests in {root} (expected train.tsv, valid.tsv, ...)")
    items, missing = [], 0
    for manifest in manifests:
        audio_root, rows = _read_manifest(manifest)
        for relative, _, labels, _ in rows:
            path = audio_root / relative
            if not path.is_file():
                missing += 1
            items.append(Item(key=make_key(Path(relative).with_suffix("")), path=path, split=manifest.stem,
                              labels=labels))
    multi = any(len(item.labels) > 1 for item in items)
    return Scan(corpus=corpus or make_key(root.name), items=items, multi_label=multi,
                report={"manifests": [m.name for m in manifests], "listed_missing": missing})
