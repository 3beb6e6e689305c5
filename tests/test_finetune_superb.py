"""The SUPERB protocols (KS1, SID, ER as MAE-AST ran them; the frozen benchmark protocol).

The featurizer's layer weights start equal and learn; SUPERB's head is Linear(D->256) -> mean pool
-> Linear; ER's dev clips come from the training sessions but are never trained on, and the reported
score is the best-dev checkpoint's; whole-clip evaluation sees every frame of a long clip with the
padding masked; the class-balanced sampler balances; --freeze-encoder means the SUPERB protocol.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from maeast.features import get_config
from maeast.finetune import evaluate_run, finetune, load_finetune_config
from maeast.loaders import StreamConfig
from maeast.finetune.data import Selection, class_weights, make_loader, open_corpus, scan, selections
from maeast.finetune.sources import CacheSource
from maeast.finetune.cache import Pooled
from maeast.finetune.tasks import get_task
from maeast.finetune.utterances import WholeClips
from maeast.model import Encoder, make_config
from maeast.model.heads import (FROZEN_PROTOCOLS, Classifier, head_from_record, head_record, make_head, mean_pool,
                                pooled_layers)
from maeast.shards.build import build_shards
from tests.conftest import build, make_corpus, sox


@pytest.fixture(scope="module")
def shards(iemocap, voxceleb1, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("superb_shards")
    build_shards("iemocap", iemocap, out / "iemocap")
    build_shards("voxceleb1", voxceleb1, out / "vox")
    return out


@pytest.fixture(scope="module")
def lengths_corpus(tmp_path_factory) -> Path:
    """Speech and music clips of 0.3-3.5 s and one long spoken clip (about 12 s), in small shards."""
    root = make_corpus(tmp_path_factory.mktemp("lengths") / "corpus", speech=4, music=3, short=3)
    parts = sorted((root / "speech").glob("s*.wav"))
    sox(*parts, *parts[:2], root / "speech" / "long.wav")
    out = root.parent / "shards"
    build(root, out, shard_mb=0.1)
    return out


@pytest.fixture(scope="module")
def skewed_corpus(tmp_path_factory) -> Path:
    """Ten spoken clips against two plucked chords."""
    root = make_corpus(tmp_path_factory.mktemp("skewed") / "corpus", speech=6, music=2, short=4)
    out = root.parent / "shards"
    build(root, out, shard_mb=0.1)
    return out


def tiny(task: str, data: Path, run: Path, *overrides: str, **flags):
    return load_finetune_config("finetune_tiny", task=task, shards=str(data), run_dir=str(run),
                                overrides=list(overrides), **flags)


# ---- the head and the featurizer ---------------------------------------------------------------

def test_superb_head_is_projector_mean_pool_linear_on_equal_layer_weights():
    torch.manual_seed(0)
    encoder = Encoder(make_config("tiny"))  # 2 layers at 64
    head = make_head(FROZEN_PROTOCOLS["superb"], encoder, classes=5)
    shapes = {name: tuple(p.shape) for name, p in head.named_parameters()}
    assert shapes == {"layer_weights": (2,), "projector.weight": (256, 64), "projector.bias": (256,),
                      "linear.weight": (5, 256), "linear.bias": (5,)}  # no norm parameters
    assert torch.equal(head.layer_weights, torch.zeros(2))  # softmax: 1/2 each
    tokens = torch.randn(3, 2, 7, 64)  # [B, L, N, D]
    pad = torch.arange(7)[None, :] >= torch.tensor([[7], [4], [1]])  # [B, N]
    # s3prl's order: weighted sum of the frames, projector on every frame, mean over the real frames, linear
    frames = tokens.mean(dim=1)  # equal weights
    projected = head.projector(frames)  # [B, N, 256]
    keep = (~pad).float().unsqueeze(-1)
    expected = head.linear((projected * keep).sum(dim=1) / keep.sum(dim=1))
    assert torch.allclose(head(mean_pool(tokens, pad)), expected, atol=1e-5)
    probe = make_head(FROZEN_PROTOCOLS["linear_probe"], encoder, classes=5)
    assert probe.layer_weights is None and probe.projector is None and probe.linear.in_features == 64
    assert isinstance(probe.norm, torch.nn.BatchNorm1d) and not probe.norm.affine


def test_stats_head_reads_every_layers_mean_and_std_side_by_side_as_the_classifier_pools():
    torch.manual_seed(0)
    encoder = Encoder(make_config("tiny")).eval()  # 2 layers at 64
    head = make_head(FROZEN_PROTOCOLS["stats"], encoder, classes=5).eval()
    assert head.layer_weights is None and head.projector is None and head.linear.in_features == 2 * 2 * 64
    assert isinstance(head.norm, torch.nn.BatchNorm1d) and not head.norm.affine
    features = torch.randn(3, 48, 128)
    pad = torch.arange(48)[None, :] >= torch.tensor([[48], [32], [16]])  # [B, T]: 24, 16 and 8 real 16x16 patches
    pooled = pooled_layers(encoder, features, pad, weighted=True, stats=True)  # [B, L, 2D]
    assert pooled.shape == (3, 2, 128)
    for i, frames in enumerate((48, 32, 16)):  # each clip alone: the mean and std (divisor n) of its real tokens
        layers = torch.stack(encoder(features[i:i + 1, :frames], None, layer_results=True).layers, dim=1)[0]  # [L, N, D]
        expected = torch.cat([layers.mean(dim=1), layers.std(dim=1, correction=0)], dim=-1)
        assert torch.allclose(pooled[i], expected, atol=1e-4)
    classifier = Classifier(encoder, head, weighted=True)  # a whole forward pools as the cache does
    assert torch.allclose(classifier(features, pad), head(pooled), atol=1e-5)
    record = head_record(FROZEN_PROTOCOLS["stats"], encoder, "stats")
    again = head_from_record(record, encoder.cfg.dim, classes=5)
    again.load_state_dict(head.state_dict())
    assert torch.allclose(again.eval()(pooled), head(pooled)) and again.stats and again.concat


def test_layer_weights_learn():
    torch.manual_seed(0)
    encoder = Encoder(make_config("tiny")).eval()
    head = make_head(FROZEN_PROTOCOLS["superb"], encoder, classes=2)
    features = torch.randn(16, 40, 128)
    labels = torch.arange(16) % 2
    features[labels == 1] += 1.0
    pooled = pooled_layers(encoder, features, None, weighted=True).detach()  # [16, 2, 64]
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(pooled), labels).backward()
        optimizer.step()
    assert not torch.allclose(head.layer_weights.softmax(0), torch.full((2,), 0.5))


# ---- whole clips ---------------------------------------------------------------------------------

def test_whole_clip_batches_see_every_frame_with_the_padding_masked(lengths_corpus):
    corpus = open_corpus(get_task("custom"), lengths_corpus)
    preset = get_config("mae_ast")
    reader = WholeClips(corpus, Selection("train"), preset, batch_size=4, max_seconds=8.0,
                        stream=StreamConfig(num_workers=0, on_error="fail"))
    batches = list(reader)
    keys = [k for b in batches for k in b.keys]
    assert sorted(keys) == sorted(scan(corpus.dir, "train")) and len(keys) == 11
    long_key = next(k for k in keys if k.endswith("long"))
    samples = int(scan(corpus.dir, "train")[long_key]["num_samples"])
    assert samples / 16000 > 10.0
    # the streaming loader, its crop as long as the clip: every frame of it, as a reference
    reference = make_loader(corpus, Selection("train"), train=False, batch_size=16, clip_seconds=samples / 16000,
                            fbank=preset, seed=0, shuffle_buffer=0, epoch_batches=None,
                            stream=StreamConfig(num_workers=0, on_error="fail"))
    whole = next(b.features[b.keys.index(long_key)] for b in reference if long_key in b.keys)  # [T, F]
    for batch in batches:
        frames = batch.features.shape[1]
        real = frames if batch.padding_mask is None else (~batch.padding_mask).sum(dim=1)
        assert len(batch) == 1 or len(batch) * frames * 0.01 <= 8.0 + 0.05  # the padded-audio cap
        if long_key in batch.keys:
            assert len(batch) == 1  # longer than the cap: alone
            assert frames == preset.num_frames(samples) == whole.shape[0]
            assert torch.allclose(batch.features[0], whole, atol=1e-4) and batch.features[0, -1].any()
        if batch.padding_mask is not None:  # each clip's frames, then zeros that the mask covers
            for i in range(len(batch)):
                assert not batch.features[i, int(real[i]):].any()
    mixed = next(b for b in batches if b.padding_mask is not None and len(b) > 1)
    encoder = Encoder(make_config("tiny")).eval()
    together = pooled_layers(encoder, mixed.features, mixed.padding_mask, weighted=True)
    for i in range(len(mixed)):
        n = int((~mixed.padding_mask[i]).sum())
        alone = pooled_layers(encoder, mixed.features[i:i + 1, :n], None, weighted=True)
        assert torch.allclose(together[i], alone[0], atol=1e-4)


# ---- the class-balanced sampler -----------------------------------------------------------------

@pytest.mark.slow
def test_class_balanced_draws_are_balanced(skewed_corpus):
    corpus = open_corpus(get_task("custom"), skewed_corpus, balanced=True)
    selection = Selection("train")  # every clip of the split
    counts = Counter(corpus.label_of.values())
    assert counts[corpus.labels.index("speech")] == 10 and counts[corpus.labels.index("music")] == 2
    weights = class_weights(corpus, selection)
    assert weights[corpus.labels.index("music")] == pytest.approx(12 / (2 * 2))  # N / (C n_c)
    # The stream: each clip repeated Poisson(weight) times per pass.
    loader = make_loader(corpus, selection, train=True, batch_size=4, clip_seconds=0.5, fbank="mae_ast", seed=1,
                         shuffle_buffer=50, epoch_batches=60,
                         stream=StreamConfig(num_workers=0, on_error="fail"), balanced=True)
    drawn = Counter(int(label) for batch in loader for label in batch.labels)
    total = sum(drawn.values())  # about 4 x 60 (a pass's last batch may be short)
    assert total > 180 and all(abs(n / total - 0.5) < 0.12 for n in drawn.values()), drawn
    plain = make_loader(corpus, selection, train=True, batch_size=4, clip_seconds=0.5, fbank="mae_ast", seed=1,
                        shuffle_buffer=50, epoch_batches=60,
                        stream=StreamConfig(num_workers=0, on_error="fail"))
    drawn = Counter(int(label) for batch in plain for label in batch.labels)
    assert drawn[corpus.labels.index("music")] / sum(drawn.values()) < 0.3  # without: about 2 in 12
    # The feature cache: draws with replacement by weight.
    labels = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    pooled = Pooled([str(i) for i in range(100)], torch.zeros(100, 1, 4), labels)
    w = torch.tensor([100 / (3 * 90), 100 / (3 * 9), 100 / (3 * 1)])[labels]
    source = CacheSource(pooled, micro=10, world=1, rank=0, seed=3, device=torch.device("cpu"), weights=w)
    seen = Counter(int(y) for e in range(20) for item in source.epoch(e) for y in item.labels)
    assert len(source) == 10 and all(abs(n / 2000 - 1 / 3) < 0.05 for n in seen.values()), seen
    # run.eval_steps: epochs of a fixed number of batches, the draws running on across them (two ranks share them)
    fixed = [CacheSource(pooled, micro=10, world=2, rank=r, seed=3, device=torch.device("cpu"), batches=3) for r in (0, 1)]
    rows = [[int(k) for e in range(2) for item in source.epoch(e) for k in item.keys] for source in fixed]
    assert len(fixed[0]) == 3 and len(rows[0]) == len(rows[1]) == 60
    interleaved = [k for b in range(6) for r in (0, 1) for k in rows[r][10 * b:10 * b + 10]]
    assert interleaved == fixed[0].draws(0, 120).tolist()  # passes of 100: every clip once in 0-99
    assert sorted(interleaved[:100]) == list(range(100))


# ---- ER: the dev split, the best-dev checkpoint, steps ----------------------------------------------

def test_er_dev_comes_from_the_training_sessions_and_picks_the_reported_checkpoint(shards, tmp_path):
    corpus = open_corpus(get_task("iemocap"), shards / "iemocap")
    assert corpus.carved == ("valid",)
    assert corpus.longest == max(m["num_samples"] / 16000 for m in scan(corpus.dir, "train").values())
    keys = list(corpus.fold_of)
    dev = [k for k in keys if corpus.part_of[k] == "valid"]
    assert 0 < len(dev) < len(keys) / 2
    for fold in corpus.folds:
        picks = selections(corpus, fold)
        train = [k for k in keys if picks["train"].keeps(k, corpus)]
        valid = [k for k in keys if picks["valid"].keeps(k, corpus)]
        test = [k for k in keys if picks["test"].keeps(k, corpus)]
        assert valid and not set(valid) & set(train) and not set(valid) & set(test)
        assert all(corpus.fold_of[k] != fold for k in valid + train)  # the training sessions' clips
        assert sorted(train + valid + test) == sorted(keys)
    cfg = tiny("iemocap", shards / "iemocap", tmp_path / "er", "--schedule.steps", "7", "--run.eval_steps", "2",
               "--optim.lr", "3e-3", folds=[2])
    assert cfg.clip_seconds is None and cfg.data.clip_seconds is None  # no crop
    result = finetune(cfg)
    (fold,) = result.folds
    assert [h["step"] for h in fold["history"]] == [2, 4, 6, 7] and fold["selected_by"] == "valid"
    best = max(fold["history"], key=lambda h: (h["valid"], -h["valid_loss"], -h["step"]))  # ties: the lower loss
    assert (fold["step"], fold["test"]["accuracy"]) == (best["step"], best["test"])
    assert fold["choice"]["epoch"] == best["epoch"] and best["epoch"] in fold["choice"]["tied"]
    saved = json.loads((tmp_path / "er" / "results.json").read_text())
    assert saved["eval_whole"] and saved["clip_seconds"] == pytest.approx(corpus.longest)
    assert evaluate_run(tmp_path / "er").values == pytest.approx([best["test"]])  # the exported model is that one
    from maeast.cli import app
    from maeast.cli.finetune import register
    if "evaluate" not in {c.name for c in app.registered_commands}:
        register(app)
    small = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "er"), "--max-seconds", "0.6"])
    assert small.exit_code == 0, small.output  # every clip alone or nearly: the same figure
    assert json.loads((tmp_path / "er" / "evaluation" / "evaluation.json").read_text())["mean"] == \
        pytest.approx(best["test"])
    bad = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "er"), "--max-seconds", "0"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1


# ---- the frozen protocol ----------------------------------------------------------------------------

def test_freeze_encoder_is_the_superb_protocol_and_the_probe_keeps_its_name(shards, tmp_path):
    from maeast.cli import app
    from maeast.cli.finetune import register
    if "finetune" not in {c.name for c in app.registered_commands}:
        register(app)
    base = ["finetune", "--task", "voxceleb", "--data", str(shards / "vox"), "--config", "finetune_tiny",
            "--freeze-encoder", "--data.clip_seconds", "2", "--schedule.epochs", "3", "--optim.frozen_lr", "0.05"]
    out = CliRunner().invoke(app, [*base, "--run.dir", str(tmp_path / "superb")])
    assert out.exit_code == 0, out.output
    assert "voxceleb (frozen, superb, random init)" in out.output
    info = json.loads((tmp_path / "superb" / "main" / "classifier" / "classifier.json").read_text())
    assert info["head"] == {"layers": 2, "weighted": True, "norm": "none", "projector": 256, "protocol": "superb",
                            "stats": False, "concat": False}
    head = load_file(str(tmp_path / "superb" / "main" / "classifier" / "head.safetensors"))
    assert not torch.equal(head["layer_weights"], torch.zeros(2))  # trained from equal weights
    assert json.loads((tmp_path / "superb" / "results.json").read_text())["protocol"] == "superb"
    probe = CliRunner().invoke(app, [*base, "--run.dir", str(tmp_path / "probe"), "--head.frozen", "linear_probe"])
    assert probe.exit_code == 0, probe.output
    info = json.loads((tmp_path / "probe" / "main" / "classifier" / "classifier.json").read_text())
    assert info["head"] == {"layers": 1, "weighted": False, "norm": "batch", "projector": 0,
                            "protocol": "linear_probe", "stats": False, "concat": False}
    assert "norm.running_mean" in load_file(str(tmp_path / "probe" / "main" / "classifier" / "head.safetensors"))
    assert evaluate_run(tmp_path / "probe").values == pytest.approx(
        [json.loads((tmp_path / "probe" / "main" / "result.json").read_text())["test"]["accuracy"]])
    bad = CliRunner().invoke(app, [*base, "--run.dir", str(tmp_path / "x"), "--head.frozen", "probe"])
    assert bad.exit_code == 2 and "linear_probe" in bad.output and len(bad.output.strip().splitlines()) == 1
    # A frozen run saved before head.frozen existed trained the linear probe: resuming it under today's default is refused.
    saved = tmp_path / "probe" / "config.yaml"
    saved.write_text("".join(line for line in saved.read_text().splitlines(True) if not line.startswith("  frozen:")))
    old = CliRunner().invoke(app, [*base, "--run.dir", str(tmp_path / "probe"), "--resume"])
    assert old.exit_code == 2 and "head.frozen is 'superb', the run has 'linear_probe'" in old.output
    again = CliRunner().invoke(app, [*base, "--run.dir", str(tmp_path / "probe"), "--resume", "--head.frozen", "linear_probe"])
    assert again.exit_code == 0, again.output


def test_superb_recipes():
    ks1 = load_finetune_config("finetune_patch", task="speechcommands_v1")
    assert (ks1.optim.lr, ks1.optim.global_batch, ks1.schedule.steps, ks1.data.balanced) == (1e-5, 512, 10000, True)
    assert (ks1.head_spec.weighted, ks1.head_spec.projector, ks1.head_spec.norm) == (False, 256, "none")
    sid = load_finetune_config("finetune_patch", task="voxceleb")
    assert (sid.data.batch_size, sid.optim.global_batch, sid.schedule.steps, sid.head_spec.weighted) == (4, 16, 60000, True)
    assert get_task("voxceleb").eval_whole and get_task("voxceleb").clip_seconds == 8.0
    er = load_finetune_config("finetune_patch", task="iemocap")
    assert (er.data.batch_size, er.optim.global_batch, er.schedule.steps, er.head_spec.weighted) == (6, 30, 3000, False)
    assert get_task("iemocap").dev_fraction == 0.2 and get_task("iemocap").clip_seconds is None
    assert all(load_finetune_config("finetune_patch", task=t, freeze_encoder=True).protocol == "superb"
               for t in ("speechcommands_v1", "voxceleb", "iemocap", "esc50"))


def test_a_run_saved_before_a_key_existed_reads_back_as_it_ran(tmp_path):
    """saved_config: a key missing from a run's config.yaml takes the dataclass default (the behaviour of
    its day), not today's recipe: an old ER run had no projector and counted epochs."""
    from maeast.finetune.config import save_finetune_config
    from maeast.finetune.loop import saved_config
    cfg = load_finetune_config("finetune_patch", task="iemocap", shards=str(tmp_path), run_dir=str(tmp_path / "run"))
    save_finetune_config(cfg, tmp_path / "config.yaml")
    assert saved_config(tmp_path) == cfg
    text = (tmp_path / "config.yaml").read_text()
    old = "".join(line for line in text.splitlines(True) if not line.startswith(("  projector:", "  steps:")))
    (tmp_path / "config.yaml").write_text(old)
    then = saved_config(tmp_path)
    assert (then.head.projector, then.schedule.steps) == (0, None) and then.optim.lr == cfg.optim.lr

