"""`maeast compare` end to end on tiny trees: a 2-step pretraining of the tiny preset, then the three
fine-tuning settings per task, one JSON row each with its metric, chance and time, a PNG, and a rerun
that reads the finished runs back instead of training again."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from maeast.cli import app
from maeast.errors import MaeastError
from maeast.finetune.compare import BASELINE, SETTINGS, TaskData, parse_task, random_twin, run_matrix
from maeast.model import make_config
from maeast.shards.build import build_shards

TINY = ["--data.clip_seconds", "2", "--run.threads", "1"]


@pytest.fixture(scope="module")
def setup(esc50, sc_v1, tmp_path_factory):  # noqa: F811  (fixtures of tests.official_trees)
    from maeast.pretrain import load_config, pretrain
    out = tmp_path_factory.mktemp("compare")
    root_v1, test_v1 = sc_v1
    build_shards("esc50", esc50, out / "esc50")
    build_shards("speechcommands", root_v1, out / "sc1", options={"version": "1", "test_root": str(test_v1)})
    cfg = load_config("pretrain_tiny", ["--data.shards", f"[{out / 'esc50'}]", "--data.min_seconds", "0.5",
                                        "--data.max_seconds", "1.0", "--eval.every", "0", "--run.dir",
                                        str(out / "pre"), "--schedule.steps", "2", "--schedule.warmup_steps", "1",
                                        "--run.save_every_steps", "2"])
    done = pretrain(cfg)
    return out, done.encoder


def test_cli_runs_the_matrix_writes_json_and_png_and_a_rerun_reuses_it(setup):
    out, encoder = setup
    args = ["compare", "--checkpoint", str(encoder), "--task", f"speechcommands_v1={out / 'sc1'}",
            "--task", f"esc50={out / 'esc50'}", "-c", "finetune_tiny", "--out", str(out / "cmp"),
            *TINY]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    results = json.loads((out / "cmp" / "results.json").read_text())
    rows = results["rows"]
    assert [(r["task"], r["setting"]) for r in rows] == [(t, s.name) for t in ("speechcommands_v1", "esc50")
                                                        for s in SETTINGS + (BASELINE,)]
    for r in rows:
        assert 0.0 <= r["mean"] <= 1.0 and 0.0 <= r["chance"] <= 1.0 and r["seconds"] > 0 and not r["reused"]
        assert r["metric"] == "accuracy" and all(0.0 <= v <= 1.0 for v in r["folds"])
    assert [len(r["folds"]) for r in rows] == [1, 1, 1, 1, 5, 5, 5, 5]
    assert set(results["verdicts"]) == {"speechcommands_v1", "esc50"}
    assert results["verdicts"]["esc50"]["baseline"]["folds"] == 5  # the pretrained encoder against fbank statistics
    assert "fbank mean+std" in first.output
    assert results["verdicts"]["esc50"]["folds"] == 5 and 0 <= results["verdicts"]["esc50"]["folds_ahead"] <= 5
    png = out / "cmp" / "results.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "frozen, pretrained" in first.output and "chance" in first.output
    assert all(f"{100 * r['mean']:.1f} +- {100 * r['std']:.1f}%" in first.output for r in rows)  # whole, not cut at 80
    # the random-init baseline has the checkpoint's architecture, the others its weights
    model = json.loads((out / "cmp" / "esc50-frozen-random" / "model.json").read_text())["model"]
    assert (model["dim"], model["depth"], model["patch_time"]) == (64, 2, 16)
    for name in ("frozen-pretrained", "full-pretrained"):
        assert json.loads((out / "cmp" / f"esc50-{name}" / "model.json").read_text())["checkpoint"] == str(encoder)

    def run_files() -> dict:  # every file of every run folder, with its modification time
        return {p: p.stat().st_mtime_ns for p in (out / "cmp").glob("*/**/*") if p.is_file()}

    before = run_files()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert before and run_files() == before  # the finished runs were read back: nothing trained or rewritten
    rerun = json.loads((out / "cmp" / "results.json").read_text())["rows"]
    assert all(r["reused"] for r in rerun)
    assert [(r["mean"], r["seconds"]) for r in rerun] == [(r["mean"], r["seconds"]) for r in rows]

    changed = CliRunner().invoke(app, args + ["--optim.frozen_lr", "0.5"])
    assert changed.exit_code == 2 and "optim.frozen_lr" in changed.output and "delete" in changed.output


def test_custom_shards_run_like_the_named_tasks(setup, tmp_path):
    """--task custom=SHARDS: the three settings on any labelled shard folder, rows named after the folder."""
    from tests.conftest import build, make_corpus
    out, encoder = setup
    shards = tmp_path / "sounds"
    build(make_corpus(tmp_path / "corpus", speech=5, music=5), shards)
    args = ["compare", "--checkpoint", str(encoder), "--task", f"custom={shards}", "-c", "finetune_tiny",
            "--out", str(tmp_path / "cmp"), *TINY]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "cmp" / "results.json").read_text())["rows"]
    assert [(r["task"], r["setting"]) for r in rows] == [("custom_sounds", s.name) for s in SETTINGS + (BASELINE,)]
    for r in rows[:len(SETTINGS)]:
        assert r["metric"] == "accuracy" and 0.0 <= r["mean"] <= 1.0 and 0.0 < r["chance"] <= 1.0
        saved = json.loads((tmp_path / "cmp" / f"custom_sounds-{r['setting']}" / "results.json").read_text())
        assert saved["task"] == "custom" and saved["shards"] == str(shards)
    twice = CliRunner().invoke(app, args[:5] + ["--task", f"custom={shards}", *args[5:]])
    assert twice.exit_code == 2 and "given twice" in twice.output
    bare = CliRunner().invoke(app, ["compare", "--checkpoint", str(encoder), "--task", "custom"])
    assert bare.exit_code == 2 and "custom=" in bare.output and len(bare.output.strip().splitlines()) == 1


def test_bad_input_is_one_line(setup, tmp_path):
    out, encoder = setup
    with pytest.raises(MaeastError, match="unknown task"):
        parse_task("esc51=shards/x")
    with pytest.raises(MaeastError, match="shard folder"):
        parse_task("esc50=")
    assert parse_task("esc50") == TaskData("esc50", None)
    with pytest.raises(MaeastError, match="no task"):
        run_matrix(encoder, [], "finetune_tiny", tmp_path)
    with pytest.raises(MaeastError, match="encoder.safetensors"):
        run_matrix(tmp_path, [TaskData("esc50", str(out / "esc50"))], "finetune_tiny", tmp_path)
    assert random_twin(make_config("small_frame")) == {"preset": "small", "patch_time": 2, "patch_freq": 128}
    assert random_twin(make_config("small_frame"), prefer="small_frame")["preset"] == "small_frame"
    with pytest.raises(MaeastError, match="no model preset"):
        random_twin(make_config("tiny", dim=96))
