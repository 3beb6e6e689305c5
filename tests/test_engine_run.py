"""Pretraining runs in one process on the tiny demo corpus: exact resume (ZeRO 0, 1, 2), a kill during a save,
the exported encoder, a non-finite loss, run-directory rules, and the CLI commands over a finished run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maeast.artifacts import latest_checkpoint, read_encoder
from maeast.pretrain import NonFiniteLoss, load_config, pretrain
from maeast.train.logging import read_log
from maeast.errors import MaeastError
from maeast.model import MAEAST
from tests.conftest import make_demo_shards

ROOT = Path(__file__).resolve().parents[1]
ZERO = {0: None, 1: ROOT / "launch" / "ds_zero1.json", 2: ROOT / "launch" / "ds_zero2.json"}
SHORT = ["schedule.steps=6", "schedule.warmup_steps=2", "data.batch_size=2", "optim.global_batch=4",
         "eval.every=3", "eval.batches=2", "run.save_every_steps=3", "run.log_every=1", "run.trace_keys=true"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_demo_shards(tmp_path_factory.getbasetemp() / "engine_demo")


def tiny(shards: Path, run_dir: Path, *extra: str):
    return load_config("pretrain_tiny", [*SHORT, f"data.shards=[{shards}]", f"run.dir={run_dir}", *extra])


def train_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_log(run_dir) if r["kind"] == "train"]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def keys(run_dir: Path) -> list[str]:
    return (run_dir / "keys" / "rank0.tsv").read_text().splitlines()


@pytest.fixture(scope="module")
def full_runs(shards, tmp_path_factory) -> dict:
    """Uninterrupted 6-step runs, one per ZeRO stage."""
    base = tmp_path_factory.mktemp("full")
    return {stage: pretrain(tiny(shards, base / f"zero{stage}"), ZERO[stage]) for stage in ZERO}


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_resume_continues_the_same_curve_bitwise(stage, shards, full_runs, tmp_path):
    full = full_runs[stage]
    first = pretrain(tiny(shards, tmp_path, "run.stop_at=3"), ZERO[stage])
    assert first.step == 3 and latest_checkpoint(tmp_path).name == "step_00000003"
    second = pretrain(tiny(shards, tmp_path), ZERO[stage], resume=True)
    assert second.step == 6 and len(second.losses) == 3
    assert first.losses + second.losses == full.losses  # bitwise: float equality, step by step
    assert train_losses(tmp_path) == full.losses  # the log is one continuous curve
    a, b = weights(full.checkpoint), weights(second.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert keys(tmp_path) == keys(full.run_dir)  # the same clips in the same steps: none repeated or skipped
    assert second.eval == full.eval


def test_losses_fall_and_logs_are_written(full_runs):
    run = full_runs[0]
    assert len(run.losses) == 6 and all(torch.isfinite(torch.tensor(run.losses)))
    assert min(run.losses[3:]) < run.losses[0]
    records = read_log(run.run_dir)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    for r in train:
        assert {"loss", "mse", "infonce", "lr", "clips_per_s", "audio_s_per_s", "data_wait", "eta_s"} <= set(r)
        assert 0.0 <= r["data_wait"] <= 1.0
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]
    assert list((run.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run.run_dir / "config.yaml").is_file() and json.loads((run.run_dir / "ds_config.json").read_text())


def test_exported_encoder_loads_for_fine_tuning(full_runs, shards):
    run = full_runs[0]
    encoder, info = read_encoder(run.encoder)
    assert info["format"] == "maeast-encoder/1"
    assert info["features"]["preset"] == "mae_ast" and info["features"]["n_mels"] == 128
    assert info["pretraining"]["step"] == 6 and info["model"]["dim"] == 64
    norm = encoder.input_norm
    assert info["normalization"]["running_mean"] == pytest.approx(float(norm.running_mean[0]))
    assert info["normalization"]["running_var"] == pytest.approx(float(norm.running_var[0]))
    whole = weights(run.checkpoint)
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, whole[f"encoder.{name}"])
    model = MAEAST(encoder.cfg)
    model.load_state_dict(whole)
    features = torch.randn(2, 300, 128)
    out = encoder(features)
    assert out.x.shape == (2, 18 * 8, 64) and torch.isfinite(out.x).all()
    assert torch.equal(out.x, model.encoder.eval()(features).x)


def test_kill_during_save_keeps_the_last_good_checkpoint(shards, full_runs, tmp_path):
    """A real process dies (SIGKILL) in the middle of its second save; resume then finishes the same run."""
    script = textwrap.dedent(f"""
        import os, signal
        import maeast.train.checkpoint as ck
        from maeast.pretrain import load_config, pretrain
        real, calls = ck.write_encoder, []
        def dying(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:  # DeepSpeed's files, the state and model.safetensors of step 6 are written
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        ck.write_encoder = dying
        pretrain(load_config("pretrain_tiny", {[*SHORT, f"data.shards=[{shards}]", f"run.dir={tmp_path}"]!r}))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    root = tmp_path / "checkpoints"
    assert (root / ".tmp-step_00000006" / "model.safetensors").is_file()  # killed midway through step 6's save
    assert not (root / "step_00000006").exists()
    assert (root / "latest").read_text() == "step_00000003"
    good = latest_checkpoint(tmp_path)
    assert good.name == "step_00000003" and (good / "encoder.json").is_file()
    reference = full_runs[0]
    assert torch.equal(weights(good)["encoder.proj.weight"],
                       load_file(str(reference.run_dir / "checkpoints" / "step_00000003" / "model.safetensors"))
                       ["encoder.proj.weight"])
    resumed = pretrain(tiny(shards, tmp_path), None, resume=True)
    assert not (root / ".tmp-step_00000006").exists()
    assert train_losses(tmp_path) == reference.losses
    a, b = weights(reference.checkpoint), weights(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_before_the_update(shards, tmp_path, monkeypatch):
    cfg = tiny(shards, tmp_path, "run.save_every_steps=1")
    forward, calls = MAEAST.forward, []

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if self.training:
            calls.append(1)
            if len(calls) == 5:  # step 3, first micro-batch
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MAEAST, "forward", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 3 .*step_00000002"):
        pretrain(cfg)
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert any(r["kind"] == "event" and "non-finite" in r["message"] for r in read_log(tmp_path))


def test_run_directory_rules(shards, full_runs, tmp_path):
    done = full_runs[0].run_dir
    with pytest.raises(MaeastError, match="--resume"):
        pretrain(tiny(shards, done))
    with pytest.raises(MaeastError, match=r"optim\.lr"):
        pretrain(tiny(shards, done, "optim.lr=0.5"), resume=True)
    with pytest.raises(MaeastError, match="nothing to resume"):
        pretrain(tiny(shards, tmp_path / "empty"), resume=True)


def test_cli_pretrain_plot_and_visualize(shards, tmp_path):
    from typer.testing import CliRunner

    from maeast.cli.common import new_app
    from maeast.cli.train import register
    app = new_app("test")
    register(app)
    runner = CliRunner()
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "--config", "pretrain_tiny", *[f"--{o}" for o in SHORT],
                                 f"--data.shards=[{shards}]", f"--run.dir={run_dir}", "--run.stop_at=3"])
    assert result.exit_code == 0, result.output
    assert "step 3" in result.output and (run_dir / "encoder" / "encoder.safetensors").is_file()
    result = runner.invoke(app, ["plot", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    clip = sorted((shards.parent / "corpus" / "librispeech" / "dev-clean").rglob("*.flac"))[0]
    result = runner.invoke(app, ["visualize", str(clip), "--checkpoint", str(run_dir), "--out", str(tmp_path / "v.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "v.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(app, ["pretrain", "--config", "pretrain_tiny", "--optim.lrr", "1"])
    assert result.exit_code == 2 and "optim.lrr" in result.output
    result = runner.invoke(app, ["plot", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "log.jsonl" in result.output


def test_corpus_statistics_reach_the_loader_and_the_export(shards, tmp_path):
    """After `maeast shard stats`, pretraining normalizes with the corpus's figures and the export records
    them, so everything that reads the encoder back (fine-tuning, embed) feeds it the same features."""
    import shutil

    from maeast.artifacts import features_of
    from maeast.features import get_config
    from maeast.features.stats import write_stats

    folder = tmp_path / "shards"
    shutil.copytree(shards, folder)
    write_stats(folder, "mae_ast", {"mean": -6.5, "std": 3.25, "clips": 1, "frames": 100, "split": "train"})
    result = pretrain(tiny(folder, tmp_path / "run", "schedule.steps=2", "schedule.warmup_steps=1", "eval.every=0", "run.save_every_steps=2"))
    _, info = read_encoder(result.encoder)
    assert features_of(info) == get_config("mae_ast").with_stats(-6.5, 3.25)
    plain = pretrain(tiny(shards, tmp_path / "plain", "schedule.steps=2", "schedule.warmup_steps=1", "eval.every=0", "run.save_every_steps=2"))
    assert features_of(read_encoder(plain.encoder)[1]) == get_config("mae_ast")
    assert result.losses != plain.losses  # the same clips and masks, normalized otherwise


def test_fbank_on_device_trains_the_same_curve(shards, full_runs, tmp_path):
    """data.fbank_on device (the GPU route: waveforms leave the workers, the step computes the fbank) gives
    the ZeRO-0 run's loss curve and held-out evaluation bitwise: the same featurize, on the same CPU."""
    result = pretrain(tiny(shards, tmp_path, "data.fbank_on=device"), ZERO[0])
    assert result.losses == full_runs[0].losses
    assert result.eval == full_runs[0].eval
