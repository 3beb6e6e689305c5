"""`maeast finetune --task custom`: any labelled shard folder, end to end on real synthesized audio.

Three classes of ten clips each: espeak-ng words (speech), sox plucked strings (pluck, 1 s) and sox
sine chords (chord, 1.5 s), packed by `maeast shard build folder` once with class folders only (the
fine-tuning carves valid and test out of train by key hash) and once with train/valid/test folders;
and a multi-label tsv corpus of the same sounds and their mixes. The tiny model runs a short epoch or
two; the checks are the bookkeeping: splits, loss and metric, clip length, evaluation reproducing the run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from maeast.cli import app
from maeast.configio import to_dict
from maeast.errors import MaeastError
from maeast.finetune import evaluate_run, finetune, load_finetune_config
from maeast.finetune.custom import SeededSplit, clip_length, read_clips
from maeast.loaders import StreamConfig
from maeast.finetune.data import make_loader, open_corpus, selections
from maeast.finetune.tasks import TASK_NAMES, get_task
from maeast.shards.build import build_shards
from tests.conftest import pluck, sox, speak

WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
VOICES = ["en", "en-us+f3", "en-gb+m3", "en+klatt", "en-us+f1", "en+m7", "en-us", "en+f2", "en-gb", "en+m3"]
NOTES = ["C3", "D3", "E3", "F3", "G3", "A3", "B3", "C4", "D4", "E4"]
CLASSES = ("speech", "pluck", "chord")
TINY = ["--config", "finetune_tiny", "--schedule.epochs", "2"]


def make_clip(kind: str, i: int, path: Path) -> Path:
    """Clip i of a class: a spoken word, a plucked note (1 s) or a three-note sine chord (1.5 s)."""
    if kind == "speech":
        return speak(WORDS[i], path, voice=VOICES[i])
    if kind == "pluck":
        return pluck(path, (NOTES[i],), seconds=1.0, rate=22050)
    sox("-n", "-r", 22050, "-c", 1, path, "synth", 1.5, *(x for k in (0, 2, 4) for x in ("sine", NOTES[(i + k) % 10])),
        "gain", -6)
    return path


@pytest.fixture(scope="module")
def sounds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("custom_sounds")
    for kind in CLASSES:
        (root / kind).mkdir()
        for i in range(10):
            make_clip(kind, i, root / kind / f"{kind[0]}{i}.wav")
    for i in range(6):  # multi-label clips: a word over a plucked note, a chord with a plucked note
        sox("-m", root / "speech" / f"s{i}.wav", root / "pluck" / f"p{i}.wav", root / f"mix_sp{i}.wav")
        sox("-m", root / "chord" / f"c{i}.wav", root / "pluck" / f"p{i + 4}.wav", root / f"mix_cp{i}.wav")
    return root


@pytest.fixture(scope="module")
def corpora(sounds, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("custom_shards")
    flat, split = out / "flat", out / "split"
    for kind in CLASSES:
        shutil.copytree(sounds / kind, flat / kind)
        for i in range(10):  # 6 train, 2 valid, 2 test clips of each class
            part = "train" if i < 6 else "valid" if i < 8 else "test"
            (split / part / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(sounds / kind / f"{kind[0]}{i}.wav", split / part / kind)
    build_shards("folder", flat, out / "seeded")
    build_shards("folder", split, out / "own")
    return {"seeded": out / "seeded", "own": out / "own", "flat": flat}


def manifest(path: Path, rows: list[tuple[Path, str | None]]) -> None:
    lines = ["/"] + [f"{str(p)[1:]}\t{sf.info(str(p)).frames}" + (f"\t{labels}" if labels is not None else "")
                     for p, labels in rows]
    path.write_text("\n".join(lines) + "\n")


def multi_label_rows(sounds: Path) -> dict[str, list[tuple[Path, str]]]:
    rows = {"train": [], "valid": [], "test": []}
    for i in range(10):
        part = "train" if i < 6 else "valid" if i < 8 else "test"
        rows[part] += [(sounds / kind / f"{kind[0]}{i}.wav", kind) for kind in CLASSES]
    rows["train"] += [(sounds / f"mix_sp{i}.wav", "speech,pluck") for i in range(4)]
    rows["train"] += [(sounds / f"mix_cp{i}.wav", "chord,pluck") for i in range(1, 4)]
    rows["test"] += [(sounds / "mix_sp5.wav", "speech,pluck"), (sounds / "mix_cp5.wav", "chord,pluck")]
    rows["valid"] += [(sounds / "mix_sp4.wav", "pluck,speech"), (sounds / "mix_cp4.wav", "pluck,chord")]
    return rows


def cli(*args: str):
    from maeast.cli.finetune import register
    if "finetune" not in {c.name for c in app.registered_commands}:
        register(app)
    return CliRunner().invoke(app, [str(a) for a in args])


def pass_keys(corpus, selection, train: bool) -> list[str]:
    loader = make_loader(corpus, selection, train=train, batch_size=4, clip_seconds=1.0, fbank="mae_ast", seed=3,
                         shuffle_buffer=100, epoch_batches=None, stream=StreamConfig(num_workers=0, on_error="fail"))
    return [k for b in loader for k in b.keys]


def test_seeded_split_is_disjoint_covers_every_clip_and_is_stable(corpora):
    seeded = SeededSplit(valid_fraction=0.2, test_fraction=0.2, seed=0)
    corpus = open_corpus(get_task("custom"), corpora["seeded"], seeded=seeded)
    task = corpus.task
    assert (task.loss, task.metric, task.train_split, task.valid_split, task.test_split) == \
        ("ce", "accuracy", "train", "train", "train")
    keys = [c.key for c in read_clips(corpus.dir, "train", corpus.index)]
    assert len(keys) == 30 and sorted(corpus.part_of) == sorted(keys)
    passes = {name: pass_keys(corpus, sel, name == "train") for name, sel in selections(corpus, None).items()}
    assert all(passes.values()) and sum(map(len, passes.values())) == 30
    assert set(passes["train"]) | set(passes["valid"]) | set(passes["test"]) == set(keys)
    assert not (set(passes["train"]) & set(passes["valid"]) or set(passes["train"]) & set(passes["test"])
                or set(passes["valid"]) & set(passes["test"]))
    assert {k: corpus.part_of[k] for k in passes["test"]} == {k: "test" for k in passes["test"]}
    # Stable: the same parts on reopening, and clips added or removed move no other clip.
    assert open_corpus(get_task("custom"), corpora["seeded"], seeded=seeded).part_of == corpus.part_of
    assert seeded.parts(keys[5:], ("valid", "test")) == {k: corpus.part_of[k] for k in keys[5:]}
    assert SeededSplit(0.2, 0.2, seed=1).parts(keys, ("valid", "test")) != corpus.part_of
    # The fractions hold on a large corpus; with its own valid split only test is carved.
    many = SeededSplit(0.1, 0.2, seed=4).parts([f"clip{i:05d}" for i in range(20000)], ("valid", "test"))
    shares = {p: sum(v == p for v in many.values()) / len(many) for p in ("train", "valid", "test")}
    assert abs(shares["valid"] - 0.1) < 0.01 and abs(shares["test"] - 0.2) < 0.015, shares
    assert set(SeededSplit(0.5, 0.2).parts(keys, ("test",)).values()) == {"train", "test"}


def test_clip_length_rule(corpora):
    corpus = open_corpus(get_task("custom"), corpora["seeded"])
    durations = sorted(c.seconds for c in read_clips(corpus.dir, "train", corpus.index))
    assert durations[-1] == pytest.approx(1.5) and durations[0] < 1.0  # the words are shorter than a second
    assert corpus.task.clip_seconds == 1.5 and "90th percentile of the 30 train clips" in corpus.clip_rule
    assert clip_length([0.2] * 9 + [0.3])[0] == 0.5  # floor
    assert clip_length([30.0] * 3)[0] == 10.0  # cap
    assert clip_length([1.0] * 8 + [1.01, 4.0])[0] == 1.1  # the 9th of 10, rounded up to 0.1 s


@pytest.mark.parametrize("corpus,freeze", [("seeded", False), ("seeded", True), ("own", False)])
def test_custom_end_to_end_through_the_cli(corpora, tmp_path, corpus, freeze):
    run = tmp_path / "run"
    fractions = {"valid_fraction": 0.1, "test_fraction": 0.1, "seed": 0}  # the defaults, or a split of our own:
    if freeze:
        extra = ["--freeze-encoder"]
    elif corpus == "own":
        extra = ["--data.clip_seconds", "1.2"]
    else:  # evaluate must carve the test part again with these, not the defaults
        fractions = {"valid_fraction": 0.2, "test_fraction": 0.3, "seed": 5}
        extra = ["--data.valid_fraction", "0.2", "--data.test_fraction", "0.3", "--data.split_seed", "5"]
    out = cli("finetune", "--task", "custom", "--data", corpora[corpus], "--run.dir", run, *TINY, *extra)
    assert out.exit_code == 0, out.output
    assert "custom task: 3 classes, single-label (ce loss, accuracy)" in out.output
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "custom" and results["metric"] == "accuracy" and results["loss"] == "ce"
    splits = results["splits"]
    (fold,) = results["folds"]
    if corpus == "own":
        assert splits == {role: {"split": role, "seeded": False, "clips": n}
                          for role, n in (("train", 18), ("valid", 6), ("test", 6))}
        assert results["clip_seconds"] == 1.2 and results["clip_seconds_from"] == "data.clip_seconds"
        assert results["seeded_split"] is None
    else:
        assert all(s["split"] == "train" and s["seeded"] for s in splits.values())
        assert sum(s["clips"] for s in splits.values()) == 30 and splits["test"]["clips"] >= 1
        assert results["clip_seconds"] == 1.5 and "90th percentile" in results["clip_seconds_from"]
        assert results["seeded_split"] == fractions
    assert fold["selected_by"] == "valid" and 0.0 <= fold["accuracy"] <= 1.0
    info = json.loads((run / "main" / "classifier" / "classifier.json").read_text())
    assert info["task"] == "custom" and info["labels"] == ["chord", "pluck", "speech"] and not info["multi_label"]
    # `maeast evaluate` finds the same test clips again and reproduces the run's metric.
    scored = cli("evaluate", "--checkpoint", run)
    assert scored.exit_code == 0, scored.output
    report = json.loads((run / "evaluation" / "evaluation.json").read_text())
    assert report["task"] == "custom" and report["folds"][0]["clips"] == splits["test"]["clips"]
    assert report["folds"][0]["accuracy"] == pytest.approx(fold["accuracy"])
    assert (run / "evaluation" / "confusion_main.png").is_file()


def test_multi_label_tsv_corpus_trains_with_bce_and_map(sounds, tmp_path):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for split, rows in multi_label_rows(sounds).items():
        manifest(manifests / f"{split}.tsv", rows)
    shards = tmp_path / "shards"
    index = build_shards("tsv", manifests, shards)
    assert index["multi_label"] and index["labels"] == ["chord", "pluck", "speech"]
    corpus = open_corpus(get_task("custom"), shards)
    assert (corpus.task.loss, corpus.task.metric, corpus.carved) == ("bce", "map", ())
    result = finetune(load_finetune_config("finetune_tiny", task="custom", shards=str(shards),
                                           run_dir=str(tmp_path / "run"), overrides=["--schedule.epochs", "2"]))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metric"] == "map" and results["loss"] == "bce" and results["splits"]["test"]["clips"] == 8
    assert 0.0 < result.summary["mean"] <= 1.0 and result.folds[0]["selected_by"] == "valid"
    report = evaluate_run(tmp_path / "run")
    assert report.metric == "map" and report.values == pytest.approx(result.values)
    assert len(report.folds[0].scores["ap"]) == 3


def test_on_a_corpus_with_its_own_splits_custom_is_that_corpus_task(sc_v1, tmp_path):
    """Speech Commands v1 shards (train / valid / test): custom with the recipe's differing knobs set
    runs exactly the speechcommands_v1 task: the same clips, loss, metric and weights at every epoch."""
    root, test_root = sc_v1
    shards = tmp_path / "sc1"
    build_shards("speechcommands", root, shards, options={"version": "1", "test_root": str(test_root)})
    same = ["--data.clip_seconds", "1", "--schedule.epochs", "2", "--optim.clip_grad", "1",
            "--schedule.final_lr_scale", "1", "--head.norm", "none", "--head.projector", "256",
            "--data.balanced", "true"]
    cfgs = {task: load_finetune_config("finetune_tiny", task=task, shards=str(shards), run_dir=str(tmp_path / task),
                                       overrides=same) for task in ("speechcommands_v1", "custom")}
    a, b = ({**to_dict(c), "task": None, "run": {**to_dict(c.run), "dir": None}} for c in cfgs.values())
    assert a == b
    ran = {task: finetune(cfg) for task, cfg in cfgs.items()}
    assert ran["custom"].metric == "accuracy" and ran["custom"].folds[0]["history"] == \
        ran["speechcommands_v1"].folds[0]["history"]
    heads = [(tmp_path / task / "main" / "classifier" / "head.safetensors").read_bytes() for task in cfgs]
    assert heads[0] == heads[1]


def one_line_error(*args) -> str:
    out = cli("finetune", "--task", *args)
    assert out.exit_code == 2 and len(out.output.strip().splitlines()) == 1, out.output
    return out.output


def test_bad_input_is_a_one_line_error(sounds, corpora, tmp_path):
    assert all(name in cli("finetune", "--help").output for name in TASK_NAMES)
    assert "custom" in one_line_error("customs", "--data", corpora["seeded"])
    assert "--data SHARD_DIR" in one_line_error("custom", *TINY)
    assert "task esc50 has its own splits" in one_line_error("esc50", "--data.valid_fraction", "0.2", *TINY)
    # No labels: audio files straight in the root folder, no class subfolders.
    bare = tmp_path / "bare"
    bare.mkdir()
    for kind in CLASSES:
        shutil.copy(sounds / kind / f"{kind[0]}0.wav", bare)
    build_shards("folder", bare, tmp_path / "bare_shards")
    message = one_line_error("custom", "--data", tmp_path / "bare_shards", *TINY)
    assert str(tmp_path / "bare_shards") in message and "no labels" in message and "subfolder per class" in message
    # One class only.
    single = tmp_path / "single"
    shutil.copytree(corpora["flat"] / "speech", single / "speech")
    build_shards("folder", single, tmp_path / "single_shards")
    assert "one class only" in one_line_error("custom", "--data", tmp_path / "single_shards", *TINY)
    # A split without labels (a tsv manifest with no labels column), then a split with some unlabelled clips.
    rows = multi_label_rows(sounds)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    manifest(manifests / "train.tsv", rows["train"])
    manifest(manifests / "test.tsv", [(p, None) for p, _ in rows["test"]])
    build_shards("tsv", manifests, tmp_path / "nolabel_shards")
    assert "split 'test' has no labels" in one_line_error("custom", "--data", tmp_path / "nolabel_shards", *TINY)
    manifest(manifests / "test.tsv", [(p, None if i < 2 else labels) for i, (p, labels) in enumerate(rows["test"])])
    build_shards("tsv", manifests, tmp_path / "some_shards")
    assert "2 of 8 clips have no label" in one_line_error("custom", "--data", tmp_path / "some_shards", *TINY)
    # No test split and nothing to carve it with.
    assert "data.test_fraction is 0" in one_line_error("custom", "--data", corpora["seeded"], "--data.test_fraction",
                                                       "0", *TINY)
    with pytest.raises(MaeastError, match="leaves no training clips"):
        load_finetune_config("finetune_tiny", task="custom", shards=str(corpora["seeded"]),
                             overrides=["--data.valid_fraction", "0.5", "--data.test_fraction", "0.5"])
