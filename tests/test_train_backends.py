"""Training on the DALI and FFCV backends: pretraining on `dali` (CPU mode) resumes to the uninterrupted run's
curve, fine-tuning on `dali` and `ffcv` scores as on `stream` for the same clips, and what a backend cannot
do is refused in one line before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from maeast.errors import MaeastError
from maeast.pretrain import load_config, pretrain
from maeast.train.logging import read_log
from tests.conftest import make_demo_shards

pytest.importorskip("nvidia.dali", reason="the `dali` extra is not installed")

SHORT = ["schedule.steps=6", "schedule.warmup_steps=2", "data.batch_size=2", "optim.global_batch=4",
         "eval.every=0", "run.save_every_steps=3", "run.log_every=1", "run.trace_keys=true",
         "data.backend=dali", "data.bucket_batches=1", "data.num_workers=1"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_demo_shards(tmp_path_factory.getbasetemp() / "engine_demo")


def tiny(shards: Path, run_dir: Path, *extra: str):
    return load_config("pretrain_tiny", [*SHORT, f"data.shards=[{shards}]", f"run.dir={run_dir}", *extra])


def keys(run_dir: Path) -> list[str]:
    return (run_dir / "keys" / "rank0.tsv").read_text().splitlines()


def test_dali_pretraining_resumes_to_the_same_curve(shards, tmp_path):
    """Stopped at step 3 (mid-epoch: the tiny corpus gives 6 batches of 2 per epoch) and resumed through DALI's
    own checkpoint of its pipeline, the run continues the uninterrupted run's loss curve bitwise, clip for clip."""
    full = pretrain(tiny(shards, tmp_path / "full"))
    first = pretrain(tiny(shards, tmp_path / "run", "run.stop_at=3"))
    second = pretrain(tiny(shards, tmp_path / "run"), resume=True)
    assert first.step == 3 and second.step == 6 and len(full.losses) == 6
    assert first.losses + second.losses == full.losses
    assert keys(tmp_path / "run") == keys(tmp_path / "full")
    log = [r["loss"] for r in read_log(tmp_path / "run") if r["kind"] == "train"]
    assert log == full.losses


@pytest.mark.parametrize("override, message", [
    ("data.bucket_batches=2", "backend dali does not bucket clips by length"),
    ("data.backend=ffcv", "backend ffcv holds fixed-length precomputed fbanks for fine-tuning"),
    ("data.fbank_on=device", "fbank_on device serves pretraining on the stream backend"),
])
def test_what_a_backend_cannot_do_is_one_line_before_any_work(shards, tmp_path, override, message):
    with pytest.raises(MaeastError, match=message) as caught:
        tiny(shards, tmp_path, override)
    assert "\n" not in str(caught.value)
    assert not tmp_path.joinpath("config.yaml").exists()


def test_weights_and_urls_refused_for_dali(shards, tmp_path):
    with pytest.raises(MaeastError, match="mixing weights need backend stream"):
        tiny(shards, tmp_path, f"data.shards=[{shards},{shards}]", "data.weights=[1.0,2.0]")
    with pytest.raises(MaeastError, match="reads local files only"):
        tiny(shards, tmp_path, "data.shards=[s3://bucket/shards]")
