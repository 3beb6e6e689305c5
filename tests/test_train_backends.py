"""Training on the DALI and FFCV backends: pretraining on `dali` (CPU mode) resumes to the uninterrupted run's
curve, fine-tuning on `dali` and `ffcv` scores as on `stream` for the same clips, and what a backend cannot
do is refused in one line before any work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from maeast.errors import MaeastError
from maeast.pretrain import load_config, pretrain
from maeast.train.checkpoint import load_train_state
from maeast.train.logging import read_log
from tests.conftest import build, make_corpus, make_demo_shards, step_keys

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
    saved = load_train_state(first.checkpoint, 0)["loader"]
    assert saved["backend"] == "dali" and saved["ranks"]["0"]["positions"] == [6] and saved["ranks"]["0"]["dali"]
    assert first.losses + second.losses == full.losses
    assert keys(tmp_path / "run") == keys(tmp_path / "full")
    log = [r["loss"] for r in read_log(tmp_path / "run") if r["kind"] == "train"]
    assert log == full.losses


@pytest.mark.parametrize("override, message", [
    ("data.bucket_batches=2", "backend dali does not bucket clips by length"),
    ("data.backend=ffcv", "backend ffcv holds fixed-length precomputed fbanks for fine-tuning"),
    ("data.fbank_on=device", "fbank_on device serves the stream backend"),
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


FINETUNE = ["--data.clip_seconds", "4", "--data.valid_fraction", "0", "--data.test_fraction", "0.25", "--run.trace_keys", "true",
            "--schedule.epochs", "2", "--data.shuffle_buffer", "0", "--optim.global_batch", "16",
            "--run.save_every_epochs", "5"]
"""Clips of 2-3.75 s padded to 4 s (no crop draws) and every training clip in the one batch of an epoch, so
every backend feeds the model the same clips whatever order it reads them in; augmentation is off."""


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ft_backends")
    build(make_corpus(root / "corpus", speech=6, music=6), root / "shards")
    return root / "shards"


def finetuned(shards: Path, run_dir: Path, *extra: str, frozen: bool = False):
    from maeast.finetune import finetune, load_finetune_config
    cfg = load_finetune_config("finetune_tiny", task="custom", shards=str(shards), run_dir=str(run_dir),
                               overrides=[*FINETUNE, *extra], freeze_encoder=True if frozen else None)
    return finetune(cfg)


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_log(run_dir / "main") if r["kind"] == "train"]


@pytest.mark.parametrize("backend", ["dali", "ffcv"])
@pytest.mark.parametrize("frozen", [False, True], ids=["full", "frozen"])
def test_finetuning_on_a_backend_scores_as_on_stream(labelled, tmp_path, backend, frozen):
    if backend == "ffcv":
        pytest.importorskip("ffcv", reason="the `ffcv` extra is not installed")
    stream = finetuned(labelled, tmp_path / "stream", frozen=frozen)
    other = finetuned(labelled, tmp_path / backend, "--data.backend", backend, frozen=frozen)
    assert losses(tmp_path / backend) == pytest.approx(losses(tmp_path / "stream"), rel=1e-4, abs=1e-5)
    a, b = stream.folds[0]["test"], other.folds[0]["test"]
    assert a.keys() == b.keys()
    for k in a:  # the metric and its parts to float tolerance, the counts (confusion) exactly
        assert b[k] == (pytest.approx(a[k], rel=1e-4, abs=1e-5) if isinstance(a[k], float) else a[k]), k


def test_ffcv_beton_written_on_first_use_and_refreshed_when_stale(labelled, tmp_path):
    pytest.importorskip("ffcv", reason="the `ffcv` extra is not installed")
    import json

    from maeast.features import get_config
    from maeast.loaders.ffcv import ensure_beton
    out = tmp_path / "train.beton"
    _, written = ensure_beton(labelled, "train", 4.0, get_config("mae_ast"), out)
    assert written and json.loads(out.with_name("train.beton.json").read_text())["clip_seconds"] == 4.0
    assert ensure_beton(labelled, "train", 4.0, get_config("mae_ast"), out) == (out, False)  # fresh: reused
    assert ensure_beton(labelled, "train", 3.0, get_config("mae_ast"), out)[1]  # another clip length
    normalized = get_config("mae_ast").with_stats(-6.0, 3.0)
    assert ensure_beton(labelled, "train", 3.0, normalized, out)[1]  # another fbank recipe
    assert not ensure_beton(labelled, "train", 3.0, normalized, out)[1]


def test_ffcv_beton_in_a_folder_it_cannot_write_is_one_line(labelled, tmp_path, monkeypatch):
    """A read-only shard folder without data.cache_dir (tests run as root, who may write anywhere: the write is
    refused by patching what it calls)."""
    pytest.importorskip("ffcv", reason="the `ffcv` extra is not installed")
    import maeast.loaders.ffcv as ffcv_module

    def read_only(shard_dir, split, clip_seconds, out, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(out))

    monkeypatch.setattr(ffcv_module, "write_beton", read_only)
    copy = tmp_path / "shards"  # a folder without a .beton yet (the module's shards may have one by now)
    shutil.copytree(labelled, copy, ignore=shutil.ignore_patterns("*.beton", "*.beton.json"))
    with pytest.raises(MaeastError, match=r"^data.backend ffcv cannot write .*\.beton \(Permission denied\); give "
                                          r"data.cache_dir") as caught:
        finetuned(copy, tmp_path / "run", "--data.backend", "ffcv")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("backend, extra, message", [
    ("dali", ["--data.balanced", "true"], "data.balanced draws clips by class, which backend dali cannot"),
    ("ffcv", ["--data.epoch_batches", "3"], "backend ffcv reads one pass of its .beton per epoch"),
])
def test_finetuning_refuses_what_a_backend_cannot_do(labelled, tmp_path, backend, extra, message):
    with pytest.raises(MaeastError, match=message) as caught:
        finetuned(labelled, tmp_path, "--data.backend", backend, *extra)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("backend", ["dali", "ffcv"])
def test_finetuning_on_a_backend_resumes_inside_an_epoch(labelled, tmp_path, backend):
    """Stopped inside the second epoch and resumed, a fine-tuning run on dali (through DALI's checkpoint) or ffcv
    trains the uninterrupted run's clips, losses and scores."""
    if backend == "ffcv":
        pytest.importorskip("ffcv", reason="the `ffcv` extra is not installed")
    small = ["--data.backend", backend, "--optim.global_batch", "4", "--data.shuffle_buffer", "100"]
    reference = finetuned(labelled, tmp_path / "reference", *small)
    per_epoch = len(losses(tmp_path / "reference")) // 2
    assert per_epoch >= 2
    first = finetuned(labelled, tmp_path / "split", *small, "--run.stop_at", str(per_epoch + 1))
    assert first.stopped
    from maeast.finetune import finetune, load_finetune_config
    cfg = load_finetune_config("finetune_tiny", task="custom", shards=str(labelled), run_dir=str(tmp_path / "split"),
                               overrides=[*FINETUNE, *small])
    second = finetune(cfg, resume=True)
    assert losses(tmp_path / "split") == losses(tmp_path / "reference")
    assert step_keys(tmp_path / "split" / "main") == step_keys(tmp_path / "reference" / "main")
    assert second.folds[0]["test"] == reference.folds[0]["test"]


def test_maeast_shard_ffcv_writes_the_file_fine_tuning_reuses(labelled, tmp_path):
    """`maeast shard ffcv DIR` by hand writes DIR/CORPUS-SPLIT.beton, which fine-tuning's data.backend ffcv then
    finds fresh (same shards, recipe, clip length) and reads without writing it again."""
    pytest.importorskip("ffcv", reason="the `ffcv` extra is not installed")
    from typer.testing import CliRunner

    import maeast.cli.shard_ffcv  # noqa: F401  (registers `maeast shard ffcv`)
    from maeast.cli import app
    from maeast.features import get_config
    from maeast.loaders.ffcv import beton_name, ensure_beton
    copy = tmp_path / "shards"
    shutil.copytree(labelled, copy, ignore=shutil.ignore_patterns("*.beton", "*.beton.json"))
    result = CliRunner().invoke(app, ["shard", "ffcv", str(copy), "--clip-seconds", "4", "-j", "1"])
    assert result.exit_code == 0, result.output
    out = copy / beton_name("corpus", "train")
    assert out.is_file() and str(out) in result.output.replace("\n", "")
    assert ensure_beton(copy, "train", 4.0, get_config("mae_ast"), out) == (out, False)


@pytest.mark.slow
def test_dali_two_processes_resume_exactly_then_on_one_at_the_next_epoch(shards, tmp_path):
    """Two processes on DALI (each rank its share of the samples, DALI's own checkpoint per rank): stopped at step 2
    and resumed on two, the run follows the uninterrupted two-process run; a resume of that mid-epoch checkpoint on
    one process starts the next epoch and says so in one line."""
    from tests.test_engine_distributed import launch_env_vars, step_keys as keys_of

    def args(run_dir, *extra):
        return ["--config", "pretrain_tiny", *[f"--{o}" for o in [*SHORT, f"data.shards=[{shards}]",
                                                                   f"run.dir={run_dir}", *extra]]]
    launch_env_vars(args(tmp_path / "full", "schedule.steps=4"))
    launch_env_vars(args(tmp_path / "split", "schedule.steps=4", "run.stop_at=2"))
    shutil.copytree(tmp_path / "split", tmp_path / "other")
    saved = tmp_path / "other" / "config.yaml"  # the copy is a run of its own folder
    saved.write_text(saved.read_text().replace(str(tmp_path / "split"), str(tmp_path / "other")))
    launch_env_vars([*args(tmp_path / "split", "schedule.steps=4"), "--resume"])
    full = [r["loss"] for r in read_log(tmp_path / "full") if r["kind"] == "train"]
    assert [r["loss"] for r in read_log(tmp_path / "split") if r["kind"] == "train"] == full and len(full) == 4
    assert keys_of(tmp_path / "split") == keys_of(tmp_path / "full")
    one = pretrain(tiny(shards, tmp_path / "other", "schedule.steps=4"), resume=True)
    assert one.step == 4
    events = [r.get("message", "") for r in read_log(tmp_path / "other") if r["kind"] == "event"]
    assert any("cannot continue mid-epoch (it was saved by 2 rank(s), this run has 1); resuming at the start of "
               "epoch 1" in e for e in events), events
