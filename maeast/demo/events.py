"""Sound-event demo in the ESC-50 layout: General MIDI notes and drum hits rendered by fluidsynth.

    esc50/audio/{fold}-{src_file}-{take}-{target}.wav    44.1 kHz mono 16-bit, 5 s
    esc50/meta/esc50.csv     filename, fold, target, category, esc10, src_file, take
    esc50/meta/sources.csv   src_file, fold, category, bank, program (which GM instrument)

A class is a General MIDI instrument family (piano, organ, guitar, ...; drum kits are "drums").
Each instrument (bank, program) lives in one fold only, so cross-validation over the 5 folds
tests instruments never heard in training. A source is one note pattern (single note, repeated
notes, arpeggio, chord, scale, melody; drum hits and grooves for kits) on one instrument; its
takes (A, B, ...) vary transposition, velocity, tempo and onset, as ESC-50 takes cut one
recording in several.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from maeast.demo.synth import DRUM_CHANNEL, HIGHEST_KEY, MidiEvent, note, program, render_clips

SAMPLE_RATE = 44100
CLIP_SECONDS = 5.0
FOLDS = 5
# (category, GM programs or drum kits (bank 128), usable key range); 8 instruments per class.
FAMILIES = (
    ("piano", range(0, 8), (36, 96)),
    ("chromatic_percussion", range(8, 16), (55, 96)),
    ("organ", range(16, 24), (36, 84)),
    ("guitar", range(24, 32), (40, 84)),
    ("bass", range(32, 40), (28, 55)),
    ("strings", range(40, 48), (40, 88)),
    ("brass", range(56, 64), (40, 82)),
    ("reed", range(64, 72), (48, 86)),
    ("pipe", range(72, 80), (60, 96)),
    ("synth_lead", range(80, 88), (48, 88)),
    ("synth_pad", range(88, 96), (40, 84)),
    ("drums", (0, 8, 16, 24, 25, 32, 40, 48), (35, 81)),
)
ESC10 = frozenset(("piano", "chromatic_percussion", "organ", "guitar", "bass", "strings",
                   "brass", "reed", "pipe", "drums"))  # the ten acoustic families
CSV_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
CLIPS_PER_CLASS = {"tiny": 10, "small": 20, "full": 40}
CHORDS = ((0, 4, 7), (0, 3, 7), (0, 4, 7, 11), (0, 3, 7, 10), (0, 4, 7, 10), (0, 5, 7), (0, 3, 6))
SCALES = ((0, 2, 4, 5, 7, 9, 11, 12), (0, 2, 3, 5, 7, 8, 10, 12), (0, 2, 4, 7, 9, 12, 14, 16))
DRUM_GROUPS = ((35, 36), (38, 40, 37, 39), (42, 44, 46), (41, 43, 45, 47, 48, 50),
               (49, 51, 52, 55, 57, 59), (54, 56, 69, 70, 75, 76, 77))


@dataclass(frozen=True)
class Clip:
    filename: str
    fold: int
    target: int
    category: str
    src_file: int
    take: str
    bank: int
    program: int
    notes: tuple[tuple[float, float, int, int], ...]   # (start s, length s, key, velocity)
    peak_db: float


@dataclass(frozen=True)
class RenderTask:
    audio_dir: str
    clips: tuple[Clip, ...]


def _pattern(rng: random.Random, low: int, high: int) -> list[tuple[float, float, int, int]]:
    """A melodic note pattern from t=0: (start, length, key, velocity)."""
    kind = rng.choice(("single", "repeat", "arpeggio", "chord", "scale", "melody"))
    root, vel = rng.randint(low, max(low, high - 12)), rng.randint(45, 120)
    step, length = rng.uniform(0.12, 0.5), rng.uniform(0.1, 0.6)
    if kind == "single":
        return [(0.0, rng.uniform(0.3, 3.5), root + rng.randint(0, 12), vel)]
    if kind == "repeat":
        return [(i * step, length, root, vel) for i in range(rng.randint(2, 6))]
    if kind == "chord":
        hold = rng.uniform(0.5, 3.0)
        return [(0.0, hold, root + k, vel) for k in rng.choice(CHORDS)]
    if kind == "arpeggio":
        keys = [root + k + 12 * o for o in range(2) for k in rng.choice(CHORDS)]
        keys = keys if rng.random() < 0.5 else keys[::-1]
        return [(i * step, length, k, vel) for i, k in enumerate(keys[: rng.randint(3, 8)])]
    if kind == "scale":
        keys = [root + k for k in rng.choice(SCALES)]
        return [(i * step, length, k, vel) for i, k in enumerate(keys[: rng.randint(4, 8)])]
    scale, i, out = rng.choice(SCALES), rng.randrange(8), []
    for n in range(rng.randint(4, 10)):
        i = min(7, max(0, i + rng.choice((-2, -1, 1, 1, 2))))
        out.append((n * step * rng.choice((1, 1, 2)) / 1.5, length, root + scale[i], vel))
    return sorted(out)


def _drums(rng: random.Random) -> list[tuple[float, float, int, int]]:
    """Drum hits from t=0: a single hit, a fill, or a short groove."""
    kind, vel = rng.choice(("hit", "fill", "groove")), rng.randint(50, 125)
    if kind == "hit":
        return [(0.0, 0.5, rng.choice(rng.choice(DRUM_GROUPS)), vel)]
    step = rng.uniform(0.08, 0.3)
    if kind == "fill":
        keys = rng.sample(DRUM_GROUPS[3], rng.randint(2, 4)) + [rng.choice(DRUM_GROUPS[4])]
        return [(i * step, 0.3, k, vel) for i, k in enumerate(keys)]
    kick, snare, hat = (rng.choice(DRUM_GROUPS[g]) for g in (0, 1, 2))
    out = []
    for i in range(rng.randint(4, 16)):
        out.append((i * step, 0.2, hat, vel - 20))
        if i % 4 in (0, 2) and (i % 4 == 0 or rng.random() < 0.4):
            out.append((i * step, 0.3, kick, vel))
        if i % 4 == 2:
            out.append((i * step, 0.3, snare, vel))
    return out


def _take(rng: random.Random, base, drums: bool, low: int, high: int):
    """One take of a source: transposed (not for drums), tempo-scaled, velocity-scaled, placed."""
    shift = 0 if drums else rng.randint(-5, 5)
    tempo, gain = rng.uniform(0.8, 1.25), rng.uniform(0.7, 1.15)
    notes = [(t * tempo, d * tempo, min(high, max(low, k + shift)), int(v * gain))
             for t, d, k, v in base]
    span = max(t + d for t, d, _, _ in notes)
    onset = rng.uniform(0.0, max(0.0, min(1.5, CLIP_SECONDS - 0.5 - span)))
    return tuple((round(onset + t, 3), round(d, 3), k, max(1, min(127, v)))
                 for t, d, k, v in notes if onset + t < CLIP_SECONDS - 0.2)


def plan(root: Path, size: str, rng: random.Random) -> list[Clip]:
    """All clips of the corpus; every random choice is drawn here, in order, from `rng`."""
    per_fold = CLIPS_PER_CLASS[size] // FOLDS
    src_ids = iter(rng.sample(range(10000, 300000), len(FAMILIES) * FOLDS * per_fold))
    clips = []
    for target, (category, instruments, (low, high)) in enumerate(FAMILIES):
        drums = category == "drums"
        order = list(instruments)
        rng.shuffle(order)
        for fold in range(1, FOLDS + 1):
            mine = [p for i, p in enumerate(order) if (i + target) % FOLDS == fold - 1]
            made = 0
            while made < per_fold:
                prog = mine[made % len(mine)]
                top = min(high, HIGHEST_KEY.get(prog, high)) if not drums else high
                base = _drums(rng) if drums else _pattern(rng, low, top)
                src = next(src_ids)
                for take in "ABC"[: min(per_fold - made, rng.choice((1, 1, 2, 3)))]:
                    notes = _take(rng, base, drums, low, top)
                    clips.append(Clip(f"{fold}-{src}-{take}-{target}.wav", fold, target,
                                      category, src, take, 128 if drums else 0, prog, notes,
                                      peak_db=round(rng.uniform(-20.0, -1.0), 2)))
                    made += 1
    return clips


def render(task: RenderTask) -> list[tuple[str, float]]:
    """Render a batch of clips in one fluidsynth run and write them -> [(filename, seconds)]."""
    midi = []
    for c in task.clips:
        ch = DRUM_CHANNEL if c.bank == 128 else 0
        events: list[MidiEvent] = program(ch, 0.0, c.program, c.bank)
        for t, d, k, v in c.notes:
            events += note(ch, t, d, k, v)
        midi.append((events, CLIP_SECONDS))
    out = []
    for c, x in zip(task.clips, render_clips(midi, SAMPLE_RATE, gap=2.0)):
        peak = float(np.abs(x).max())
        if peak < 1e-5:
            raise RuntimeError(f"fluidsynth rendered silence for bank {c.bank} program {c.program}")
        x = np.clip(x * (10 ** (c.peak_db / 20) / peak), -1.0, 1.0)
        sf.write(Path(task.audio_dir) / c.filename, x, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        out.append((c.filename, CLIP_SECONDS))
    return out


def write_meta(root: Path, clips: list[Clip]) -> None:
    """meta/esc50.csv (sorted by filename, as shipped) and meta/sources.csv."""
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    rows = sorted(clips, key=lambda c: c.filename)
    with open(meta / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for c in rows:
            w.writerow((c.filename, c.fold, c.target, c.category, c.category in ESC10,
                        c.src_file, c.take))
    with open(meta / "sources.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("src_file", "fold", "category", "bank", "program"))
        for src in sorted({(c.src_file, c.fold, c.category, c.bank, c.program) for c in rows}):
            w.writerow(src)
