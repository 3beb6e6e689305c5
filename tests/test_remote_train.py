"""Pretraining straight from a bucket (moto S3 on 127.0.0.1): the loss curve of local disk, an exact resume,
and no credential anywhere in the run folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from maeast.engine import load_config, pretrain
from tests.conftest import make_demo_shards
from tests.servers import ACCESS_KEY, SECRET

SHORT = ["schedule.steps=6", "schedule.warmup_steps=2", "data.batch_size=2", "optim.global_batch=4",
         "eval.every=3", "eval.batches=2", "run.save_every=3", "run.log_every=1", "run.trace_keys=true"]


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
    assert (tmp_path / "remote" / "keys" / "rank0.tsv").read_text() == (tmp_path / "local" / "keys" / "rank0.tsv").read_text()
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
    for name, shards in (("local", tmp_path / "shards"), ("remote", url)):
        cfg = load_finetune_config("finetune_tiny", task="custom", shards=str(shards), run_dir=str(tmp_path / name),
                                   overrides=["schedule.epochs=1"])
        runs[name] = finetune(cfg)
    scores = {name: [{k: v for k, v in fold.items() if k not in ("seconds", "classifier")} for fold in run.folds]
              for name, run in runs.items()}
    assert scores["remote"] == scores["local"] and scores["local"][0]["history"]  # the same clips, steps and scores
    assert url in (tmp_path / "remote" / "config.yaml").read_text()
