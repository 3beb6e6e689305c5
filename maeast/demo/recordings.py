"""Real recordings for the unlabelled demo corpus, read from Debian packages of free games.

    sources = installed()                         # the SOURCES whose files are on this machine
    tasks = plan(root, size, rng, sources)        # chapters of the librispeech corpus, all choices drawn here
    perform(task) -> [(flac name, seconds)]       # in the pool, as maeast.demo.unlabelled.perform

| source      | Debian package       | what it holds                                                       |
| warzone2100 | warzone2100-data     | base.wz, a zip: spoken voice lines, tutorial narration, effects (ogg) |
| wesnoth     | wesnoth-1.16-music   | 41 orchestral tracks (ogg)                                          |
| openarena   | openarena-data       | .pk3 zips: announcer and player voices, weapons, footsteps, ambience  |

Each source is one "speaker" of train-clean-100 (dev-clean stays synthesized, so the held-out loss
means what it meant before). Its recordings are taken in a seeded order, at most SIZES[size].items of
them and SIZES[size].item_seconds of each; short ones (game voice lines, effects) are joined with short
gaps into utterances of MIN_SECONDS to MAX_SECONDS, long ones (music) cut into such pieces. A member is
copied out of its zip to a temporary file and decoded with maeast.audio's readers (16 kHz mono).
"""

from __future__ import annotations

import glob
import random
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from maeast.audio import AudioError, load_clip
from maeast.demo.unlabelled import MAX_SECONDS, MIN_SECONDS, SAMPLE_RATE

GAP_SECONDS = 0.25       # silence between joined short recordings
QUIET_RMS = 1e-3         # recordings quieter than this (-60 dBFS) are skipped: near-silence teaches nothing
PER_CHAPTER = 24         # recordings per chapter (one pool task)


@dataclass(frozen=True)
class Source:
    name: str
    package: str                 # the Debian package that ships it
    kind: str                    # what it sounds like (README, SPEAKERS.TXT)
    pattern: str                 # glob of the files, or of the zip archives holding them
    member: str | None           # regex of the audio members inside each zip; None: the files are audio
    speaker: int                 # its LibriSpeech speaker id (the synthesized ones are 10-9999)

    def items(self) -> list[tuple[str, str | None]]:
        """(file, member or None) of every recording, sorted."""
        files = sorted(glob.glob(self.pattern))
        if self.member is None:
            return [(f, None) for f in files]
        wanted = re.compile(self.member, re.IGNORECASE)
        out = []
        for archive in files:
            with zipfile.ZipFile(archive) as z:
                out += [(archive, n) for n in sorted(z.namelist()) if wanted.search(n)]
        return out


SOURCES = (
    Source("warzone2100", "warzone2100-data", "voice lines, tutorial narration and game effects",
           "/usr/share/games/warzone2100/base.wz", r"\.ogg$", 20001),
    Source("wesnoth", "wesnoth-1.16-music", "orchestral music",
           "/usr/share/games/wesnoth/1.16/data/core/music/*.ogg", None, 20002),
    Source("openarena", "openarena-data", "announcer and player voices, weapons, footsteps, ambience",
           "/usr/share/games/openarena/baseoa/*.pk3", r"^sound/.*\.(wav|ogg)$", 20003),
)


@dataclass(frozen=True)
class RecordingSize:
    items: int | None            # recordings per source; None: all
    item_seconds: float          # seconds kept of each recording (from its start)


SIZES = {"tiny": RecordingSize(6, 16.0), "small": RecordingSize(40, 32.0), "full": RecordingSize(None, 64.0)}


@dataclass(frozen=True)
class RecordingTask:
    chapter_dir: str             # .../train-clean-100/{speaker}/{chapter}
    speaker: int
    chapter: int
    source: str
    items: tuple[tuple[str, str | None], ...]
    item_seconds: float
    seed: int                    # for the gains


def installed(sources: tuple[Source, ...] = SOURCES) -> tuple[list[Source], list[Source]]:
    """(sources whose files are here, sources whose package is not installed)."""
    here = [s for s in sources if glob.glob(s.pattern)]
    return here, [s for s in sources if s not in here]


def plan(root: Path, size: str, rng: random.Random, sources: list[Source]) -> list[RecordingTask]:
    """Chapters of recordings in train-clean-100, drawn in a fixed order from `rng`."""
    cfg = SIZES[size]
    tasks = []
    for source in sources:
        items = source.items()
        rng.shuffle(items)
        items = items[: cfg.items] if cfg.items is not None else items
        for start in range(0, len(items), PER_CHAPTER):
            chapter = 400000 + rng.randrange(100000)
            tasks.append(RecordingTask(str(root / "train-clean-100" / str(source.speaker) / str(chapter)),
                                       source.speaker, chapter, source.name,
                                       tuple(items[start:start + PER_CHAPTER]), cfg.item_seconds,
                                       rng.getrandbits(63)))
    return tasks


def read(item: tuple[str, str | None], seconds: float) -> np.ndarray | None:
    """The first `seconds` of one recording as [N] float32 at 16 kHz; None if undecodable or near-silent."""
    path, member = item
    try:
        if member is None:
            clip = load_clip(Path(path), SAMPLE_RATE, end=seconds)
        else:
            with zipfile.ZipFile(path) as z, tempfile.NamedTemporaryFile(suffix=Path(member).suffix) as tmp:
                tmp.write(z.read(member))
                tmp.flush()
                clip = load_clip(Path(tmp.name), SAMPLE_RATE, end=seconds)
    except AudioError:
        return None
    x = clip.waveform
    return x if float(np.sqrt(np.mean(np.square(x)))) >= QUIET_RMS else None


def utterances(pieces: list[np.ndarray]) -> list[np.ndarray]:
    """Recordings -> utterances of MIN_SECONDS to MAX_SECONDS: long ones cut, short ones joined with gaps."""
    most, least = int(MAX_SECONDS * SAMPLE_RATE), int(MIN_SECONDS * SAMPLE_RATE)
    gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), np.float32)
    out, pending = [], []
    for x in pieces:
        for start in range(0, len(x), most):
            part = x[start:start + most]
            if len(part) >= least:
                out.append(part)
                continue
            pending += [gap, part] if pending else [part]
            if sum(map(len, pending)) >= least:
                out.append(np.concatenate(pending))
                pending = []
    return out  # a last short remainder is dropped


def perform(task: RecordingTask) -> list[tuple[str, float]]:
    """Write one chapter's utterances and transcript -> [(relative flac name, seconds)]."""
    rng, folder = random.Random(task.seed), Path(task.chapter_dir)
    folder.mkdir(parents=True, exist_ok=True)
    pieces = [x for x in (read(item, task.item_seconds) for item in task.items) if x is not None]
    stem, text = f"{task.speaker}-{task.chapter}", "RECORDING " + re.sub("[^A-Z]", "", task.source.upper())
    out, lines = [], []
    for i, x in enumerate(utterances(pieces)):
        x = x * (10 ** (rng.uniform(-12.0, -1.0) / 20) / max(float(np.abs(x).max()), 1e-9))
        sf.write(folder / f"{stem}-{i:04d}.flac", np.clip(x, -1, 1), SAMPLE_RATE, subtype="PCM_16", format="FLAC")
        lines.append(f"{stem}-{i:04d} {text}\n")
        out.append((f"{stem}-{i:04d}.flac", len(x) / SAMPLE_RATE))
    (folder / f"{stem}.trans.txt").write_text("".join(lines))
    return out


def speaker_rows(tasks: list[RecordingTask], seconds: dict[int, float]) -> list[str]:
    """SPEAKERS.TXT lines of the recording "speakers" (ID | SEX | SUBSET | MINUTES | NAME)."""
    names = {s.speaker: f"{s.name} ({s.package}): {s.kind}" for s in SOURCES}
    return [f"{spk:<5}| - | {'train-clean-100':<16} | {seconds.get(spk, 0.0) / 60:5.2f} | {names[spk]}\n"
            for spk in sorted({t.speaker for t in tasks})]
