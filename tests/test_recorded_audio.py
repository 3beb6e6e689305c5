"""Synthesizer outputs recorded here replay where the synthesizers are missing (bare GPU machines): the
same bytes for the same call, inputs matched by content; a call never recorded fails in one line."""

from __future__ import annotations

import shutil

import pytest

import tests.conftest as conftest


def test_record_then_replay_without_the_tools(tmp_path, monkeypatch):
    made, replayed, store = tmp_path / "made", tmp_path / "replayed", tmp_path / "store"
    made.mkdir(), replayed.mkdir()
    monkeypatch.setattr(conftest, "RECORD_AUDIO", str(store))
    conftest.speak("a stitch in time saves nine", made / "raw.wav")
    conftest.sox(made / "raw.wav", "-r", "8000", made / "slow.wav")
    conftest.pluck(made / "chord.flac")
    assert len(list(store.iterdir())) == 3

    monkeypatch.setattr(conftest, "RECORD_AUDIO", None)
    monkeypatch.setattr(conftest, "RECORDED_AUDIO", str(store))
    monkeypatch.setattr(shutil, "which", lambda tool: None)  # no espeak-ng, no sox
    conftest.speak("a stitch in time saves nine", replayed / "raw.wav")
    conftest.sox(replayed / "raw.wav", "-r", "8000", replayed / "slow.wav")  # the input matches by content
    conftest.pluck(replayed / "chord.flac")
    for name in ("raw.wav", "slow.wav", "chord.flac"):
        assert (replayed / name).read_bytes() == (made / name).read_bytes()
    with pytest.raises(pytest.fail.Exception, match="espeak-ng is not installed"):
        conftest.speak("a sentence never recorded", replayed / "other.wav")
