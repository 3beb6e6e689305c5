"""`librispeech`: {subset}/{speaker}/{chapter}/{speaker}-{chapter}-{n}.flac with *.trans.txt."""

from __future__ import annotations

from pathlib import Path

from maeast.errors import MaeastError
from maeast.shards.recipes.base import Item, Scan, recipe


def subset_split(subset: str) -> str:
    """train-clean-100 -> train, dev-other -> valid, test-clean -> test; anything else -> train."""
    head = subset.split("-")[0].lower()
    return {"dev": "valid", "test": "test"}.get(head, "train")


@recipe("librispeech")
def scan(root: Path, corpus: str = "librispeech") -> Scan:
    transcripts = sorted(root.rglob("*.trans.txt"))
    if not transcripts:
        raise MaeastError(f"no *.trans.txt under {root}: not a LibriSpeech tree "
                          "(expected {subset}/{speaker}/{chapter}/{speaker}-{chapter}.trans.txt)")
    items, missing = [], 0
    for trans in transcripts:
        chapter_dir = trans.parent
        speaker_dir = chapter_dir.parent
        subset = speaker_dir.parent.name if speaker_dir.parent != root.parent else root.name
        for number, line in enumerate(trans.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            utt, _, text = line.partition(" ")
            if utt.count("-") != 2:
                raise MaeastError(f"{trans}:{number}: expected '<speaker>-<chapter>-<n> TEXT', got {line!r}")
            audio = chapter_dir / f"{utt}.flac"
            if not audio.is_file():
                missing += 1
                continue
            items.append(Item(key=utt, path=audio, split=subset_split(subset), speaker=speaker_dir.name,
                              extra={"text": text.strip(), "subset": subset, "chapter": chapter_dir.name}))
    return Scan(corpus=corpus, items=items, report={"transcript_lines_without_audio": missing})
