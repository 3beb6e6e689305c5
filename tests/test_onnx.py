"""`maeast export onnx`: a tiny encoder and a classifier on it, run by onnxruntime on real audio (espeak-ng
speech, sox plucked strings) of other lengths than the export traced, against the same model in torch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from typer.testing import CliRunner

from maeast.artifacts import features_of, load_classifier, read_encoder
from maeast.audio import load_clip
from maeast.cli import app
from maeast.features import fbank
from tests.conftest import make_classifier, pluck, speak


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(encoder export, a classifier folder on it with a seeded random head, real clips as fbank [1, T, F])."""
    root = tmp_path_factory.mktemp("onnx")
    export, classifier = make_classifier(root)
    info = read_encoder(export)[1]
    clips = [speak("a quick brown fox jumps over the lazy dog", root / "fox.wav"),
             pluck(root / "chord.wav", ("A3", "C4", "E4"), seconds=1.3, rate=22050)]
    feats = [fbank(torch.from_numpy(load_clip(c, 16000).waveform), 16000, features_of(info))[None] for c in clips]
    return export, classifier, feats


def run(path, feats: torch.Tensor) -> list[np.ndarray]:
    return onnxruntime.InferenceSession(str(path)).run(None, {"fbank": feats.numpy()})


def test_encoder_matches_torch_on_any_length(models, tmp_path):
    export, _, feats = models
    result = CliRunner().invoke(app, ["export", "onnx", "--checkpoint", str(export), "--out", str(tmp_path / "e.onnx")])
    assert result.exit_code == 0, result.output
    encoder, info = read_encoder(export)
    for x in feats:  # lengths the export never saw
        tokens, clip = run(tmp_path / "e.onnx", x)
        with torch.no_grad():
            ref = encoder(x).x
        assert tokens.shape == tuple(ref.shape) and np.abs(tokens - ref.numpy()).max() < 1e-4
        assert np.abs(clip - ref.mean(dim=1).numpy()).max() < 1e-4
    meta = json.loads(onnx.load(str(tmp_path / "e.onnx")).metadata_props[0].value)
    assert meta["features"] == info["features"] and meta["outputs"] == ["tokens", "clip"]


@pytest.mark.parametrize("protocol", [None, "stats", "superb"])
def test_classifier_matches_torch_and_carries_its_labels(models, tmp_path, protocol):
    _, classifier, feats = models
    if protocol is not None:  # a frozen protocol's head: the stats head pools each layer to mean and std
        classifier = make_classifier(tmp_path, protocol=protocol)[1]
    result = CliRunner().invoke(app, ["export", "onnx", "--checkpoint", str(classifier), "--classifier",
                                      "--out", str(tmp_path / "c.onnx")])
    assert result.exit_code == 0, result.output
    model, _ = load_classifier(classifier)
    batch = torch.cat([feats[0][:, :120], feats[1][:, :120]])  # a batch of two clips, another batch size
    (logits,) = run(tmp_path / "c.onnx", batch)
    with torch.no_grad():
        assert np.abs(logits - model(batch).numpy()).max() < 1e-4
    meta = json.loads(onnx.load(str(tmp_path / "c.onnx")).metadata_props[0].value)
    assert meta["labels"] == ["dog", "piano", "rain"] and meta["multi_label"] is False


def test_bad_checkpoint_is_one_line(models, tmp_path):
    export, _, _ = models
    result = CliRunner().invoke(app, ["export", "onnx", "--checkpoint", str(tmp_path / "nope"), "--out", "x.onnx"])
    assert result.exit_code != 0 and "not found" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["export", "onnx", "--checkpoint", str(export), "--classifier", "--out", "x.onnx"])
    assert result.exit_code != 0 and "classifier.json" in result.output
