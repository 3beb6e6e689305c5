"""Hugging Face-style folders (maeast.inference.hub): save_pretrained / from_pretrained round trips of an
encoder and a classifier, maeast's own folders through the same call, and an unreachable hub id (offline:
no traffic leaves this machine)."""

from __future__ import annotations

import json

import pytest
import torch

from maeast.artifacts import features_of, load_classifier, read_encoder
from maeast.audio import load_clip
from maeast.errors import MaeastError
from maeast.features import fbank
from maeast.inference.hub import PretrainedClassifier, PretrainedEncoder
from tests.conftest import make_classifier, speak


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    export, classifier = make_classifier(root)
    wave = load_clip(speak("five boxing wizards jump quickly", root / "wizards.wav"), 16000).waveform
    return export, classifier, fbank(torch.from_numpy(wave), 16000, features_of(read_encoder(export)[1]))[None]


def test_encoder_round_trip(models, tmp_path):
    export, _, x = models
    encoder, info = read_encoder(export)
    ours = PretrainedEncoder.from_pretrained(export)  # a maeast folder (no config.json)
    ours.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (tmp_path / "hf" / "model.safetensors").is_file() and config["features"] == info["features"]
    again = PretrainedEncoder.from_pretrained(tmp_path / "hf")
    assert again.features == features_of(info) and not again.training
    with torch.no_grad():
        torch.testing.assert_close(again(x).x, encoder(x).x, rtol=0, atol=0)


def test_classifier_round_trip_keeps_its_labels(models, tmp_path):
    _, classifier, x = models
    model, _ = load_classifier(classifier)
    PretrainedClassifier.from_pretrained(classifier).save_pretrained(tmp_path / "hf")
    again = PretrainedClassifier.from_pretrained(tmp_path / "hf")
    assert again.labels == ["dog", "piano", "rain"] and again.multi_label is False
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_unreachable_hub_id_is_one_line(models):
    with pytest.raises(MaeastError, match="nobody/nothing: not a local model folder, and the hub could not give it"):
        PretrainedEncoder.from_pretrained("nobody/nothing", local_files_only=True)
