"""Shared fixtures and helpers: real audio made by real synthesizers (espeak-ng speech, sox plucked
strings), the folder corpus and shards of the loader tests, the tiny demo corpus's shards.

Test modules import helpers from here (or from the tests.official_trees plugin, or tests.official_mae_ast), never
from each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from maeast.artifacts import features_of, read_encoder, write_classifier, write_encoder
from maeast.audio import load_clip
from maeast.features import fbank, get_config
from maeast.model import Head, build_model
from maeast.model.heads import FROZEN_PROTOCOLS, head_record, make_head
from maeast.shards.build import build_shards
from maeast.shards.format import iter_tar, shard_paths

# Tiny trees of the official corpora (fixtures audioset, esc50, sc_v1, sc_v2, voxceleb1, iemocap);
# servers on 127.0.0.1 for object storage (fixtures s3, http_server, faulty).
pytest_plugins = ("tests.official_trees", "tests.servers")

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a stitch in time saves nine",
    "she sells sea shells by the sea shore",
    "pack my box with five dozen liquor jugs",
    "how vexingly quick daft zebras jump",
    "the five boxing wizards jump quickly",
]


# Bare GPU machines have no espeak-ng or sox. `make gpu-wheels` runs the gpu-marked tests here with
# MAEAST_RECORD_AUDIO=DIR: they run (not skipped) up to their first CUDA call, and every synthesizer call
# stores its output in DIR under a key of its arguments (input files by content). `make gpu-check` names
# that folder in MAEAST_TEST_AUDIO, where a missing synthesizer's call is answered from it: the same
# audio, made here by the real synthesizers.
RECORD_AUDIO = os.environ.get("MAEAST_RECORD_AUDIO")
RECORDED_AUDIO = os.environ.get("MAEAST_TEST_AUDIO")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() or RECORD_AUDIO:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: run `make test`, which installs the Debian packages")


def synthesize(tool: str, *args) -> None:
    """Run a synthesizer (espeak-ng, sox); Path arguments are files: existing ones its inputs, new ones its
    outputs. Records the outputs (MAEAST_RECORD_AUDIO), or replays them where the tool is missing
    (MAEAST_TEST_AUDIO)."""
    outputs = [a for a in args if isinstance(a, Path) and not a.exists()]
    key = hashlib.sha256(json.dumps([tool] + [
        (hashlib.sha256(a.read_bytes()).hexdigest() if a.exists() else "out" + a.suffix) if isinstance(a, Path)
        else str(a) for a in args]).encode()).hexdigest()[:24]
    recorded = [Path(RECORDED_AUDIO or ".") / f"{key}-{i}{out.suffix}" for i, out in enumerate(outputs)]
    if shutil.which(tool) is None and RECORDED_AUDIO and all(r.is_file() for r in recorded):
        for r, out in zip(recorded, outputs):
            shutil.copyfile(r, out)
        return
    need(tool)
    subprocess.run([tool, *map(str, args)], check=True, capture_output=True)
    if RECORD_AUDIO:
        Path(RECORD_AUDIO).mkdir(parents=True, exist_ok=True)
        for i, out in enumerate(outputs):
            shutil.copyfile(out, Path(RECORD_AUDIO) / f"{key}-{i}{out.suffix}")


def speak(text: str, path: Path, voice: str = "en", speed: int = 160, pitch: int = 50) -> Path:
    synthesize("espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", Path(path), text)
    return path


def sox(*args) -> None:
    synthesize("sox", *[Path(a) if isinstance(a, Path) else a for a in args])


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


CORPUS_NOTES = [("C4", "E4"), ("A3",), ("D3", "F#3"), ("G2", "B2"), ("E3",), ("F3", "A3")]
CORPUS_VOICES = ["en", "en-us+f3", "en-gb+m3", "en+klatt", "en-us+f1", "en+m7"]


def make_corpus(root: Path, speech: int = 6, music: int = 6, short: int = 0) -> Path:
    """A folder corpus of real synthesized audio: espeak-ng sentences (2-3.5 s), sox plucked chords
    (2.0-3.25 s), and `short` one-word clips (under a second) labelled speech. The loader tests' corpus."""
    (root / "speech").mkdir(parents=True, exist_ok=True)
    (root / "music").mkdir(exist_ok=True)
    for i in range(speech):
        speak(SENTENCES[i % len(SENTENCES)], root / "speech" / f"s{i}.wav", voice=CORPUS_VOICES[i % 6],
              speed=150 + 10 * i)
    for i in range(music):
        pluck(root / "music" / f"m{i}.wav", CORPUS_NOTES[i % 6], seconds=2.0 + 0.25 * i, rate=16000)
    for i in range(short):
        speak(["yes", "no", "stop", "go"][i % 4], root / "speech" / f"w{i}.wav", voice=CORPUS_VOICES[i % 6])
    return root


def build(corpus: Path, out: Path, shard_mb: float = 0.05) -> dict:
    """A folder corpus packed into small shards."""
    return build_shards("folder", corpus, out, shard_size_mb=shard_mb)


def corpus_keys(shards: Path, split: str = "train") -> list[str]:
    """Every sample key of a split, sorted."""
    return sorted(k for p in shard_paths(shards, split) for k, _ in iter_tar(p))


def step_keys(run_dir: Path) -> dict[int, list[str]]:
    """A run's RUN/keys/rank*.tsv traces (run.trace_keys) as {step: its clips' keys, sorted}, over every rank."""
    out: dict[int, list[str]] = {}
    for path in sorted((run_dir / "keys").glob("rank*.tsv")):
        for line in path.read_text().splitlines():
            step, _slot, key = line.split("\t")
            out.setdefault(int(step), []).append(key)
    return {step: sorted(keys) for step, keys in out.items()}


def make_demo_shards(root: Path) -> Path:
    """The tiny demo corpus's unlabelled part (espeak-ng speech, fluidsynth music) packed in small shards;
    built once per test session under `root`."""
    from maeast.demo.build import build_demo
    shards = root / "shards"
    if not (shards / "index.json").is_file():
        build_demo(root / "corpus", "tiny", corpora=("librispeech",), progress=False)
        build_shards("librispeech", root / "corpus" / "librispeech", shards, shard_size_mb=0.4, workers=2)
    return shards


CHUNK_SECONDS = 1.0  # the export says it was pretrained on 1 s clips: 2-3 s files are chunked


def make_export(folder, preset: str = "tiny", seed: int = 0, **overrides):
    """A tiny model exported as the engine exports it, with input statistics measured on real speech."""
    torch.manual_seed(seed)
    model = build_model(preset, **overrides)
    wave = torch.from_numpy(load_clip(speak("pack my box with five dozen liquor jugs", folder / "stats.wav"),
                                      16000).waveform)
    feats = fbank(wave, 16000, "mae_ast")
    model.encoder.input_norm.running_mean.fill_(float(feats.mean()))
    model.encoder.input_norm.running_var.fill_(float(feats.var()))
    fb = get_config("mae_ast")
    meta = {"model": model.cfg.to_dict(), "features": {"preset": fb.name, **dataclasses.asdict(fb)},
            "pretraining": {"step": 0, "samples": 0, "run_dir": None, "shards": [], "max_seconds": CHUNK_SECONDS}}
    out = folder / "export"
    out.mkdir()
    write_encoder(model.state_dict(), meta, out)
    return out


def make_classifier(folder, labels=("dog", "piano", "rain"), clip_seconds: float = 1.0, protocol: str | None = None):
    """(a tiny encoder export, a classifier folder on it with a seeded random head), as fine-tuning writes them:
    the last layer mean-pooled, LayerNorm, Linear; or a frozen protocol's head (its BatchNorm statistics drawn)."""
    export = make_export(folder)
    encoder, info = read_encoder(export)
    torch.manual_seed(1)
    if protocol is None:
        head = Head(1, encoder.cfg.dim, len(labels), "layer")
        record = {"layers": 1, "norm": "layer", "weighted": False}
    else:
        head = make_head(FROZEN_PROTOCOLS[protocol], encoder, len(labels))
        record = head_record(FROZEN_PROTOCOLS[protocol], encoder, protocol)
        for name, buffer in head.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.copy_(torch.rand_like(buffer) + 0.5)
    classifier = folder / ("classifier" if protocol is None else f"classifier-{protocol}")
    write_classifier(classifier, encoder.state_dict(), head.state_dict(), encoder.cfg, features_of(info),
                     info["pretraining"], {"task": "custom", "labels": list(labels), "multi_label": False,
                                           "clip_seconds": clip_seconds, "head": record})
    return export, classifier
