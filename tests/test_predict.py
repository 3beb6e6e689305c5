"""`maeast predict`: a classifier's scores for real audio of any length (espeak-ng speech, sox plucked
strings) by sliding windows, checked against the classifier run on each window by hand."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from maeast.artifacts import features_of, load_classifier
from maeast.audio import load_clip
from maeast.cli import app
from maeast.errors import MaeastError
from maeast.features import fbank
from maeast.inference.predict import predict_files, window_starts
from tests.conftest import make_classifier, pluck, speak


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    _, classifier = make_classifier(root, clip_seconds=1.0)
    audio = root / "audio"
    audio.mkdir()
    speak("the quick brown fox jumps over the lazy dog", audio / "fox.wav")
    pluck(audio / "chord.flac", ("C4", "E4", "G4"), seconds=0.6, rate=44100, channels=2)
    (audio / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    return classifier, audio


def test_window_starts_cover_the_clip():
    assert window_starts(50, 100, 50) == [0]
    assert window_starts(100, 100, 50) == [0]
    assert window_starts(330, 100, 50) == [0, 50, 100, 150, 200, 230]  # the last window ends at the end
    assert window_starts(300, 100, 100) == [0, 100, 200]


def test_scores_are_the_mean_of_the_windows(setup):
    classifier, audio = setup
    result = predict_files(classifier, audio, hop_seconds=0.25)
    assert [f.key for f in result.files] == ["chord.flac", "fox.wav"]
    assert [k for k, _ in result.skipped] == ["broken.wav"]
    model, info = load_classifier(classifier)
    fox = result.files[1]
    x = fbank(torch.from_numpy(load_clip(audio / "fox.wav", 16000).waveform), 16000, features_of(info))
    starts = window_starts(len(x), 100, 25)
    assert len(fox.windows) == len(starts) > 4 and fox.windows[-1][1] == pytest.approx(len(x) / 100)
    with torch.no_grad():
        by_hand = model(torch.stack([x[s:s + 100] for s in starts])).softmax(dim=-1)
    assert torch.allclose(torch.stack([w[2] for w in fox.windows]), by_hand, atol=1e-5)
    assert torch.allclose(fox.scores, by_hand.mean(dim=0), atol=1e-5)
    chord = result.files[0]  # shorter than a window: one window of its own length
    assert len(chord.windows) == 1 and chord.windows[0][1] < 1.0
    assert float(chord.scores.sum()) == pytest.approx(1.0, abs=1e-5)


def test_cli_table_and_json(setup, tmp_path):
    classifier, audio = setup
    result = CliRunner().invoke(app, ["predict", str(audio), "--checkpoint", str(classifier), "--top", "2",
                                      "--json", str(tmp_path / "p.json"), "--windows"])
    assert result.exit_code == 0, result.output
    assert "fox.wav" in result.output and "skipped" in result.output and "broken.wav" in result.output
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["labels"] == ["dog", "piano", "rain"] and data["window_seconds"] == 1.0
    fox = next(f for f in data["files"] if f["key"] == "fox.wav")
    assert len(fox["top"]) == 2 and fox["top"][0][1] >= fox["top"][1][1] and len(fox["windows"]) > 4


def test_bad_input_is_one_line(setup, tmp_path):
    classifier, audio = setup
    with pytest.raises(MaeastError, match="broken.wav: cannot read it as audio"):
        predict_files(classifier, audio / "broken.wav")
    result = CliRunner().invoke(app, ["predict", str(audio), "--checkpoint", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "not found" in result.output and "Traceback" not in result.output


@pytest.mark.gpu
def test_cuda_matches_cpu(setup):
    classifier, audio = setup
    cpu = predict_files(classifier, audio / "fox.wav", hop_seconds=0.25)
    gpu = predict_files(classifier, audio / "fox.wav", hop_seconds=0.25, device="cuda")  # bf16 autocast
    assert gpu.files[0].scores.device.type == "cpu" and len(gpu.files[0].windows) == len(cpu.files[0].windows)
    assert torch.allclose(gpu.files[0].scores, cpu.files[0].scores, atol=0.02)
