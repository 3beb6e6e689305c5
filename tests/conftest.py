"""Shared fixtures: real audio made by real synthesizers (espeak-ng speech, sox plucked strings)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

# Tiny trees of the official corpora (fixtures audioset, esc50, sc_v1, sc_v2, voxceleb1, iemocap).
pytest_plugins = ("tests.official_trees",)

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a stitch in time saves nine",
    "she sells sea shells by the sea shore",
    "pack my box with five dozen liquor jugs",
    "how vexingly quick daft zebras jump",
    "the five boxing wizards jump quickly",
]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: run `make test`, which installs the Debian packages")


def speak(text: str, path: Path, voice: str = "en", speed: int = 160, pitch: int = 50) -> Path:
    need("espeak-ng")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                   check=True, capture_output=True)
    return path


def sox(*args: str) -> None:
    need("sox")
    subprocess.run(["sox", *map(str, args)], check=True, capture_output=True)


def pluck(path: Path, notes=("C4", "E4", "G4"), seconds: float = 2.0, rate: int = 44100, channels: int = 1) -> Path:
    """A plucked-string chord from sox's Karplus-Strong synthesizer."""
    synth = []
    for note in notes:
        synth += ["pluck", note]
    sox("-n", "-r", rate, "-c", channels, path, "synth", seconds, *synth, "fade", "0", seconds, "0.3")
    return path


@pytest.fixture(scope="session")
def mixed_folder(tmp_path_factory) -> Path:
    """A folder corpus of mixed formats, rates and channel counts, with broken files among them."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "speech").mkdir()
    (root / "music").mkdir()
    voices = ["en", "en-us+f3", "en-gb+m3", "en+klatt", "en-us+f1", "en+m7"]
    for i, (text, voice) in enumerate(zip(SENTENCES, voices)):
        wav = speak(text, root / "speech" / f"s{i}.wav", voice=voice)
        if i % 3 == 1:
            sox(wav, "-r", "8000", root / "speech" / f"s{i}_8k.flac")
            wav.unlink()
        elif i % 3 == 2:
            sox(wav, "-r", "48000", "-c", "2", root / "speech" / f"s{i}_48k.ogg")
            wav.unlink()
    for i, notes in enumerate([("C4", "E4", "G4"), ("A3", "C4", "E4"), ("D3", "F#3", "A3"), ("G2",)]):
        pluck(root / "music" / f"m{i}.wav", notes, rate=[44100, 22050, 32000, 48000][i], channels=1 + i % 2)
    broken = root / "music" / "m0.wav"
    (root / "music" / "truncated.wav").write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    (root / "music" / "empty.flac").write_bytes(b"")
    (root / "music" / "notaudio.ogg").write_bytes(b"this is not an ogg file\n")
    sox("-n", "-r", "16000", root / "music" / "blip.wav", "synth", "0.02", "pluck", "C5")
    return root
