"""Training straight from a bucket (moto S3 on 127.0.0.1): pretraining's loss curve of local disk, an exact
resume, no credential anywhere in the run folder, two processes following one; fine-tuning's scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maeast.pretrain import load_config, pretrain
from maeast.train.distributed import free_port
from maeast.train.logging import read_log
from tests.conftest import make_demo_shards, step_keys
from tests.servers import ACCESS_KEY, SECRET

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["schedule.steps=6", "schedule.warmup_steps=2", "data.batch_size=2", "optim.global_batch=4",
         "eval.every=3", "eval.batches=2", "run.save_every_steps=3", "run.log_every=1", "run.trace_keys=true"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_demo_shards(tmp_path_factory.getbasetemp() / "engine_demo")  # shared with test_engine_run


def tiny(shards, run_dir: Path, *extra: str):
    return load_config("pretrain_tiny", [*SHORT, f"data.shards=[{shards}]", f"run.dir={run_dir}", *extra])


@pytest.mark.slow
def test_pretraining_from_s3_resumes_exactly_and_keeps_no_secret(shards, s3, tmp_path):
    url = s3.upload(shards, "demo/shards")
    local = pretrain(tiny(shards, tmp_path / "local"))
    first = pretrain(tiny(url, tmp_path / "remote", "run.stop_at=3"))
    second = pretrain(tiny(url, tmp_path / "remote"), resume=True)
    assert first.losses + second.losses == local.losses  # bitwise: the same clips, crops and steps
    keys = [(tmp_path / run / "keys" / "rank0.tsv").read_text() for run in ("remote", "local")]
    assert keys[0] == keys[1]
    files = [p for p in (tmp_path / "remote").rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files) and any(p.name == "log.jsonl" for p in files)
    assert url in (tmp_path / "remote" / "config.yaml").read_text()
    for path in files:  # config, logs, tensorboard events, checkpoints, exports
        data = path.read_bytes()
        assert SECRET.encode() not in data and ACCESS_KEY.encode() not in data, path


@pytest.mark.slow
def test_finetuning_from_s3_matches_local_disk(s3, tmp_path):
    from maeast.finetune import finetune, load_finetune_config
    from tests.conftest import build, make_corpus

    build(make_corpus(tmp_path / "corpus", speech=6, music=6), tmp_path / "shards")
    url = s3.upload(tmp_path / "shards", "labelled/shards")
    runs = {}
    cache = tmp_path / "cache"  # the data section's stream keys, as in pretraining: a local copy of each shard
    for name, shards, extra in (("local", tmp_path / "shards", []), ("remote", url, []),
                                ("cached", url, [f"data.cache_dir={cache}"])):
        cfg = load_finetune_config("finetune_tiny", task="custom", shards=str(shards), run_dir=str(tmp_path / name),
                                   overrides=["schedule.epochs=1", *extra])
        runs[name] = finetune(cfg)
    scores = {name: [{k: v for k, v in fold.items() if k not in ("seconds", "classifier")} for fold in run.folds]
              for name, run in runs.items()}
    assert scores["remote"] == scores["local"] and scores["local"][0]["history"]  # the same clips, steps and scores
    assert scores["cached"] == scores["local"]
    assert url in (tmp_path / "remote" / "config.yaml").read_text()
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    shas = {shard["sha256"] for shard in index["splits"]["train"]["shards"]}
    cached = {p.stem for p in cache.rglob("*.tar")}  # entries are named by their sha256
    assert shas and cached == shas


@pytest.mark.slow
def test_two_processes_from_s3_follow_one_process_from_disk(shards, s3, tmp_path):
    """1 process x 2 workers on local disk against 2 processes x 1 worker on the bucket: the same clips in the
    same steps and the same losses (the loader's stream is a function of its slots, wherever the bytes are)."""
    url = s3.upload(shards, "two/shards")
    steps = ["schedule.steps=3", "schedule.warmup_steps=1", "data.batch_size=2", "optim.global_batch=4",
             "eval.every=3", "eval.batches=2", "run.save_every_steps=3", "run.log_every=1", "run.trace_keys=true"]
    one = pretrain(load_config("pretrain_tiny", [*steps, f"data.shards=[{shards}]", f"run.dir={tmp_path / 'one'}",
                                                 "data.num_workers=2"]))
    port, procs = str(free_port()), []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        args = [f"--{o}" for o in [*steps, f"data.shards=[{url}]", f"run.dir={tmp_path / 'two'}", "data.num_workers=1"]]
        command = [sys.executable, str(ROOT / "launch" / "pretrain.py"), "--config", "pretrain_tiny", *args]
        procs.append(subprocess.Popen(command, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    losses = [r["loss"] for r in read_log(tmp_path / "two") if r["kind"] == "train"]
    assert losses == pytest.approx(one.losses, rel=1e-5, abs=1e-6)
    assert step_keys(tmp_path / "two") == step_keys(tmp_path / "one")
