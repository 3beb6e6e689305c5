"""Fine-tuning and evaluation of every task on tiny trees in the official layouts (the recipes' test trees).

Each run is the tiny model for one short epoch on the DeepSpeed engine; the checks are the invariants:
fold bookkeeping against the corpus metadata, a frozen encoder left untouched, evaluation reproducing
the run's own figures, and resumption.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from maeast.artifacts import initial_encoder, write_encoder
from maeast.errors import MaeastError
from maeast.features import get_config as get_fbank
from maeast.finetune import evaluate_run, finetune, load_finetune_config
from maeast.loaders import StreamConfig
from maeast.finetune.data import make_loader, open_corpus, selections
from maeast.finetune.tasks import get_task
from maeast.model import MAEAST, make_config
from maeast.shards.build import build_shards


@pytest.fixture(scope="module")
def shards(esc50, iemocap, sc_v1, sc_v2, voxceleb1, audioset, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("ft_shards")
    root_v1, test_v1 = sc_v1
    build_shards("esc50", esc50, out / "esc50")
    build_shards("iemocap", iemocap, out / "iemocap")
    build_shards("speechcommands", root_v1, out / "sc1", options={"version": "1", "test_root": str(test_v1)})
    build_shards("speechcommands", sc_v2, out / "sc2")
    build_shards("voxceleb1", voxceleb1, out / "vox")
    build_shards("audioset", audioset, out / "audioset")
    return out


def tiny(task: str, data: Path, run: Path, *overrides: str, **flags):
    """The tiny config on 2 s clips (the trees' clips are single spoken words) unless overridden."""
    return load_finetune_config("finetune_tiny", task=task, shards=str(data), run_dir=str(run),
                                overrides=["--data.clip_seconds", "2", *overrides], **flags)


def pass_keys(corpus, selection, train: bool) -> list[str]:
    loader = make_loader(corpus, selection, train=train, batch_size=2, clip_seconds=1.0, fbank="mae_ast", seed=3,
                         shuffle_buffer=100, epoch_batches=None, stream=StreamConfig(num_workers=0, on_error="fail"))
    return [k for b in loader for k in b.keys]


def test_esc50_folds_follow_the_csv_and_evaluation_reproduces_the_run(esc50, shards, tmp_path):  # noqa: F811
    with open(esc50 / "meta" / "esc50.csv") as f:
        rows = [r for r in csv.DictReader(f) if (esc50 / "audio" / r["filename"]).is_file()]
    fold_of = {r["filename"][:-4]: int(r["fold"]) for r in rows}
    corpus = open_corpus(get_task("esc50"), shards / "esc50")
    assert corpus.folds == [1, 2, 3, 4, 5] and corpus.fold_of == fold_of
    for fold in corpus.folds:
        picks = selections(corpus, fold)
        train, test = pass_keys(corpus, picks["train"], True), pass_keys(corpus, picks["test"], False)
        assert not set(train) & set(test)
        assert sorted(test) == sorted(k for k, f in fold_of.items() if f == fold)
        assert sorted(train) == sorted(k for k, f in fold_of.items() if f != fold)

    result = finetune(tiny("esc50", shards / "esc50", tmp_path / "run"))
    assert [f["fold"] for f in result.folds] == [1, 2, 3, 4, 5]
    assert all(f["test"]["clips"] == 1 and f["selected_by"] == "fold_mean" for f in result.folds)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["mean"] == pytest.approx(result.summary["mean"]) and len(saved["folds"]) == 5

    from maeast.cli import app
    from maeast.cli.finetune import register
    if "evaluate" not in {c.name for c in app.registered_commands}:
        register(app)
    out = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "run"), "--task", "esc50"])
    assert out.exit_code == 0, out.output
    report = json.loads((tmp_path / "run" / "evaluation" / "evaluation.json").read_text())
    assert [f["accuracy"] for f in report["folds"]] == pytest.approx(result.values)
    assert report["mean"] == pytest.approx(result.summary["mean"]) and report["std"] == pytest.approx(result.summary["std"])
    assert all((tmp_path / "run" / "evaluation" / f"confusion_fold{k}.png").is_file() for k in range(1, 6))
    wrong = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "run"), "--task", "iemocap"])
    assert wrong.exit_code == 2 and "esc50" in wrong.output


def exported_encoder(folder: Path) -> Path:
    """A pretraining export (encoder.safetensors + encoder.json) of a tiny MAE-AST with trained-looking BN stats."""
    torch.manual_seed(7)
    cfg = make_config("tiny")
    model = MAEAST(cfg)
    model.encoder.input_norm.running_mean.fill_(-6.0)
    model.encoder.input_norm.running_var.fill_(9.0)
    fbank = get_fbank("mae_ast")
    meta = {"model": cfg.to_dict(), "features": {"preset": fbank.name, **dataclasses.asdict(fbank)},
            "pretraining": {"step": 3}}
    folder.mkdir(parents=True)
    write_encoder(model.state_dict(), meta, folder)
    return folder


def test_iemocap_sessions_and_a_frozen_encoder_stays_as_loaded(iemocap, shards, tmp_path):  # noqa: F811
    corpus = open_corpus(get_task("iemocap"), shards / "iemocap")
    for fold in (1, 5):
        test = pass_keys(corpus, selections(corpus, fold)["test"], False)
        train = pass_keys(corpus, selections(corpus, fold)["train"], True)
        assert test and all(k.startswith(f"Ses0{fold}") for k in test)  # the session = the fold
        assert train and not any(k.startswith(f"Ses0{fold}") for k in train)
    encoder_dir = exported_encoder(tmp_path / "pretrained")
    before = load_file(str(encoder_dir / "encoder.safetensors"))
    for cache in ("true", "false"):
        run = tmp_path / f"frozen_{cache}"
        result = finetune(tiny("iemocap", shards / "iemocap", run, "--run.cache_features", cache,
                               checkpoint=str(encoder_dir), freeze_encoder=True, folds=[1, 5]))
        assert [f["fold"] for f in result.folds] == [1, 5]
        for fold in (1, 5):
            after = load_file(str(run / f"fold{fold}" / "classifier" / "encoder.safetensors"))
            assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
            head = load_file(str(run / f"fold{fold}" / "classifier" / "head.safetensors"))
            assert head["projector.weight"].shape == (256, 64)  # the frozen default: SUPERB's head
    full = tmp_path / "full"
    finetune(tiny("iemocap", shards / "iemocap", full, checkpoint=str(encoder_dir), folds=[1]))
    tuned = load_file(str(full / "fold1" / "classifier" / "encoder.safetensors"))
    assert any(not torch.equal(tuned[k], before[k]) for k in before if tuned[k].is_floating_point())


@pytest.mark.parametrize("task,data", [("speechcommands_v1", "sc1"), ("speechcommands_v2", "sc2"),
                                       ("voxceleb", "vox"), ("audioset", "audioset")])
def test_fixed_split_tasks_train_and_evaluate(task, data, shards, tmp_path):
    result = finetune(tiny(task, shards / data, tmp_path / "run", "--schedule.epochs", "2",
                           *(["--data.clip_seconds", "10"] if task == "audioset" else [])))
    (fold,) = result.folds
    the_task = get_task(task)
    assert fold["fold"] is None and 0.0 <= fold["test"][the_task.metric] <= 1.0
    assert fold["selected_by"] == ("valid" if the_task.valid_split else "last")
    assert len(fold["history"]) == 2 and all("test" in h for h in fold["history"])
    report = evaluate_run(tmp_path / "run")
    assert report.values == pytest.approx(result.values) and report.metric == the_task.metric
    if the_task.metric == "map":
        assert len(report.folds[0].scores["ap"]) == len(report.labels)


def test_wrong_shards_checkpoints_and_resume(shards, tmp_path):
    with pytest.raises(MaeastError, match="task esc50 reads esc50 or esc10 shards"):
        finetune(tiny("esc50", shards / "iemocap", tmp_path / "x"))
    with pytest.raises(MaeastError, match="fold 7 is not in"):
        finetune(tiny("esc50", shards / "esc50", tmp_path / "x", folds=[7]))
    with pytest.raises(MaeastError, match="no folds"):
        finetune(tiny("voxceleb", shards / "vox", tmp_path / "x", folds=[1]))
    # A pretraining run folder: its latest checkpoint's encoder export is the one loaded.
    run = tmp_path / "pretrain_run"
    exported_encoder(run / "checkpoints" / "step_00000004")
    (run / "checkpoints" / "step_00000004" / "state_rank0.pt").write_bytes(b"")
    (run / "checkpoints" / "latest").write_text("step_00000004")
    state, cfg, info = initial_encoder(str(run), make_config("base"), 0)
    assert cfg.dim == 64 and info["pretraining"]["step"] == 3
    assert all(torch.equal(state[k], v) for k, v in initial_encoder(str(run / "checkpoints" / "step_00000004"),
                                                                    make_config("base"), 0)[0].items())
    with pytest.raises(MaeastError, match="not found"):
        initial_encoder(str(tmp_path / "nowhere"), make_config("tiny"), 0)
    # Resume: a finished fold is kept, the missing one runs; a rerun without --resume is refused.
    out = tmp_path / "resumed"
    first = finetune(tiny("esc50", shards / "esc50", out, folds=[2]))
    result_file = out / "fold2" / "result.json"
    stamp = result_file.stat().st_mtime_ns
    with pytest.raises(MaeastError, match="--resume"):
        finetune(tiny("esc50", shards / "esc50", out, folds=[2]))
    both = finetune(tiny("esc50", shards / "esc50", out, folds=[2, 4]), resume=True)
    assert [f["fold"] for f in both.folds] == [2, 4] and result_file.stat().st_mtime_ns == stamp
    assert both.folds[0]["test"] == first.folds[0]["test"]
    with pytest.raises(MaeastError, match="different config"):
        finetune(tiny("esc50", shards / "esc50", out, "--optim.lr", "0.5", folds=[2]), resume=True)


def test_finetune_command_line(shards, tmp_path):
    from maeast.cli import app
    from maeast.cli.finetune import register
    if "finetune" not in {c.name for c in app.registered_commands}:
        register(app)
    args = ["finetune", "--task", "voxceleb", "--data", str(shards / "vox"), "--config", "finetune_tiny",
            "--freeze-encoder", "--run.dir", str(tmp_path / "cli"), "--data.clip_seconds", "2"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "voxceleb (frozen, superb, random init)" in out.output and "mean +- std" in out.output
    info = json.loads((tmp_path / "cli" / "main" / "classifier" / "classifier.json").read_text())
    assert info["frozen"] and info["head"] == {"layers": 2, "norm": "none", "weighted": True, "projector": 256,
                                               "protocol": "superb", "stats": False, "concat": False}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output and len(again.output.strip().splitlines()) == 1
    bad = CliRunner().invoke(app, args[:5] + ["--fold", "2", "--run.dir", str(tmp_path / "cli2")])
    assert bad.exit_code == 2 and "no folds" in bad.output


def test_fine_tunes_a_pretraining_run_of_the_engine(shards, tmp_path):
    """The engine's own exports: RUN/encoder, the run folder and a checkpoint folder all load, and the
    fine-tuned classifier records the pretraining it started from."""
    from maeast.pretrain import load_config, pretrain
    cfg = load_config("pretrain_tiny", ["--data.shards", f"[{shards / 'esc50'}]", "--data.min_seconds", "0.5",
                                        "--data.max_seconds", "1.0", "--eval.every", "0", "--run.dir",
                                        str(tmp_path / "pre"), "--schedule.steps", "2", "--schedule.warmup_steps", "1",
                                        "--run.save_every_steps", "2", "--run.threads", "1"])
    done = pretrain(cfg)
    assert done.encoder is not None
    for checkpoint in (done.encoder, tmp_path / "pre", done.checkpoint):
        state, model_cfg, info = initial_encoder(str(checkpoint), make_config("base"), 0)
        assert model_cfg.dim == 64 and info["pretraining"]["step"] == 2
    result = finetune(tiny("esc50", shards / "esc50", tmp_path / "ft", checkpoint=str(done.encoder), folds=[3]))
    info = json.loads((tmp_path / "ft" / "fold3" / "classifier" / "classifier.json").read_text())
    encoder_json = json.loads((tmp_path / "ft" / "fold3" / "classifier" / "encoder.json").read_text())
    assert info["checkpoint"] == str(done.encoder) and encoder_json["pretraining"]["step"] == 2
    assert result.folds[0]["test"]["clips"] == 1


def test_an_interrupted_fold_resumes_to_the_same_model(shards, tmp_path):
    args = ("--schedule.epochs", "3", "--run.keep", "3")
    whole = finetune(tiny("esc50", shards / "esc50", tmp_path / "whole", *args, folds=[1]))
    cut = tmp_path / "cut"
    finetune(tiny("esc50", shards / "esc50", cut, *args, folds=[1]))
    fold = cut / "fold1"
    steps = sorted((fold / "checkpoints").glob("step_*"))
    assert len(steps) == 3
    for path in (fold / "result.json", fold / "classifier", steps[-1]):  # as if killed during the last epoch
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (fold / "checkpoints" / "latest").write_text(steps[1].name)
    resumed = finetune(tiny("esc50", shards / "esc50", cut, *args, folds=[1]), resume=True)
    assert resumed.folds[0]["history"] == whole.folds[0]["history"]
    a = load_file(str(tmp_path / "whole" / "fold1" / "classifier" / "head.safetensors"))
    b = load_file(str(fold / "classifier" / "head.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
