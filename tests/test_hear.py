"""maeast.inference.hear: the HEAR 2021 API on a tiny frame model and a tiny 16x16 patch model, with real audio
(espeak-ng speech): sizes, timestamps in ms at a hop of at most 50 ms, long sounds, and agreement with
maeast.load_encoder."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import maeast
import maeast.inference.hear as hear
from maeast.audio import load_clip
from tests.conftest import make_export, speak


@pytest.fixture(scope="module")
def sounds(tmp_path_factory):
    root = tmp_path_factory.mktemp("hear")
    a = load_clip(speak("the quick brown fox jumps over the lazy dog", root / "a.wav"), 16000).waveform
    b = load_clip(speak("pack my box with five dozen liquor jugs", root / "b.wav", voice="en-us+f3"), 16000).waveform
    n = min(len(a), len(b))
    return root, torch.stack([torch.from_numpy(a[:n]), torch.from_numpy(b[:n])])  # [2, n] as HEAR batches them


@pytest.mark.parametrize("tokens", ["frame", "patch"])
def test_hear_api(sounds, tokens):
    root, audio = sounds
    shape = {"patch_time": 2, "patch_freq": 128} if tokens == "frame" else {"patch_time": 16, "patch_freq": 16}
    (root / tokens).mkdir()
    export = make_export(root / tokens, **shape)
    model = hear.load_model(str(export))
    assert model.sample_rate == 16000 and model.scene_embedding_size == model.timestamp_embedding_size == 64
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (2, 64)
    torch.testing.assert_close(scene, maeast.load_encoder(export)(waveform=audio, sample_rate=16000).clip)
    emb, ms = hear.get_timestamp_embeddings(audio, model)
    seconds = audio.shape[1] / 16000
    assert emb.shape[:2] == ms.shape and ms.shape[0] == 2 and emb.shape[2] == 64
    hops = ms[0].diff()
    assert bool((hops > 0).all()) and float(hops.max()) <= 50.0
    assert float(ms[0, 0]) < 100 and float(ms[0, -1]) > 1000 * seconds - 200  # the whole sound is covered
    assert torch.isfinite(emb).all() and not torch.allclose(emb[0, 0], emb[0, -1])
    if tokens == "frame":  # one pass: a row is the mean of the encoder's tokens of 20 ms
        assert float(hops[0]) == 20.0


def test_long_sound(sounds):
    root, audio = sounds
    (root / "long").mkdir()
    export = make_export(root / "long", patch_time=2, patch_freq=128)
    model = hear.load_model(str(export))
    long = audio[:1].repeat(1, 12)  # over half a minute, encoded in 1 s chunks
    emb, ms = hear.get_timestamp_embeddings(long, model)
    rows = long.shape[1] / 16000 * 1000 / 20
    assert rows - 2 <= emb.shape[1] == ms.shape[1] <= rows and float(ms[0].diff().max()) == 20.0


MEMORY_SCRIPT = """
import resource, sys
import numpy as np, torch
import maeast.inference.hear as hear
from maeast.audio import load_clip
export, speech, minutes = sys.argv[1], sys.argv[2], float(sys.argv[3])
model = hear.load_model(export)
audio = torch.from_numpy(np.resize(load_clip(speech, 16000).waveform, int(minutes * 60 * 16000)))[None]
hear.get_timestamp_embeddings(audio[:, :32000], model)  # warm up: the model, its workspace, the allocator
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
emb, ms = hear.get_timestamp_embeddings(audio, model)
scene = hear.get_scene_embeddings(audio, model)
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(emb.shape[1], float(ms[0, -1]), grew / 1024)
"""


@pytest.mark.slow
def test_twenty_minutes_within_the_memory_bound(sounds):
    """A 20-minute sound (speech, repeated) through both HEAR calls: timestamps cover it at 20 ms and the peak
    memory grows by less than the bound the module docstring states for the inputs (12 MB a minute) plus
    the outputs, with 1 s windows (1200 of them) encoded 16 at a time."""
    root, _ = sounds
    (root / "twenty").mkdir()
    export = make_export(root / "twenty", patch_time=2, patch_freq=128)
    speech = speak("the quick brown fox jumps over the lazy dog", root / "twenty" / "fox.wav")
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(export), str(speech), "20"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows, last_ms, grew_mb = done.stdout.split()
    assert 59990 <= int(rows) <= 60000 and float(last_ms) > 20 * 60_000 - 100
    outputs_mb = int(rows) * 64 * 4 / 2**20  # [1, rows, D] float32
    assert float(grew_mb) < 20 * 12 + outputs_mb, f"peak memory grew by {float(grew_mb):.0f} MB"
