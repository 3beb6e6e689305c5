"""The tiny preset learns on the demo corpus: after its 600 steps the held-out masked MSE is below that of
predicting zeros, and the held-out InfoNCE is below ln(masked tokens per clip), the loss of a model that
cannot tell the masked patches of a clip apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from maeast.pretrain import load_config, pretrain
from tests.conftest import make_demo_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_demo_shards(tmp_path_factory.getbasetemp() / "engine_demo")


@pytest.mark.slow
def test_tiny_preset_beats_both_baselines_on_held_out_clips(shards, tmp_path):
    cfg = load_config("pretrain_tiny", [f"--data.shards=[{shards}]", f"--run.dir={tmp_path}"])
    result = pretrain(cfg)
    held_out = result.eval
    assert result.step == 600 and held_out["step"] == 600 and held_out["clips"] >= 6
    assert held_out["mse"] < 0.9 * held_out["mse_zero"], held_out
    assert held_out["infonce"] < held_out["infonce_chance"] - 0.1, held_out
    assert sum(result.losses[-50:]) / 50 < 0.6 * sum(result.losses[:10]) / 10
