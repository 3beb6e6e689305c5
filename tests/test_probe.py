"""The online probe during pretraining and the fbank-statistics baseline (maeast.probing, maeast.pretrain.probe,
maeast.finetune.baseline), on the tiny preset and the tiny official trees."""

from __future__ import annotations

import pytest
import torch

from maeast.train.logging import read_log
from maeast.pretrain.plots import plot_run
from maeast.errors import MaeastError
from maeast.finetune.baseline import fbank_baseline
from maeast.probing import fbank_stats, knn, logistic_regression
from maeast.shards.build import build_shards
from tests.official_trees import clips, esc50, sc_v1  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def shards(esc50, sc_v1, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("probe")
    root_v1, test_v1 = sc_v1
    build_shards("esc50", esc50, out / "esc50")
    build_shards("speechcommands", root_v1, out / "sc1", options={"version": "1", "test_root": str(test_v1)})
    return out


def tiny_run(shards, run_dir, *extra: str):
    from maeast.pretrain import load_config
    return load_config("pretrain_tiny", ["--data.shards", f"[{shards / 'esc50'}]", "--data.min_seconds", "0.5",
                                         "--data.max_seconds", "1.0", "--eval.every", "0", "--run.dir", str(run_dir),
                                         "--schedule.steps", "4", "--schedule.warmup_steps", "1", "--run.save_every_steps", "4",
                                         "--eval.probe_shards", str(shards / "sc1"), *extra])


def test_fbank_stats_ignore_padding():
    x = torch.randn(2, 50, 8)
    pad = torch.zeros(2, 50, dtype=torch.bool)
    pad[1, 30:] = True
    stats = fbank_stats(x, pad)  # [2, 16]
    assert stats.shape == (2, 16)
    assert torch.allclose(stats[1, :8], x[1, :30].mean(0), atol=1e-5)
    assert torch.allclose(stats[1, 8:], x[1, :30].std(0, unbiased=False), atol=1e-5)
    assert torch.allclose(stats[0], fbank_stats(x[:1])[0], atol=1e-6)


def test_probes_separate_clusters_and_not_noise():
    g = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(3, 16, generator=g)
    y = torch.arange(90) % 3
    x = centres[y] + torch.randn(90, 16, generator=g)
    assert logistic_regression(x[:60], y[:60], x[60:], y[60:]) == 1.0
    assert knn(x[:60], y[:60], x[60:], y[60:]) == 1.0
    noise = torch.randn(90, 16, generator=g)
    assert logistic_regression(noise[:60], y[:60], noise[60:], y[60:]) < 0.8  # labels it cannot know


def test_pretraining_probes_logs_and_plots(shards, tmp_path):
    from maeast.pretrain import pretrain
    result = pretrain(tiny_run(shards, tmp_path / "run", "--eval.probe_every", "2"))
    probes = [r for r in read_log(result.run_dir) if r["kind"] == "probe"]
    assert [r["step"] for r in probes] == [2, 4]
    for r in probes:
        assert all(0.0 <= r[k] <= 1.0 for k in ("linear", "knn", "fbank_linear", "fbank_knn"))
        assert r["clips"] > 0 and r["seconds"] >= 0
    assert len({(r["fbank_linear"], r["fbank_knn"]) for r in probes}) == 1  # the baseline is scored once
    assert any(p.name.startswith("events") for p in (result.run_dir / "tensorboard").iterdir())
    png = plot_run(result.run_dir)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probe_errors_are_one_line(shards, tmp_path):
    from maeast.pretrain import load_config, pretrain
    with pytest.raises(MaeastError, match="eval.probe_shards is not"):
        load_config("pretrain_tiny", ["--eval.probe_every", "2"])
    with pytest.raises(MaeastError, match="has no split 'nope'"):
        pretrain(tiny_run(shards, tmp_path / "bad", "--eval.probe_every", "2", "--eval.probe_test_split", "nope"))
    assert not (tmp_path / "bad").exists()  # refused before the run folder is written


def test_fbank_baseline_on_every_fold(shards):
    result = fbank_baseline("esc50", str(shards / "esc50"))
    assert result["folds"] == [1, 2, 3, 4, 5] and len(result["values"]) == 5
    assert all(0.0 <= v <= 1.0 for v in result["values"]) and result["clips"] > 0
    again = fbank_baseline("speechcommands_v1", str(shards / "sc1"))
    assert again["folds"] == [None] and 0.0 <= again["mean"] <= 1.0
