"""Real recordings in the unlabelled demo corpus: read from the Debian packages that ship them.

Each source's test skips cleanly when its package is not installed (`make demo` installs them).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import soundfile as sf

from maeast.demo import recordings
from maeast.demo.unlabelled import MAX_SECONDS, MIN_SECONDS

SR = 16000


@pytest.mark.parametrize("source", recordings.SOURCES, ids=lambda s: s.name)
def test_source_reads_real_audio(source, tmp_path):
    """A tiny plan of the source writes LibriSpeech utterances of real sound: 16 kHz mono FLAC,
    2-16 s, audible (RMS well above silence) and not constant."""
    if not recordings.installed((source,))[0]:
        pytest.skip(f"{source.package} is not installed (apt-get install {source.package})")
    tasks = recordings.plan(tmp_path, "tiny", random.Random(0), [source])
    assert len(tasks) == 1 and len(tasks[0].items) == recordings.SIZES["tiny"].items
    written = recordings.perform(tasks[0])
    assert written, f"{source.name}: no utterance from {tasks[0].items}"
    chapter = tmp_path / "train-clean-100" / str(source.speaker) / str(tasks[0].chapter)
    lines = (chapter / f"{source.speaker}-{tasks[0].chapter}.trans.txt").read_text().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == [name[:-5] for name, _ in written]
    for name, seconds in written:
        x, sr = sf.read(chapter / name, dtype="float32")
        assert sr == SR and x.ndim == 1
        assert MIN_SECONDS <= len(x) / SR <= MAX_SECONDS and len(x) / SR == pytest.approx(seconds)
        assert np.sqrt(np.mean(x ** 2)) > recordings.QUIET_RMS and np.std(x[: SR]) > 0
    total = sum(s for _, s in written)
    assert total <= recordings.SIZES["tiny"].items * recordings.SIZES["tiny"].item_seconds


def test_utterances_cut_long_and_join_short():
    rng = np.random.default_rng(0)
    pieces = [rng.standard_normal(int(s * SR)).astype(np.float32) for s in (0.5, 0.7, 1.2, 40.0, 3.0, 0.3)]
    out = recordings.utterances(pieces)
    lengths = [len(x) / SR for x in out]
    assert all(MIN_SECONDS <= n <= MAX_SECONDS for n in lengths)
    kept = sum(lengths) - 2 * recordings.GAP_SECONDS  # the first three are joined with 2 gaps
    assert kept == pytest.approx(0.5 + 0.7 + 1.2 + 40.0 + 3.0, abs=1e-3)  # only the last 0.3 s is dropped


def test_missing_package_is_named():
    absent = recordings.Source("nothing", "no-such-package", "none", "/nonexistent/*.ogg", None, 29999)
    found, missing = recordings.installed((absent,))
    assert found == [] and missing == [absent]
    assert recordings.plan(recordings.Path("/tmp/x"), "tiny", random.Random(0), found) == []
