"""IEMOCAP, 4-class emotion recognition, from IEMOCAP_full_release as distributed.

Labels come from Session{n}/dialog/EmoEvaluation/*.txt, whose utterance lines read
`[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]`; audio from
Session{n}/sentences/wav/{dialog}/{utterance}.wav. The usual four classes: neutral, happy (excited
merged in), angry, sad, in s3prl's order (neu, hap, ang, sad); other labels (frustration, surprise,
xxx = no agreement, ...) are left out and counted in the report. Every clip goes to split "train"
with fold = session number (1-5): leave-one-session-out cross-validation. Speaker = session and the
speaking actor's gender, taken from the utterance id's last part (`Ses01F_script01_1_M003` is Ses01M).

Options: sessions=1,2,3,4,5 (the sessions to read).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from maeast.errors import MaeastError
from maeast.shards.recipes.base import Item, Scan, make_key, recipe, require_dir

EMOTIONS = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
LABELS = ["neutral", "happy", "angry", "sad"]
NUMBER = r"(\d+(?:\.\d*)?)"
LINE = re.compile(rf"^\[{NUMBER} - {NUMBER}\]\s+(Ses\d\d[FM]_\S+_([FM])\d+)\s+(\w+)\s+\[([^\]]*)\]\s*$")
EXAMPLES = 5


def read_evaluation(path: Path) -> list[dict]:
    """One EmoEvaluation file -> its utterance lines (the evaluator lines are skipped)."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.startswith("["):
            continue
        m = LINE.match(line)
        if not m:
            raise MaeastError(f"{path}:{number}: expected a line like `[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000"
                              f"<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]`, got {line.strip()!r}")
        start, end, utt, gender, emotion, vad = m.groups()
        try:
            values = [float(v) for v in vad.split(",")]
        except ValueError:
            values = []
        if len(values) != 3:
            raise MaeastError(f"{path}:{number}: expected three valence/activation/dominance numbers in [{vad}]")
        rows.append({"utt": utt, "gender": gender, "emotion": emotion, "vad": values,
                     "time": [float(start), float(end)], "where": f"{path}:{number}"})
    return rows


def parse_sessions(sessions: str) -> list[int]:
    try:
        numbers = sorted({int(s) for s in str(sessions).split(",") if s.strip()})
    except ValueError:
        numbers = []
    if not numbers or not all(1 <= n <= 5 for n in numbers):
        raise MaeastError(f"iemocap option sessions={sessions!r}: give a comma list of 1-5, e.g. 1,2,3,4,5")
    return numbers


@recipe("iemocap")
def scan(root: Path, sessions: str = "1,2,3,4,5") -> Scan:
    items, left_out, missing, seen, per_session = [], Counter(), [], set(), {}
    for n in parse_sessions(sessions):
        session = require_dir(root / f"Session{n}", f"IEMOCAP Session{n} folder (IEMOCAP_full_release/Session{n})")
        evaluations = require_dir(session / "dialog" / "EmoEvaluation", f"IEMOCAP Session{n}/dialog/EmoEvaluation")
        files = sorted(p for p in evaluations.glob("*.txt") if not p.name.startswith("."))
        if not files:
            raise MaeastError(f"{evaluations} holds no *.txt evaluation files (check --root)")
        kept = 0
        for path in files:
            for row in read_evaluation(path):
                utt = row["utt"]
                if not utt.startswith(f"Ses{n:02d}"):
                    raise MaeastError(f"{row['where']}: utterance {utt} does not belong to Session{n}")
                if utt in seen:
                    raise MaeastError(f"{row['where']}: utterance {utt} is labelled twice")
                seen.add(utt)
                if row["emotion"] not in EMOTIONS:
                    left_out[row["emotion"]] += 1
                    continue
                dialog = utt.rsplit("_", 1)[0]
                wav = session / "sentences" / "wav" / dialog / f"{utt}.wav"
                if not wav.is_file():
                    missing.append(f"Session{n}/sentences/wav/{dialog}/{utt}.wav")
                    continue
                kept += 1
                items.append(Item(key=make_key(utt), path=wav, split="train", labels=(EMOTIONS[row["emotion"]],),
                                  fold=n, speaker=f"Ses{n:02d}{row['gender']}",
                                  extra={"emotion": row["emotion"], "vad": row["vad"], "dialog": dialog,
                                         "dialog_time": row["time"]}))
        per_session[str(n)] = kept
    report = {"classes": "neutral, happy (+excited), angry, sad", "folds": per_session,
              "left_out_labels": dict(sorted(left_out.items())), "left_out": sum(left_out.values()),
              "missing_audio": len(missing), "missing_examples": missing[:EXAMPLES],
              "cv": "fold = session (leave-one-session-out); every clip is in split train"}
    return Scan(corpus="iemocap", items=items, labels=list(LABELS), report=report)
