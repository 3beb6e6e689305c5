"""Speech Commands v0.01 / v0.02, as the TensorFlow tarballs unpack: {word}/{speaker}_nohash_{n}.wav.

v2 (SSAST's KS2): the 35 words, in alphabetical order; splits from validation_list.txt and
testing_list.txt, everything else train. `_background_noise_` is never a class.

v1 (SUPERB's KS, as s3prl runs it): 12 classes, the 10 commands + `_unknown_` (every other word) +
`_silence_`. train/valid come from TensorFlow's `which_set` speaker hash (10 % valid, 10 % test),
which is what s3prl computes. s3prl lists each `_background_noise_` wav once in train and once in
valid as `_silence_` and takes a random 1 s crop each time it is drawn; shards are static, so every
whole 1 s window (a new one each `silence_hop` seconds) of each noise file is listed instead, in
train and in valid alike, as s3prl does. The test split is the separate
speech_commands_test_set_v0.01 tree when `test_root=DIR` is given (it holds its own `_silence_` and
`_unknown_` folders; the hashed test part of the main tree is then left out, as in s3prl), else the
hashed test part of the main tree, mapped to the 12 classes.

Speaker = the file name before `_nohash_`. Options: version=auto|1|2 (auto: v2 when any of the
v2-only words backward, forward, follow, learn, visual has a folder), test_root=DIR, silence_hop=1.0.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import soundfile as sf

from maeast.errors import MaeastError
from maeast.shards.recipes.base import Item, Scan, make_key, recipe, require_dir, require_file

V2_ONLY = ("backward", "follow", "forward", "learn", "visual")
V1_WORDS = ("bed", "bird", "cat", "dog", "down", "eight", "five", "four", "go", "happy", "house", "left",
            "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six", "stop", "three",
            "tree", "two", "up", "wow", "yes", "zero")
V2_WORDS = tuple(sorted(V1_WORDS + V2_ONLY))
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN, SILENCE, NOISE = "_unknown_", "_silence_", "_background_noise_"
V1_CLASSES = (*COMMANDS, UNKNOWN, SILENCE)  # s3prl's order
MAX_NUM_WAVS_PER_CLASS = 2**27 - 1  # TensorFlow's which_set constant
LIST_LINE = re.compile(r"^[^/\s]+/[^/\s]+\.wav$")


def speaker_of(stem: str) -> str | None:
    """`0a7c2a8d_nohash_0` -> `0a7c2a8d` (test-set names may carry a prefix: the last `_` part)."""
    if "_nohash_" not in stem:
        return None
    return stem.split("_nohash_")[0].rsplit("_", 1)[-1]


def which_set(filename: str, valid_percent: float = 10.0, test_percent: float = 10.0) -> str:
    """TensorFlow's (and s3prl's) split of a file by the hash of its speaker part: train/valid/test."""
    hashed = hashlib.sha1(re.sub(r"_nohash_.*$", "", filename).encode("utf-8")).hexdigest()
    percent = (int(hashed, 16) % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)
    if percent < valid_percent:
        return "valid"
    return "test" if percent < valid_percent + test_percent else "train"


def read_list(path: Path) -> set[str]:
    """validation_list.txt / testing_list.txt -> {"word/file.wav"}."""
    entries = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if not LIST_LINE.match(line):
            raise MaeastError(f"{path}:{number}: expected a line like right/a69b9b3e_nohash_0.wav, got {line!r}")
        entries.add(line)
    return entries


def word_folders(root: Path) -> dict[str, list[Path]]:
    """Every non-hidden sub-folder (but the noise one) -> its wav files, sorted."""
    return {d.name: sorted(p for p in d.glob("*.wav") if not p.name.startswith("."))
            for d in sorted(root.iterdir()) if d.is_dir() and d.name != NOISE and not d.name.startswith(".")}


def detect_version(root: Path, version: str) -> int:
    if version not in ("auto", "1", "2"):
        raise MaeastError(f"speechcommands option version={version!r}: use auto, 1 or 2")
    if version != "auto":
        return int(version)
    present = set(word_folders(root))
    if not present & set(V2_WORDS):
        raise MaeastError(f"no Speech Commands word folders (yes/, no/, ...) under {root}; check --root")
    return 2 if present & set(V2_ONLY) else 1


@recipe("speechcommands")
def scan(root: Path, version: str = "auto", test_root: str = "", silence_hop: str = "1.0") -> Scan:
    ver = detect_version(root, str(version))
    if ver == 2:
        if test_root:
            raise MaeastError("speechcommands option test_root is for v1 (SUPERB); v2 tests on testing_list.txt")
        return _scan_v2(root)
    try:
        hop = float(silence_hop)
    except ValueError:
        hop = 0.0
    if not hop > 0:
        raise MaeastError(f"speechcommands option silence_hop={silence_hop!r}: give seconds > 0, e.g. 1.0")
    return _scan_v1(root, _test_dir(root, test_root), hop)


def _scan_v2(root: Path) -> Scan:
    valid = read_list(require_file(root / "validation_list.txt", "Speech Commands validation_list.txt"))
    test = read_list(require_file(root / "testing_list.txt", "Speech Commands testing_list.txt"))
    folders = word_folders(root)
    items, present = [], set()
    for word in V2_WORDS:
        for path in folders.get(word, []):
            rel = f"{word}/{path.name}"
            present.add(rel)
            split = "valid" if rel in valid else "test" if rel in test else "train"
            items.append(Item(key=make_key(word, path.stem), path=path, split=split, labels=(word,),
                              speaker=speaker_of(path.stem)))
    report = {"version": 2, "task": "35 words (SSAST KS2)", "split_rule": "validation_list.txt, testing_list.txt",
              "listed_missing": {"valid": len(valid - present), "test": len(test - present)},
              "missing_words": [w for w in V2_WORDS if w not in folders],
              "left_out_folders": sorted(f for f in folders if f not in V2_WORDS)}
    return Scan(corpus="speechcommands_v2", items=items, labels=list(V2_WORDS), report=report)


def _test_dir(root: Path, test_root: str) -> Path | None:
    if not test_root:
        return None
    path = Path(test_root).expanduser()
    if not path.is_absolute() and not path.is_dir():
        path = root / test_root
    return require_dir(path, "Speech Commands test set (speech_commands_test_set_v0.01) test_root")


def _scan_v1(root: Path, test_dir: Path | None, hop: float) -> Scan:
    items, left_out = [], {"hashed_test": 0, "folders": []}
    for word, paths in word_folders(root).items():
        if word.startswith("_"):  # e.g. a _silence_ folder someone made: not part of the distribution
            left_out["folders"].append(word)
            continue
        label = word if word in COMMANDS else UNKNOWN
        for path in paths:
            split = which_set(path.name)
            if split == "test" and test_dir is not None:
                left_out["hashed_test"] += 1
                continue
            items.append(Item(key=make_key(word, path.stem), path=path, split=split, labels=(label,),
                              speaker=speaker_of(path.stem), extra={"word": word}))
    silence, unreadable = _silence_windows(require_dir(root / NOISE, f"Speech Commands {NOISE} folder"), hop)
    items += silence
    if test_dir is not None:
        items += _test_items(test_dir)
    report = {"version": 1, "task": "12 classes (SUPERB KS): 10 commands, _unknown_, _silence_",
              "split_rule": "TensorFlow which_set speaker hash, 10% valid / 10% test (as s3prl)",
              "test_source": str(test_dir) if test_dir else "hashed test part of the main tree",
              "silence_windows_per_split": len(silence) // 2, "silence_hop": hop,
              "unreadable_noise_files": unreadable, "left_out": left_out,
              "list_disagreements": _list_disagreements(root)}
    return Scan(corpus="speechcommands_v1", items=items, labels=list(V1_CLASSES), report=report)


def _silence_windows(noise_dir: Path, hop: float) -> tuple[list[Item], list[str]]:
    """Every whole 1 s window of each noise wav, listed in train and in valid (as s3prl does)."""
    windows, unreadable = [], []
    for path in sorted(noise_dir.glob("*.wav")):
        try:
            seconds = sf.info(str(path)).duration
        except Exception:  # an unreadable noise file gives no windows; the report names it
            unreadable.append(path.name)
            continue
        count = int((seconds - 1.0) / hop + 1e-9) + 1 if seconds >= 1.0 else 0
        windows += [(path, round(i * hop, 6)) for i in range(count)]
    items = [Item(key=make_key("silence", split, path.stem, f"{n:04d}"), path=path, split=split,
                  labels=(SILENCE,), start=start, end=round(start + 1.0, 6), extra={"noise_file": path.name})
             for split in ("train", "valid") for n, (path, start) in enumerate(windows)]
    return items, unreadable


def _test_items(test_dir: Path) -> list[Item]:
    items = []
    for folder, paths in word_folders(test_dir).items():
        if folder not in V1_CLASSES:
            raise MaeastError(f"{test_dir / folder}: not one of the 12 test classes ({', '.join(V1_CLASSES)}); "
                              "test_root must be the speech_commands_test_set_v0.01 folder")
        items += [Item(key=make_key("test", folder, p.stem), path=p, split="test", labels=(folder,),
                       speaker=speaker_of(p.stem), extra={"word": folder}) for p in paths]
    return items


def _list_disagreements(root: Path) -> dict | None:
    """How many files the shipped lists put elsewhere than the hash does (None: no lists)."""
    lists = {"valid": root / "validation_list.txt", "test": root / "testing_list.txt"}
    if not all(p.is_file() for p in lists.values()):
        return None
    return {split: sum(which_set(Path(entry).name) != split for entry in read_list(path))
            for split, path in lists.items()}
