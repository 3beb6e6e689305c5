"""Keyword spotting demo in the Speech Commands layout, spoken by espeak-ng voice settings.

    speech_commands/{word}/{speaker}_nohash_{n}.wav      16 kHz mono 16-bit, exactly 1 s
    speech_commands/validation_list.txt, testing_list.txt   "{word}/{file}" lines
    speech_commands/_background_noise_/*.wav             long synthesized noise recordings

A speaker is one voice setting (see voices.py) with an 8-hex-digit id. Ids are drawn so that the
official split rule (sha1 of the part before `_nohash_`, see `which_set`) puts each speaker in the
split we planned, so the lists and the hash agree and no speaker crosses splits. Each take jitters
pitch and speed, and gets a random level, onset, and (usually) background noise at a random SNR.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from maeast.demo.noise import KINDS, README, NoiseTask, noise_task
from maeast.demo.synth import espeak, trim
from maeast.demo.voices import Voice, draw_voice

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
SAMPLE_RATE = 16000
CLIP_SAMPLES = 16000
NOISE_DIR = "_background_noise_"
MAX_NUM_WAVS_PER_CLASS = 2 ** 27 - 1  # from the official dataset README's split function


@dataclass(frozen=True)
class KeywordSize:
    speakers: tuple[int, int, int]       # training, validation, testing speakers
    unknown_words: int                   # how many of UNKNOWN_WORDS get folders
    max_takes: int                       # takes per speaker and target word: 1..max_takes
    noise_seconds: float                 # length of each background-noise recording


SIZES = {"tiny": KeywordSize((24, 6, 6), 4, 1, 10.0),
         "small": KeywordSize((64, 12, 12), 6, 2, 30.0),
         "full": KeywordSize((240, 30, 30), 10, 3, 60.0)}


@dataclass(frozen=True)
class Take:
    rel: str                 # "{word}/{speaker}_nohash_{n}.wav"
    word: str
    pitch: int
    speed: int
    onset: float             # where the word starts, as a fraction of the free space in 1 s
    peak_db: float           # peak level of the spoken word (dBFS)
    noise: int               # index into the background recordings, -1 for none
    noise_at: float          # where in that recording the noise segment starts (fraction)
    snr_db: float            # speech-to-noise ratio (dB) over the spoken part


@dataclass(frozen=True)
class SpeakerTask:
    root: str
    speaker: str
    split: str
    voice: Voice
    takes: tuple[Take, ...]
    noise_paths: tuple[str, ...]


def which_set(filename: str, validation_percentage: float = 10.0,
              testing_percentage: float = 10.0) -> str:
    """The official Speech Commands split of a file, keyed on the part before `_nohash_`."""
    hash_name = re.sub(r"_nohash_.*$", "", Path(filename).name)
    hashed = int(hashlib.sha1(hash_name.encode()).hexdigest(), 16)
    percentage = (hashed % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)
    if percentage < validation_percentage:
        return "validation"
    if percentage < validation_percentage + testing_percentage:
        return "testing"
    return "training"


def _speaker_id(rng: random.Random, split: str, taken: set[str]) -> str:
    """8 hex digits that the official hash sends to `split` (rejection sampling)."""
    while True:
        sid = f"{rng.getrandbits(32):08x}"
        if sid not in taken and which_set(sid + "_nohash_0.wav") == split:
            taken.add(sid)
            return sid


def plan(root: Path, size: str, rng: random.Random) -> tuple[list[NoiseTask], list[SpeakerTask]]:
    """Everything random is drawn here, in order, from `rng`: the workers only render."""
    cfg = SIZES[size]
    noise_dir = root / NOISE_DIR
    noises = [noise_task(noise_dir / f"{k}.wav", k, cfg.noise_seconds, rng) for k in KINDS]
    unknown = sorted(rng.sample(UNKNOWN_WORDS, cfg.unknown_words))
    tasks, taken = [], set()
    splits = ["training"] * cfg.speakers[0] + ["validation"] * cfg.speakers[1] \
        + ["testing"] * cfg.speakers[2]
    for split in splits:
        sid, voice = _speaker_id(rng, split, taken), draw_voice(rng, speed=(110, 220))
        words = [w for w in WORDS for _ in range(rng.randint(1, cfg.max_takes))]
        words += [w for w in unknown if rng.random() < 0.6]
        takes, counts = [], {}
        for word in words:
            n = counts[word] = counts.get(word, -1) + 1
            pitch, speed = voice.take(rng)
            has_noise = rng.random() < 0.8
            takes.append(Take(f"{word}/{sid}_nohash_{n}.wav", word, pitch, speed,
                              onset=rng.random(), peak_db=rng.uniform(-30.0, -2.0),
                              noise=rng.randrange(len(KINDS)) if has_noise else -1,
                              noise_at=rng.random(), snr_db=rng.uniform(0.0, 30.0)))
        tasks.append(SpeakerTask(str(root), sid, split, voice, tuple(takes),
                                 tuple(n.path for n in noises)))
    return noises, tasks


@functools.lru_cache(maxsize=16)
def _noise(path: str) -> np.ndarray:
    return sf.read(path, dtype="float32")[0]


def render_take(take: Take, voice: Voice, noise_paths: tuple[str, ...]) -> np.ndarray:
    """One 1 s clip -> [16000] float32."""
    speed = take.speed
    for _ in range(4):  # a slow take of a long word may not fit in 1 s: say it faster
        word = trim(espeak(take.word, voice.voice, take.pitch, speed, SAMPLE_RATE,
                            voice.effects()))
        if len(word) <= CLIP_SAMPLES - 800:
            break
        speed = int(speed * 1.3)
    word = word[: CLIP_SAMPLES - 800]
    if len(word) == 0 or np.abs(word).max() < 1e-4:
        raise RuntimeError(f"espeak-ng produced silence for {take.word!r} with {voice}")
    word = word * (10 ** (take.peak_db / 20) / np.abs(word).max())
    clip = np.zeros(CLIP_SAMPLES, dtype=np.float32)
    start = int(take.onset * (CLIP_SAMPLES - len(word)))
    clip[start:start + len(word)] = word
    if take.noise >= 0:
        noise = _noise(noise_paths[take.noise])
        at = int(take.noise_at * (len(noise) - CLIP_SAMPLES))
        seg = noise[at:at + CLIP_SAMPLES]
        speech_rms = float(np.sqrt((word ** 2).mean()))
        noise_rms = max(float(np.sqrt((seg ** 2).mean())), 1e-9)
        clip += seg * (speech_rms / noise_rms * 10 ** (-take.snr_db / 20))
    return np.clip(clip, -1.0, 1.0)


def speak(task: SpeakerTask) -> list[tuple[str, float]]:
    """Render and write all takes of one speaker -> [(relative path, seconds)]."""
    out = []
    for take in task.takes:
        path = Path(task.root) / take.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, render_take(take, task.voice, task.noise_paths), SAMPLE_RATE,
                 subtype="PCM_16", format="WAV")
        out.append((take.rel, CLIP_SAMPLES / SAMPLE_RATE))
    return out


def write_lists(root: Path, tasks: list[SpeakerTask]) -> None:
    """validation_list.txt and testing_list.txt (sorted, as shipped) and the noise README."""
    for split, name in (("validation", "validation_list.txt"), ("testing", "testing_list.txt")):
        rels = sorted(t.rel for task in tasks if task.split == split for t in task.takes)
        (root / name).write_text("".join(r + "\n" for r in rels))
    (root / NOISE_DIR).mkdir(parents=True, exist_ok=True)
    (root / NOISE_DIR / "README.md").write_text(README)
