"""Engine configs: shipped YAMLs, unknown keys, overrides, the global batch, the generated DeepSpeed config,
the optimizer and the schedule. Nothing here starts a process group."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from maeast.configio import load_yaml, to_dict
from maeast.pretrain.config import PretrainConfig, build_config, load_config, save_config, shipped_configs
from maeast.train.config import accumulation
from maeast.train.ds_config import DEFAULT_ZERO, deepspeed_config, read_zero_json
from maeast.train.optim import build_optimizer, lr_at
from maeast.errors import MaeastError
from maeast.model import MAEAST, make_config

ROOT = Path(__file__).resolve().parents[1]
SEED_NAMES = ("pretrain_patch_random", "pretrain_patch_chunk", "pretrain_frame_random", "pretrain_frame_chunk")


@pytest.mark.parametrize("name", shipped_configs())
def test_every_shipped_yaml_loads_and_round_trips(name, tmp_path):
    cfg = load_config(name)
    assert isinstance(cfg, PretrainConfig)
    save_config(cfg, tmp_path / "config.yaml")
    assert build_config(load_yaml(tmp_path / "config.yaml")) == cfg  # the saved, resolved config reads back equal


def test_the_seed_names_are_shipped_with_the_official_recipe():
    assert set(SEED_NAMES) <= set(shipped_configs())
    for name in SEED_NAMES:
        cfg = load_config(f"{name}_config.yaml")  # the seed's file names are found too
        assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.eps, cfg.optim.weight_decay) == (1e-4, (0.9, 0.98), 1e-6, 0.01)
        assert (cfg.schedule.warmup_steps, cfg.optim.clip_grad, cfg.model.depth, cfg.model.dim) == (32000, 10.0, 12, 768)
        assert cfg.model.mask_type == name.split("_")[-1]
        assert (cfg.model.patch_time, cfg.model.patch_freq) == ((2, 128) if "frame" in name else (16, 16))


def test_unknown_keys_name_themselves(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: tiny\noptim:\n  lrr: 0.1\n")
    with pytest.raises(MaeastError, match=r"optim\.lrr"):
        load_config(bad)
    with pytest.raises(MaeastError, match=r"model\.dept"):
        load_config("pretrain_tiny", ["--model.dept", "3"])
    with pytest.raises(MaeastError, match=r"'trian'"):
        load_config("pretrain_tiny", ["trian.steps=3"])
    with pytest.raises(MaeastError, match="neither a YAML file nor a shipped config"):
        load_config("pretrain_nothing")


def test_overrides_apply_on_top_of_preset_and_yaml():
    cfg = load_config("pretrain_tiny", ["--optim.lr", "3e-4", "model.depth=3", "--data.shards", "[a, b]"])
    assert cfg.optim.lr == 3e-4 and cfg.model.depth == 3 and cfg.data.shards == ["a", "b"]
    assert cfg.model.dim == 64  # the tiny preset's width survives
    small = load_config("pretrain_tiny", ["--model.preset", "small"])
    assert small.model == make_config("small")  # a preset override replaces the YAML's preset
    with pytest.raises(MaeastError, match="optim.lr"):
        load_config("pretrain_tiny", ["--optim.lr", "-1"])


def test_global_batch_fixes_accumulation_for_any_process_count():
    cfg = load_config("pretrain_patch_random")
    assert cfg.optim.global_batch == 160 and cfg.data.batch_size == 5  # 32 max_tokens batches, as 32 official GPUs
    assert [accumulation(cfg.optim.global_batch, cfg.data.batch_size, w) for w in (1, 2, 4, 32)] == [32, 16, 8, 1]
    assert all(accumulation(cfg.optim.global_batch, cfg.data.batch_size, w) * w * cfg.data.batch_size == 160 for w in (1, 2, 4, 8, 16, 32))
    assert cfg.global_batch_seconds == 2800.0  # 32 x max_tokens 1400000 samples at 16 kHz, as fairseq counts them
    fixed = load_config("pretrain_patch_random", ["--data.max_tokens", "null", "--data.batch_size", "8",
                                                  "--optim.global_batch", "256", "--data.max_seconds", "10"])
    assert fixed.global_batch_seconds == 2560.0  # 256 clips of at most 10 s
    with pytest.raises(MaeastError, match="3 processes"):
        accumulation(cfg.optim.global_batch, cfg.data.batch_size, 3)
    with pytest.raises(MaeastError, match="not a multiple of data.batch_size"):
        load_config("pretrain_tiny", ["optim.global_batch=6"])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_launch_jsons_hold_only_zero_knobs_and_batch_comes_from_the_config(stage):
    zero = read_zero_json(ROOT / "launch" / f"ds_zero{stage}.json")
    assert set(zero) <= {"zero_optimization", "bf16"}
    cfg = load_config("pretrain_patch_random")
    ds = deepspeed_config(cfg.optim, cfg.data.batch_size, 4, zero, cuda=False)
    assert ds["zero_optimization"]["stage"] == stage
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (160, 5, 8)
    assert ds["gradient_clipping"] == 10.0
    assert ds["bf16"]["enabled"] is False  # fp32 on CPU
    assert deepspeed_config(cfg.optim, cfg.data.batch_size, 4, zero, cuda=True)["bf16"]["enabled"] is True  # bf16 on GPU
    assert "optimizer" not in ds and "scheduler" not in ds


def test_a_json_that_disagrees_with_the_config_is_an_error():
    cfg = load_config("pretrain_patch_random")
    same = deepspeed_config(cfg.optim, cfg.data.batch_size, 2, {**DEFAULT_ZERO, "train_batch_size": 160}, cuda=False)
    assert same["train_batch_size"] == 160  # repeating our value is allowed
    for extra, pattern in (({"train_batch_size": 512}, "train_batch_size=512"),
                           ({"gradient_accumulation_steps": 1}, "gradient_accumulation_steps"),
                           ({"optimizer": {"type": "Adam"}}, "'optimizer'"),
                           ({"scheduler": {"type": "WarmupLR"}}, "'scheduler'"),
                           ({"fp16": {"enabled": True}}, "fp16"),
                           ({"steps_per_prnt": 1}, "steps_per_prnt"),
                           ({"bf16": {"enabled": True}}, "without a CUDA device")):
        with pytest.raises(MaeastError, match=pattern):
            deepspeed_config(cfg.optim, cfg.data.batch_size, 2, {**DEFAULT_ZERO, **extra}, cuda=False)


def test_schedule_is_linear_warmup_then_polynomial_decay():
    cfg = load_config("pretrain_patch_random")
    peak, s = cfg.optim.lr, cfg.schedule
    assert lr_at(0, peak, s) == pytest.approx(peak / 32000)
    assert lr_at(15999, peak, s) == pytest.approx(peak / 2)
    assert lr_at(31999, peak, s) == pytest.approx(peak)
    assert lr_at(32000, peak, s) == pytest.approx(peak)
    mid = 32000 + (400000 - 32000) // 2
    assert lr_at(mid, peak, s) == pytest.approx(peak / 2)  # power 1: linear decay
    assert lr_at(400000, peak, s) == 0.0
    quad = load_config("pretrain_patch_random", ["schedule.power=2", "schedule.end_lr=1e-6"]).schedule
    assert lr_at(mid, peak, quad) == pytest.approx((peak - 1e-6) * 0.25 + 1e-6)


def test_adamw_has_the_official_hyperparameters_and_no_decay_on_1d_params():
    cfg = load_config("pretrain_tiny")
    model = MAEAST(cfg.model)
    opt = build_optimizer(model, cfg.optim)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    seen = 0
    for group in opt.param_groups:
        seen += len(group["params"])
        assert group["lr"] == cfg.optim.lr
        for p in group["params"]:
            assert group["weight_decay"] == (cfg.optim.weight_decay if p.ndim > 1 else 0.0)
    assert seen == len(list(model.parameters()))


def test_only_the_engine_module_imports_deepspeed():
    importers = []
    for path in (ROOT / "maeast").rglob("*.py"):
        if re.search(r"^\s*(import deepspeed|from deepspeed)", path.read_text(), re.M):
            importers.append(path.relative_to(ROOT).as_posix())
    assert importers == ["maeast/train/engine.py"]


def test_launch_script_takes_the_launchers_local_rank(monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location("launch_pretrain", ROOT / "launch" / "pretrain.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    from maeast.train.distributed import take_local_rank
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    argv = take_local_rank(["--local_rank=1", "--deepspeed_config", "launch/ds_zero2.json", "--config", "pretrain_tiny",
                            "--resume", "--optim.lr", "3e-4"])
    import os
    assert os.environ["LOCAL_RANK"] == "1"
    assert launch.parse(argv) == ("launch/ds_zero2.json", "pretrain_tiny", True, ["--optim.lr", "3e-4"])
    assert launch.main(["--deepspeed_config", "launch/ds_zero2.json"]) == 2  # no --config: one-line error


def test_resolved_config_is_plain_yaml():
    data = to_dict(load_config("pretrain_small"))
    assert set(data) == {"model", "data", "optim", "schedule", "eval", "run"}
    assert "preset" not in data["model"]  # the preset is expanded into fields
    json.dumps(data)


def test_named_random_streams_are_fixed_and_leave_the_global_rng_alone():
    from maeast.streams import RUN_STREAMS, derive_seed
    from maeast.train import rng

    # Changing an id changes every run's numbers (and breaks resuming older runs exactly).
    assert RUN_STREAMS == {"masks": 1, "dropout": 2, "eval_masks": 0x5EED, "head_init": 11, "finetune_dropout": 12,
                           "augment": 13, "data_order": 14}
    assert rng.seed("augment", 7, 3, 5, 1) == derive_seed(7, 13, 3, 5, 1)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with rng.scoped("dropout", 7, 4, 0):
        scoped = torch.nn.functional.dropout(torch.ones(64), 0.5)
    assert torch.equal(torch.get_rng_state(), before)  # dropout's draws did not move the global stream
    torch.manual_seed(rng.seed("dropout", 7, 4, 0))
    assert torch.equal(scoped, torch.nn.functional.dropout(torch.ones(64), 0.5))
    assert rng.generator("masks", 7, 4, 0).initial_seed() == rng.seed("masks", 7, 4, 0)


def test_a_run_folder_of_before_the_renames_reads_under_the_new_names():
    """A config.yaml written before run.save_every counted its unit in its name and before pretraining's data
    section left out the loader keys it never used: read as today's config; the old names given today are
    refused in one line naming the fix."""
    from maeast.configio import to_dict
    today = load_config("pretrain_tiny")
    old = to_dict(today)
    old["run"]["save_every"] = old["run"].pop("save_every_steps")
    old["data"].update(mode="pretrain", backend="stream", clip_seconds=None, random_crop=True, pad_to_longest=False,
                       class_weights=None)
    assert build_config(old, saved=True) == today
    with pytest.raises(MaeastError, match=r"run.save_every is now run.save_every_steps"):
        load_config("pretrain_tiny", ["--run.save_every", "5"])
    with pytest.raises(MaeastError, match=r"data.random_crop is not one of this recipe's .*delete it"):
        load_config("pretrain_tiny", ["--data.random_crop", "false"])
