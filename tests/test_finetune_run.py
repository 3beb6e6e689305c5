"""Fine-tuning on the shared Run (maeast.train.run): the run features pretraining has, on the fine-tuning side.

On a custom corpus of real synthesized audio (espeak-ng sentences and sox plucked chords, labelled speech and
music, the test share carved out by key hash): run.trace_keys writes every clip each step trains on;
run.stop_at stops the session inside an epoch and --resume continues it as if it never stopped (the same
clips in the same steps, the same losses, the same scores), in both modes; and two processes, one killed,
end in one line within run.collective_timeout.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maeast.finetune import finetune, load_finetune_config
from maeast.finetune.data import open_corpus, selections
from maeast.finetune.tasks import get_task
from maeast.train.distributed import free_port
from maeast.train.logging import read_log
from tests.conftest import build, make_corpus, step_keys

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300
RUN = ["--data.clip_seconds", "1", "--data.valid_fraction", "0", "--data.test_fraction", "0.25",
       "--schedule.epochs", "3", "--run.trace_keys", "true", "--run.save_every_epochs", "5"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ft_run")
    out = root / "shards"
    build(make_corpus(root / "corpus", speech=8, music=8), out)
    return out


def config(shards: Path, run_dir: Path, *extra: str, frozen: bool = False):
    return load_finetune_config("finetune_tiny", task="custom", shards=str(shards), run_dir=str(run_dir),
                                overrides=[*RUN, *extra], freeze_encoder=True if frozen else None)


def train_losses(part: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(part) if r["kind"] == "train"}


@pytest.mark.parametrize("frozen", [False, True], ids=["full", "frozen_cached"])
def test_stop_at_inside_an_epoch_then_resume_is_the_uninterrupted_run(shards, tmp_path, frozen):
    reference = finetune(config(shards, tmp_path / "reference", frozen=frozen))
    part = reference.run_dir / "main"
    keys = step_keys(part)
    steps = sorted(keys)
    per_epoch = len(steps) // 3
    assert per_epoch >= 2 and steps == list(range(1, len(steps) + 1))
    # run.trace_keys: every training clip of the pass once per epoch, never a held-out (carved test) clip
    corpus = open_corpus(get_task("custom"), shards, seeded=config(shards, tmp_path).seeded_split)
    train = selections(corpus, None)["train"]
    trained = sorted(k for s in steps[:per_epoch] for k in keys[s])
    assert all(train.keeps(k, corpus) for k in trained) and len(set(trained)) == len(trained)
    assert all(len(keys[s]) == 4 for s in steps)  # every step holds optim.global_batch clips

    stop = per_epoch + 1  # inside the second epoch
    first = finetune(config(shards, tmp_path / "split", "--run.stop_at", str(stop), frozen=frozen))
    assert first.stopped and first.folds == []
    resumed_part = tmp_path / "split" / "main"
    assert max(step_keys(resumed_part)) == stop and (resumed_part / "checkpoints" / "step_{:08d}".format(stop)).is_dir()
    second = finetune(config(shards, tmp_path / "split", frozen=frozen), resume=True)
    assert not second.stopped
    assert step_keys(resumed_part) == keys  # the same clips in the same steps, none repeated or skipped
    assert train_losses(resumed_part) == train_losses(part)  # bitwise: every draw is a function of the step
    assert second.folds[0]["test"] == reference.folds[0]["test"]
    assert second.folds[0]["history"] == reference.folds[0]["history"]
    assert any("resumed at epoch 1, step 1 of it" in r.get("message", "") for r in read_log(resumed_part))


def clean_env() -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.mark.slow
def test_two_processes_one_killed_end_in_one_line_within_the_collective_timeout(shards, tmp_path):
    args = [sys.executable, "-m", "maeast", "finetune", "--task", "custom", "--data", str(shards), "--config",
            "finetune_tiny", "--run.dir", str(tmp_path), *RUN, "--schedule.epochs", "40",
            "--run.collective_timeout", "10"]
    port = str(free_port())
    procs = [subprocess.Popen(args, env={**clean_env(), "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r),
                                         "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                              cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in range(2)]
    log = tmp_path / "main" / "log.jsonl"
    deadline = time.monotonic() + TIMEOUT
    try:
        while not (log.is_file() and log.read_text().count('"kind": "train"') >= 3):
            assert time.monotonic() < deadline and procs[0].poll() is None, procs[0].communicate()[1][-3000:]
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, err = procs[0].communicate(timeout=TIMEOUT)
        elapsed = time.monotonic() - killed
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert procs[0].returncode == 2 and elapsed < 10 + 5 + 15, (elapsed, err[-3000:])  # timeout + roll call + slack
    assert re.fullmatch(r"error: rank\(s\) 1 of 2 stopped answering \(rank 0: .+\); the last completed step is \d+, "
                        r"the last good checkpoint .+: --resume continues from it, on any number of processes",
                        lines[-1]), lines[-1]
    assert "Traceback" not in err
