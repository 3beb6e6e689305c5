"""Unlabelled audio for pretraining in the LibriSpeech layout: espeak-ng reading and MIDI music.

    librispeech/{subset}/{speaker}/{chapter}/{speaker}-{chapter}-{NNNN}.flac   16 kHz mono 16-bit
    librispeech/{subset}/{speaker}/{chapter}/{speaker}-{chapter}.trans.txt
    librispeech/SPEAKERS.TXT

Subsets are train-clean-100 and dev-clean, with disjoint speakers. A reading speaker is one voice
setting (voices.py) reading random sentences (sentences.py); a music "speaker" is a band (a set
of General MIDI instruments) playing short random pieces (key, tempo, chord progression, bass,
melody, drums), whose transcript line is MUSIC and the instrument families. Utterances last 2-16 s.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from maeast.demo.sentences import sentence
from maeast.demo.synth import (DRUM_CHANNEL, HIGHEST_KEY, espeak, note, program, render_clips,
                               resample, trim)
from maeast.demo.voices import Voice, draw_voice

SAMPLE_RATE = 16000
SUBSETS = ("train-clean-100", "dev-clean")
MIN_SECONDS, MAX_SECONDS = 2.0, 16.0
GM_FAMILIES = ("piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble",
               "brass", "reed", "pipe", "synth lead", "synth pad", "synth effects", "ethnic",
               "percussive", "sound effects")
PROGRESSIONS = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (1, 4, 0, 0), (0, 3, 0, 4), (5, 3, 0, 4))
MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)


@dataclass(frozen=True)
class UnlabelledSize:
    readers: tuple[int, int]     # reading speakers in train-clean-100, dev-clean
    bands: tuple[int, int]       # music "speakers" in train-clean-100, dev-clean
    chapters: int                # chapters per speaker
    utterances: int              # utterances per chapter


SIZES = {"tiny": UnlabelledSize((3, 1), (1, 1), 1, 3),
         "small": UnlabelledSize((8, 2), (2, 1), 2, 4),
         "full": UnlabelledSize((32, 6), (6, 2), 2, 6)}


@dataclass(frozen=True)
class Band:
    """A music "speaker": chord, bass and melody instruments, and maybe a drum kit."""
    chords: int
    bass: int
    melody: int
    kit: int                     # -1: no drums

    def families(self) -> list[str]:
        names = [GM_FAMILIES[p // 8] for p in (self.chords, self.bass, self.melody)]
        return names + (["drums"] if self.kit >= 0 else [])


@dataclass(frozen=True)
class ChapterTask:
    chapter_dir: str             # .../{subset}/{speaker}/{chapter}
    speaker: int
    chapter: int
    performer: Voice | Band
    seconds: tuple[float, ...]   # target length of each utterance
    seed: int                    # for the words or notes, drawn per utterance in order


def plan(root: Path, size: str, rng: random.Random) -> list[ChapterTask]:
    cfg = SIZES[size]
    n_speakers = sum(cfg.readers) + sum(cfg.bands)
    speaker_ids = rng.sample(range(10, 10000), n_speakers)
    chapter_ids = iter(rng.sample(range(10000, 400000), n_speakers * cfg.chapters))
    tasks = []
    for s, subset in enumerate(SUBSETS):
        performers = [draw_voice(rng, speed=(130, 200)) for _ in range(cfg.readers[s])]
        performers += [Band(rng.choice((0, 1, 2, 4, 5, 16, 19, 24, 25, 48, 88, 89)),
                            rng.randrange(32, 40),
                            rng.choice([p for p in range(96) if HIGHEST_KEY.get(p, 108) >= 90]),
                            rng.choice((-1, 0, 8, 16, 24, 25, 32, 40)))
                       for _ in range(cfg.bands[s])]
        for performer in performers:
            spk = speaker_ids.pop()
            for _ in range(cfg.chapters):
                ch = next(chapter_ids)
                secs = tuple(round(rng.uniform(2.5, 15.0), 2) for _ in range(cfg.utterances))
                tasks.append(ChapterTask(str(root / subset / str(spk) / str(ch)), spk, ch,
                                         performer, secs, rng.getrandbits(63)))
    return tasks


def _transcript(text: str) -> str:
    return " ".join("".join(c for c in w if c.isalpha() or c == "'") for w in text.upper().split())


def _read(voice: Voice, target: float, rng: random.Random) -> tuple[np.ndarray, str]:
    """Sentences close to `target` seconds, read aloud -> ([N] float32, transcript)."""
    words_per_second = voice.speed / 60
    sentences = [sentence(rng)]
    while sum(len(s.split()) for s in sentences) < target * words_per_second * 0.8:
        sentences.append(sentence(rng))
    while True:
        pitch, speed = voice.take(rng, pitch_jitter=3, speed_jitter=0.05)
        text = " ".join(sentences)
        x = trim(espeak(text, voice.voice, pitch, speed, SAMPLE_RATE, voice.effects()),
                  floor_db=-45, pad=3200)
        if len(x) > MAX_SECONDS * SAMPLE_RATE and len(sentences) > 1:
            sentences.pop()
        elif len(x) < MIN_SECONDS * SAMPLE_RATE:
            sentences.append(sentence(rng))
        else:
            return x[: int(MAX_SECONDS * SAMPLE_RATE)], _transcript(text)


def _compose(band: Band, target: float, rng: random.Random):
    """A short piece: chords, a bass line, a melody and maybe drums -> MIDI events."""
    beat = 60 / rng.uniform(70, 160)
    key, scale = rng.randint(48, 59), rng.choice((MAJOR, MINOR))
    prog, ev = rng.choice(PROGRESSIONS), []
    for ch, (num, bank) in enumerate(((band.chords, 0), (band.bass, 0), (band.melody, 0))):
        ev += program(ch, 0.0, num, bank)
    if band.kit >= 0:
        ev += program(DRUM_CHANNEL, 0.0, band.kit, 128)
    vel, arpeggio, step, degree = rng.randint(60, 110), rng.random() < 0.5, rng.choice((0.5, 1)), 0
    bar, t = 0, 0.0
    while t < target - 0.5:
        root = prog[bar % 4]
        chord = [key + scale[(root + k) % 7] + 12 * ((root + k) // 7) for k in (0, 2, 4)]
        if arpeggio:
            for i in range(4):
                ev += note(0, t + i * beat, beat, chord[i % 3], vel - 15)
        else:
            ev += [e for k in chord for e in note(0, t, 4 * beat, k, vel - 20)]
        for i in (0, 2):
            ev += note(1, t + i * beat, 1.8 * beat, chord[0] - 24, vel)
        for i in range(int(4 / step)):
            if rng.random() < 0.8:
                degree = min(9, max(-2, degree + rng.choice((-2, -1, 0, 1, 1, 2))))
                k = key + 12 + scale[degree % 7] + 12 * (degree // 7)
                ev += note(2, t + i * step * beat, step * beat * 0.9, k, vel)
        if band.kit >= 0:
            for i in range(8):
                ev += note(DRUM_CHANNEL, t + i * beat / 2, 0.1, 42, vel - 30)
            for i, k in ((0, 36), (2, 38), (4, 36), (6, 38)):
                ev += note(DRUM_CHANNEL, t + i * beat / 2, 0.2, k, vel)
        bar, t = bar + 1, t + 4 * beat
    return [e for e in ev if e.ms < target * 1000 - 300]


def perform(task: ChapterTask) -> list[tuple[str, float]]:
    """Write one chapter's utterances and transcript -> [(relative flac name, seconds)]."""
    rng, folder = random.Random(task.seed), Path(task.chapter_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{task.speaker}-{task.chapter}"
    if isinstance(task.performer, Voice):
        audio, texts = zip(*(_read(task.performer, s, rng) for s in task.seconds))
    else:
        pieces = [(_compose(task.performer, s, rng), s) for s in task.seconds]
        audio = [resample(x, 44100, SAMPLE_RATE) for x in render_clips(pieces, 44100, gap=2.0)]
        texts = ["MUSIC " + " ".join(task.performer.families()).upper()] * len(audio)
    out, lines = [], []
    for i, (x, text) in enumerate(zip(audio, texts)):
        x = x * (10 ** (rng.uniform(-12.0, -1.0) / 20) / max(float(np.abs(x).max()), 1e-9))
        sf.write(folder / f"{stem}-{i:04d}.flac", np.clip(x, -1, 1), SAMPLE_RATE,
                 subtype="PCM_16", format="FLAC")
        lines.append(f"{stem}-{i:04d} {text}\n")
        out.append((f"{stem}-{i:04d}.flac", len(x) / SAMPLE_RATE))
    (folder / f"{stem}.trans.txt").write_text("".join(lines))
    return out


def write_speakers(root: Path, tasks: list[ChapterTask], seconds: dict[int, float]) -> None:
    """SPEAKERS.TXT as LibriSpeech ships it: ID | SEX | SUBSET | MINUTES | NAME."""
    rows, seen = [";ID  |SEX| SUBSET           |MINUTES| NAME\n"], set()
    for t in sorted(tasks, key=lambda t: t.speaker):
        if t.speaker in seen:
            continue
        seen.add(t.speaker)
        p = t.performer
        sex = ("F" if "+f" in p.voice or "whisperf" in p.voice else "M") if isinstance(p, Voice) else "-"
        name = f"espeak-ng {p.voice}" if isinstance(p, Voice) else "fluidsynth " + "+".join(p.families())
        subset = Path(t.chapter_dir).parent.parent.name
        rows.append(f"{t.speaker:<5}| {sex} | {subset:<16} | {seconds[t.speaker] / 60:5.2f} | {name}\n")
    (root / "SPEAKERS.TXT").write_text("".join(rows))
