"""AudioSet: the official segment CSVs and class_labels_indices.csv, with clips found by file name.

Layout: the CSVs as Google distributes them (in --root, or in `meta=DIR`, or anywhere below --root)
and the downloaded clips anywhere below --root, one folder or one per CSV. A clip is matched to its
CSV row by the usual download names: `{ytid}`, `Y{ytid}`, `{ytid}_{start}` and `{ytid}_{start}_{end}`
(start/end as whole seconds, `30.0`, `30.000` or milliseconds), each also with a `Y` prefix.

Labels are the class mids (stable names); the vocabulary is class_labels_indices.csv in its own
order, so label ids are the official indices; display names go to the report. Split = the CSV's
name: balanced_train, unbalanced_train, eval.

Options: csvs=auto|NAME,NAME (auto: every official CSV present), meta=DIR (where the CSVs are),
segments=clip|full (clip: files are the 10 s segments, as downloaders write them; full: files are
whole videos and the segment is cut at [start, end)).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from maeast.errors import MaeastError
from maeast.shards.recipes.base import AUDIO_EXTENSIONS, FFMPEG_EXTENSIONS, Item, Scan, make_key, recipe

SPLITS = {"balanced_train": "balanced_train_segments.csv",
          "unbalanced_train": "unbalanced_train_segments.csv",
          "eval": "eval_segments.csv"}
CLASSES = "class_labels_indices.csv"
EXTENSIONS = {e.lower() for e in AUDIO_EXTENSIONS + FFMPEG_EXTENSIONS}
EXAMPLES = 5  # how many missing / unmatched names the report lists
YTID_LEN = 11


def _walk(root: Path) -> tuple[list[Path], dict[str, list[Path]]]:
    """One pass over the tree: audio files (sorted), and every file by name (to find the CSVs)."""
    audio, by_name = [], {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            path = Path(folder) / name
            by_name.setdefault(name, []).append(path)
            if path.suffix.lower() in EXTENSIONS:
                audio.append(path)
    return sorted(audio), by_name


def _find_meta(name: str, root: Path, meta: str, by_name: dict[str, list[Path]]) -> Path | None:
    if meta:
        folder = Path(meta) if Path(meta).is_absolute() else root / meta
        if not folder.is_dir():
            raise MaeastError(f"audioset meta folder not found: {folder} (meta= names the folder holding the CSVs)")
        return folder / name if (folder / name).is_file() else None
    if (root / name).is_file():
        return root / name
    found = sorted(by_name.get(name, []), key=lambda p: (len(p.parts), str(p)))
    return found[0] if found else None


def read_classes(path: Path) -> tuple[list[str], list[str]]:
    """class_labels_indices.csv -> (mids, display names) in index order."""
    mids, names = [], []
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header != ["index", "mid", "display_name"]:
            raise MaeastError(f"{path}:1: expected the header index,mid,display_name, got {header}")
        for row in rows:
            if not row:
                continue
            if len(row) != 3 or not row[0].strip().isdigit() or int(row[0]) != len(mids) or not row[1]:
                raise MaeastError(f"{path}:{rows.line_num}: malformed class row {row} "
                                  f"(expected {len(mids)},<mid>,\"<display name>\")")
            if row[1] in mids:
                raise MaeastError(f"{path}:{rows.line_num}: class {row[1]} listed twice")
            mids.append(row[1])
            names.append(row[2])
    if not mids:
        raise MaeastError(f"{path} lists no classes")
    return mids, names


def read_segments(path: Path, known: set[str]) -> list[tuple[str, float, float, tuple[str, ...]]]:
    """A segments CSV -> (ytid, start, end, label mids) rows; '#' lines are comments."""
    segments = []
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f, skipinitialspace=True)
        for row in rows:
            if not row or row[0].startswith("#"):
                continue
            where = f"{path}:{rows.line_num}"
            if len(row) != 4:
                raise MaeastError(f"{where}: expected YTID, start_seconds, end_seconds, \"labels\"; got {row}")
            ytid, start, end, labels = row
            try:
                start_s, end_s = float(start), float(end)
            except ValueError:
                raise MaeastError(f"{where}: start/end {start!r}, {end!r} are not numbers") from None
            mids = tuple(m.strip() for m in labels.split(",") if m.strip())
            if not ytid or end_s <= start_s or not mids:
                raise MaeastError(f"{where}: malformed segment row {row}")
            unknown = [m for m in mids if m not in known]
            if unknown:
                raise MaeastError(f"{where}: label {unknown[0]} is not in {CLASSES}")
            segments.append((ytid, start_s, end_s, mids))
    return segments


def _times(seconds: float) -> list[str]:
    """The ways downloaders write a segment time into a file name."""
    forms = [f"{seconds:.3f}", f"{seconds:.1f}", str(int(round(seconds * 1000)))]
    if seconds == int(seconds):
        forms.insert(0, str(int(seconds)))
    return list(dict.fromkeys(forms))


def candidate_stems(ytid: str, start: float, end: float) -> list[str]:
    """File stems (no extension) that name this segment, most specific first."""
    stems = []
    for s in _times(start):
        stems += [f"{ytid}_{s}_{e}" for e in _times(end)]
        stems.append(f"{ytid}_{s}")
    stems.append(ytid)
    return stems + [f"Y{stem}" for stem in stems]


def _choose(paths: list[Path], split: str, csv_name: str) -> Path:
    """Several files share a name: prefer one under a folder named after the split or its CSV."""
    hints = {split, Path(csv_name).stem, split.replace("_train", ""), f"{split}_wav", f"{split}_segments"}
    for path in paths:
        if hints & set(path.parent.parts):
            return path
    return paths[0]


@recipe("audioset")
def scan(root: Path, csvs: str = "auto", meta: str = "", segments: str = "clip") -> Scan:
    if segments not in ("clip", "full"):
        raise MaeastError(f"audioset option segments={segments!r}: use clip (files are the 10 s segments) "
                          "or full (files are whole videos)")
    audio, by_name = _walk(root)
    classes_path = _find_meta(CLASSES, root, meta, by_name)
    if classes_path is None:
        raise MaeastError(f"{CLASSES} not found under {root} (it ships with AudioSet's CSVs; "
                          "put it beside them or pass -o meta=DIR)")
    mids, names = read_classes(classes_path)
    chosen = _chosen_splits(csvs, root, meta, by_name)

    by_stem: dict[str, list[Path]] = {}
    for path in audio:
        by_stem.setdefault(path.stem, []).append(path)
    # YouTube ids are 11 characters: a row whose id starts no file name (bare or after Y) is missing
    prefixes = {stem[:YTID_LEN] for stem in by_stem} | {stem[1:YTID_LEN + 1] for stem in by_stem if stem[:1] == "Y"}
    known, items, coverage, used, seen = set(mids), [], {}, set(), set()
    for split, csv_path in chosen:
        listed = read_segments(csv_path, known)
        missing, duplicates = [], 0
        for ytid, start, end, labels in listed:
            key = make_key(ytid, int(round(start * 1000)))
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            paths = None
            if len(ytid) != YTID_LEN or ytid in prefixes:
                paths = next((by_stem[s] for s in candidate_stems(ytid, start, end) if s in by_stem), None)
            if paths is None:
                missing.append(ytid)
                continue
            path = _choose(paths, split, csv_path.name)
            used.add(path)
            cut = segments == "full"
            items.append(Item(key=key, path=path, split=split, labels=labels,
                              start=start if cut else None, end=end if cut else None,
                              extra={"ytid": ytid, "yt_segment": [start, end]}))
        coverage[split] = {"csv": str(csv_path), "listed": len(listed), "found": len(listed) - len(missing) - duplicates,
                           "missing": len(missing), "missing_examples": missing[:EXAMPLES],
                           "duplicate_rows": duplicates}
    unmatched = [str(p.relative_to(root)) for p in audio if p not in used]
    report = {"classes": len(mids), "classes_file": str(classes_path), "display_names": names,
              "coverage": coverage, "unmatched_files": len(unmatched),
              "unmatched_examples": unmatched[:EXAMPLES], "segments": segments}
    return Scan(corpus="audioset", items=items, labels=mids, multi_label=True, report=report)


def _chosen_splits(csvs: str, root: Path, meta: str, by_name: dict[str, list[Path]]) -> list[tuple[str, Path]]:
    """The (split, CSV path) pairs to read, in the official order."""
    names = [n.strip() for n in csvs.split(",") if n.strip()]
    if names == ["auto"]:
        found = [(s, _find_meta(f, root, meta, by_name)) for s, f in SPLITS.items()]
        found = [(s, p) for s, p in found if p is not None]
        if not found:
            raise MaeastError(f"no AudioSet segment CSV ({', '.join(SPLITS.values())}) under {root}; "
                              "put them beside the audio or pass -o meta=DIR")
        return found
    by_file = {f: s for s, f in SPLITS.items()}
    splits = []
    for name in names:
        split = by_file.get(name, name)
        if split not in SPLITS:
            raise MaeastError(f"audioset option csvs: unknown CSV {name!r}; "
                              f"use auto or a comma list of {', '.join(SPLITS)}")
        splits.append(split)
    chosen = []
    for split in SPLITS:  # official order, whatever order was given
        if split in splits:
            path = _find_meta(SPLITS[split], root, meta, by_name)
            if path is None:
                raise MaeastError(f"{SPLITS[split]} not found under {root} (download it with the other "
                                  "AudioSet CSVs, or pass -o meta=DIR)")
            chosen.append((split, path))
    return chosen
