"""maeast.artifacts: one path rule for every saved model (encoder exports, whole models, classifiers), the
features recorded with them, and the random initial encoder."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import maeast
from maeast.artifacts import (classifier_folders, features_of, features_record, initial_encoder, latest_checkpoint,
                              load_classifier, load_model, locate, read_encoder, write_classifier, write_encoder,
                              write_model)
from maeast.errors import MaeastError
from maeast.features import get_config
from maeast.model import MAEAST, Classifier, Encoder, Head, make_config

STATS = get_config("ssast").with_stats(-6.5, 3.25)  # a corpus's statistics, as `maeast shard stats` gives them


def save(folder, seed: int, kinds=("encoder", "model"), state: bool = False, fbank=STATS):
    """A tiny MAE-AST's files in folder (state: a complete checkpoint's state_rank0.pt too); its weights."""
    torch.manual_seed(seed)
    model = MAEAST(make_config("tiny"))
    meta = {"model": model.cfg.to_dict(), "features": features_record(fbank),
            "pretraining": {"step": seed, "samples": 0, "run_dir": None, "shards": [], "max_seconds": 1.0}}
    folder.mkdir(parents=True)
    if "encoder" in kinds:
        write_encoder(model.state_dict(), meta, folder)
    if "model" in kinds:
        write_model(model.state_dict(), meta, folder)
    if state:
        (folder / "state_rank0.pt").write_bytes(b"")
    return model.state_dict()


@pytest.fixture
def run(tmp_path):
    """A pretraining run: checkpoints step 2 and 4 (latest), a half-written step 6, and RUN/encoder (step 4)."""
    root = tmp_path / "pre"
    save(root / "checkpoints" / "step_00000002", 2, state=True)
    save(root / "checkpoints" / "step_00000004", 4, state=True)
    save(root / "checkpoints" / "step_00000006", 6)  # no state_rank0.pt: not complete
    (root / "checkpoints" / "latest").write_text("step_00000004")
    shutil.copytree(root / "checkpoints" / "step_00000004", root / "encoder",
                    ignore=lambda d, names: [n for n in names if not n.startswith("encoder.")])
    return root


def test_pretraining_run_folders(run):
    ckpt = run / "checkpoints"
    assert locate(run, "encoder") == run / "encoder"
    assert locate(run, "model") == ckpt / "step_00000004"  # RUN/encoder holds no model: the latest checkpoint
    for path in (run / "encoder", run / "encoder" / "encoder.json", run / "encoder" / "encoder.safetensors"):
        assert locate(path, "encoder") == run / "encoder"
    for path in (ckpt / "step_00000002", ckpt / "step_00000002" / "model.json"):
        assert locate(path, "model") == locate(path, "encoder") == ckpt / "step_00000002"
    encoder, info = read_encoder(run)
    assert info["pretraining"]["step"] == 4 and not encoder.training
    model, meta = load_model(run)
    assert meta["pretraining"]["step"] == 4 and torch.equal(model.encoder.proj.weight, encoder.proj.weight)
    (ckpt / "latest").write_text("step_00000006")  # names an incomplete checkpoint: the newest complete one
    assert latest_checkpoint(run) == locate(run, "model") == ckpt / "step_00000004"
    (ckpt / "latest").write_text("step_00000002")
    assert locate(run, "model") == ckpt / "step_00000002"
    shutil.rmtree(run / "encoder")  # a run still training: its latest checkpoint's encoder
    assert locate(run, "encoder") == ckpt / "step_00000002"
    state, cfg, info = initial_encoder(str(run), make_config("base"), 0)
    assert cfg.dim == 64 and info["pretraining"]["step"] == 2
    assert all(torch.equal(v, read_encoder(ckpt / "step_00000002")[0].state_dict()[k]) for k, v in state.items())


def test_converted_folder_holds_both(tmp_path):
    """`maeast convert-official` writes an encoder export and the whole model into one folder."""
    folder = tmp_path / "converted"
    weights = save(folder, 1)
    assert locate(folder, "encoder") == locate(folder, "model") == folder
    model, _ = load_model(folder / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    enc = maeast.load_encoder(folder)
    assert enc.features == STATS  # the recorded statistics, not the preset's AudioSet figures


def classifier(folder, seed: int, fbank=STATS, fold: int | None = 1) -> dict:
    torch.manual_seed(seed)
    encoder = Encoder(make_config("tiny"))
    head = Head(1, encoder.cfg.dim, 3, "layer")
    info = {"task": "esc50", "labels": ["a", "b", "c"], "head": {"layers": 1, "norm": "layer", "weighted": False},
            "fold": fold}
    write_classifier(folder, encoder.state_dict(), head.state_dict(), encoder.cfg, fbank, {"step": seed}, info)
    return info


def test_classifiers_of_a_finetuning_run(tmp_path):
    ft = tmp_path / "ft"
    info = classifier(ft / "fold1" / "classifier", 1)
    classifier(ft / "fold2" / "classifier", 2, fold=2)
    shutil.copytree(ft / "fold1" / "classifier", ft / "fold1" / "checkpoints" / "step_00000003" / "best")
    assert json.loads((ft / "fold1" / "classifier" / "classifier.json").read_text()) == {
        "format": "maeast-classifier/1", "fbank": "ssast", **info}
    for path in (ft / "fold1", ft / "fold1" / "classifier", ft / "fold1" / "classifier" / "head.safetensors"):
        assert locate(path, "classifier") == locate(path, "encoder") == ft / "fold1" / "classifier"
    model, loaded = load_classifier(ft / "fold1")
    assert isinstance(model, Classifier) and not model.training and loaded["fold"] == 1
    assert features_of(loaded) == STATS == features_of(read_encoder(ft / "fold1")[1])
    assert classifier_folders(ft) == [ft / "fold1" / "classifier", ft / "fold2" / "classifier"]
    assert classifier_folders(ft / "fold2") == [ft / "fold2" / "classifier"]
    with pytest.raises(MaeastError, match=r"holds 2 classifiers \(fold1/classifier, fold2/classifier\); give one"):
        load_classifier(ft)
    best = ft / "fold1" / "checkpoints" / "step_00000003" / "best"
    assert locate(best, "classifier") == best
    main = tmp_path / "custom"  # a run without folds: main/classifier
    classifier(main / "main" / "classifier", 3, fbank=get_config("mae_ast"), fold=None)
    assert classifier_folders(main) == [main / "main" / "classifier"]
    assert features_of(load_classifier(main)[1]) == get_config("mae_ast")
    assert maeast.load_encoder(main).features == get_config("mae_ast")


def test_one_line_errors(run, tmp_path):
    with pytest.raises(MaeastError, match="checkpoint .*nowhere not found; give RUN/encoder"):
        read_encoder(tmp_path / "nowhere")
    with pytest.raises(MaeastError, match="no encoder.safetensors \\+ encoder.json there; give RUN/encoder"):
        initial_encoder(str(tmp_path), make_config("tiny"), 0)
    with pytest.raises(MaeastError, match="no model.safetensors \\+ model.json there; give a run folder"):
        load_model(run / "encoder")
    with pytest.raises(MaeastError, match="no head.safetensors \\+ classifier.json there; give a `maeast finetune`"):
        load_classifier(run)
    info = json.loads((run / "encoder" / "encoder.json").read_text())
    (run / "encoder" / "encoder.json").write_text(json.dumps({**info, "format": "other/1"}))
    with pytest.raises(MaeastError, match="encoder.json is not a maeast-encoder/1 file \\(format 'other/1'\\)"):
        read_encoder(run)


def test_random_initial_encoder_is_seeded():
    cfg = make_config("tiny")
    state, got_cfg, info = initial_encoder(None, cfg, 5)
    torch.manual_seed(5)
    expected = Encoder(cfg).state_dict()
    assert got_cfg is cfg and info == {} and all(torch.equal(state[k], v) for k, v in expected.items())
