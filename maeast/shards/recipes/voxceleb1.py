"""VoxCeleb1 speaker identification (1,251 speakers): wav/{speaker}/{video}/{n}.wav + iden_split.txt.

iden_split.txt lines read `1 id10001/1zcIwhmdeo4/00001.wav`: 1 train, 2 valid, 3 test. Clips are
found anywhere below --root by their last three path parts (so the dev and test zips may be unpacked
into one wav/ folder or into vox1_dev_wav/wav and vox1_test_wav/wav), as .wav or, in converted copies,
.m4a/.flac. Label = speaker = the speaker id; the vocabulary is the speaker ids in sorted order.

Options: split_file=PATH (default: iden_split.txt in --root, else the one found below it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from maeast.errors import MaeastError
from maeast.shards.recipes.base import Item, Scan, make_key, recipe

SPLIT_FILE = "iden_split.txt"
SPLITS = {"1": "train", "2": "valid", "3": "test"}
EXTENSIONS = (".wav", ".m4a", ".flac")
LINE = re.compile(r"^([123]) ((id\d+)/([^/\s]+)/([^/\s]+)\.wav)$")
EXAMPLES = 5


def read_split(path: Path) -> list[tuple[str, str, str, str]]:
    """iden_split.txt -> (split, speaker, video, utterance) per line."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = LINE.match(line.strip())
        if not m:
            raise MaeastError(f"{path}:{number}: expected a line like `1 id10001/1zcIwhmdeo4/00001.wav` "
                              f"(1 train, 2 valid, 3 test), got {line.strip()!r}")
        rows.append((SPLITS[m.group(1)], m.group(3), m.group(4), m.group(5)))
    if not rows:
        raise MaeastError(f"{path} lists no utterances")
    return rows


def _walk(root: Path) -> tuple[dict[tuple[str, str, str], Path], list[Path]]:
    """(speaker, video, utterance) -> file, for every clip below root; and every iden_split.txt."""
    clips, split_files = {}, []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        for name in sorted(files):
            path = here / name
            if name == SPLIT_FILE:
                split_files.append(path)
            elif path.suffix.lower() in EXTENSIONS and not name.startswith("."):
                clips.setdefault((here.parent.name, here.name, path.stem), path)
    return clips, split_files


@recipe("voxceleb1")
def scan(root: Path, split_file: str = "") -> Scan:
    clips, found = _walk(root)
    if split_file:
        path = Path(split_file).expanduser()
        path = path if path.is_absolute() or path.is_file() else root / split_file
        if not path.is_file():
            raise MaeastError(f"VoxCeleb1 split file not found: {path} (split_file= names iden_split.txt)")
    elif (root / SPLIT_FILE).is_file():
        path = root / SPLIT_FILE
    elif found:
        path = min(found, key=lambda p: (len(p.parts), str(p)))
    else:
        raise MaeastError(f"{SPLIT_FILE} not found under {root} (download it from the VoxCeleb1 page "
                          "and put it in --root, or pass -o split_file=PATH)")
    rows = read_split(path)
    items, missing, used = [], [], set()
    for split, speaker, video, utt in rows:
        clip = clips.get((speaker, video, utt))
        if clip is None:
            missing.append(f"{speaker}/{video}/{utt}.wav")
            continue
        key = make_key(speaker, video, utt)
        if key in used:
            raise MaeastError(f"{path}: {speaker}/{video}/{utt}.wav is listed twice")
        used.add(key)
        items.append(Item(key=key, path=clip, split=split, labels=(speaker,), speaker=speaker,
                          extra={"video": video, "utterance": utt}))
    speakers = sorted({speaker for _, speaker, _, _ in rows})
    listed = {(s, v, u) for _, s, v, u in rows}
    unlisted = sorted(str(p.relative_to(root)) for k, p in clips.items() if k not in listed)
    report = {"split_file": str(path), "speakers": len(speakers), "listed": len(rows),
              "missing_audio": len(missing), "missing_examples": missing[:EXAMPLES],
              "unlisted_files": len(unlisted), "unlisted_examples": unlisted[:EXAMPLES]}
    return Scan(corpus="voxceleb1", items=items, labels=speakers, report=report)
