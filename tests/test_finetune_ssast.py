"""SSAST's fine-tuning protocols (YuanGongND/ssast src/traintest.py, src/dataloader.py,
src/finetune/esc50/get_esc_result.py) against plain transcriptions of that code: the step schedule's
learning rates, the best epoch over folds, noise and roll on the same draws, and weight averaging;
then tiny end-to-end runs on the ESC-50 tree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from maeast.train.optim import StepDecay, build_schedule, schedule_lr
from maeast.errors import MaeastError
from maeast.finetune import finetune, load_finetune_config
from maeast.finetune.augment import noise_roll
from maeast.finetune.loop import fold_schedule
from maeast.finetune.metrics import best_epoch_over_folds
from maeast.finetune.select import WeightSum, average_window, select_over_folds
from maeast.shards.build import build_shards


# ---- the learning rate ---------------------------------------------------------------------------

def ssast_lrs(lr: float, epochs: int, steps_per_epoch: int, start: int, step: int, decay: float,
              warmup: bool) -> list[float]:
    """The lr of every optimizer step of SSAST's train() (src/traintest.py), its schedule lines transcribed."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([{"params": [param], "lr": lr}], weight_decay=5e-7, betas=(0.95, 0.999))
    lr_list = [lr]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(range(start, 1000, step)), gamma=decay)
    out, global_step = [], 0
    for _ in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            if global_step <= 1000 and global_step % 50 == 0 and warmup:
                for group_id, param_group in enumerate(optimizer.param_groups):
                    param_group["lr"] = (global_step / 1000) * lr_list[group_id]
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            global_step += 1
        scheduler.step()
    return out


def our_lrs(schedule, peak: float, steps: int) -> list[float]:
    """The lr our LambdaLR gives the optimizer at each step, as DeepSpeed steps it."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=peak)
    scheduler = build_schedule(optimizer, peak, schedule)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("task,steps_per_epoch,official", [
    ("esc50", 33, dict(start=6, step=1, decay=0.85, warmup=False)),          # run_esc_patch.sh: 1600 clips / 48
    ("audioset", 40, dict(start=10, step=5, decay=0.5, warmup=False)),       # run_as.sh (passes --warmup False)
    ("speechcommands_v2", 662, dict(start=5, step=1, decay=0.85, warmup=True)),  # run_sc.sh: 84843 // 128
])
def test_step_schedule_gives_the_official_lr_of_every_step(task, steps_per_epoch, official):
    cfg = load_finetune_config("finetune_patch", task=task)
    epochs = cfg.schedule.epochs
    schedule = fold_schedule(cfg, epochs * steps_per_epoch, steps_per_epoch)
    assert isinstance(schedule, StepDecay)
    expected = ssast_lrs(cfg.optim.lr, epochs, steps_per_epoch, official["start"], official["step"],
                         official["decay"], official["warmup"])
    ours = our_lrs(schedule, cfg.optim.lr, epochs * steps_per_epoch)
    assert ours == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert [schedule_lr(s, cfg.optim.lr, schedule) for s in range(len(ours))] == pytest.approx(ours, rel=1e-12)
    per_epoch = expected[::steps_per_epoch]
    if task == "esc50":  # epochs 1-6 at the peak, then x0.85 per epoch
        assert per_epoch[5] == 1e-4 and per_epoch[6] == pytest.approx(0.85e-4) and per_epoch[7] == pytest.approx(0.85 ** 2 * 1e-4)
    if task == "audioset":  # x0.5 after epochs 10, 15 and 20
        assert per_epoch[9] == 5e-5 and per_epoch[10] == pytest.approx(2.5e-5) and per_epoch[24] == pytest.approx(5e-5 / 8)
    if task == "speechcommands_v2":  # the staircase: 0 at step 0, 1/20 of the peak from step 50, the peak from 1000
        assert expected[0] == 0.0 and expected[49] == 0.0 and expected[50] == pytest.approx(2.5e-4 / 20)
        assert expected[1000] == 2.5e-4


# ---- the reported epoch --------------------------------------------------------------------------

def ssast_best_epoch(result_csvs: list[np.ndarray]) -> int:
    """get_esc_result.py: the folds' result.csv averaged, np.argmax of the accuracy column (1-based epoch)."""
    cum_result = np.zeros(result_csvs[0].shape)
    for result in result_csvs:
        cum_result = cum_result + result
    return int(np.argmax((cum_result / len(result_csvs))[:, 0])) + 1


def test_best_epoch_over_folds_is_the_best_fold_mean_not_each_folds_best():
    rng = np.random.default_rng(0)
    for _ in range(50):
        acc = rng.uniform(0.3, 0.9, size=(5, 12)).round(2)  # [fold, epoch], ties included by rounding
        per_fold = [{e + 1: float(a[e]) for e in range(12)} for a in acc]
        epoch, mean = best_epoch_over_folds(per_fold)
        assert epoch == ssast_best_epoch([np.stack([a, np.zeros(12)], axis=1) for a in acc])
        assert mean == pytest.approx(acc[:, epoch - 1].mean())
    # each fold's own best (epochs 1, 2, 3) is not the one reported: the mean is best at epoch 4
    per_fold = [{1: 0.9, 2: 0.1, 3: 0.1, 4: 0.6}, {1: 0.1, 2: 0.9, 3: 0.1, 4: 0.6}, {1: 0.1, 2: 0.1, 3: 0.9, 4: 0.6}]
    assert best_epoch_over_folds(per_fold) == (4, pytest.approx(0.6))
    results = [{"fold": k + 1, "history": [{"epoch": e, "step": 10 * e} for e in f], "epoch": 4, "selected_by": "last",
                "test": {"accuracy": f[4]}, "test_by_epoch": {str(e): {"accuracy": v, "clips": 3} for e, v in f.items()}}
               for k, f in enumerate(per_fold)]
    chosen = select_over_folds(results, "accuracy")
    assert [(r["epoch"], r["step"], r["test"]["accuracy"], r["selected_by"]) for r in chosen] == [(4, 40, 0.6, "fold_mean")] * 3
    with pytest.raises(MaeastError, match="fold 2's result.json has no test scores per epoch"):
        select_over_folds([results[0], {**results[1], "test_by_epoch": None}], "accuracy")
    only_some = [{1: 0.5, 2: 0.9}, {1: 0.6}]  # epoch 2 was not evaluated in every fold
    assert best_epoch_over_folds(only_some)[0] == 1


# ---- noise and roll ------------------------------------------------------------------------------

def ssast_noise(fbank: torch.Tensor, rand, np_rand, np_randint) -> torch.Tensor:
    """src/dataloader.py __getitem__, `if self.noise == True:` with its three random sources passed in."""
    fbank = fbank + rand(fbank.shape[0], fbank.shape[1]) * np_rand() / 10
    fbank = torch.roll(fbank, np_randint(-10, 10), 0)
    return fbank


def test_noise_and_roll_match_ssast_on_the_same_draws(tmp_path):
    from tests.conftest import speak
    from maeast.audio import load_clip
    from maeast.features import fbank
    wave = torch.from_numpy(load_clip(speak("how vexingly quick daft zebras jump", tmp_path / "s.wav"), 16000).waveform)
    feats = fbank(wave, 16000, "mae_ast")[:200]  # [T, F] real speech, raw log-mel
    normalized = (feats - feats.mean()) / (2 * feats.std())
    x = torch.stack([normalized, normalized.flip(0), normalized * 0.5])  # [3, T, F]
    g = torch.Generator().manual_seed(5)
    y, pad = noise_roll(x, None, 1.0, g)
    replay = torch.Generator().manual_seed(5)  # the same draws, in noise_roll's documented order
    noise = torch.rand(x.shape, generator=replay)
    amplitude = torch.rand(3, generator=replay)
    shift = torch.randint(-10, 10, (3,), generator=replay)
    assert shift.abs().max() > 0 and pad is None
    for b in range(3):
        expected = ssast_noise(x[b], lambda t, f: noise[b], lambda: float(amplitude[b]), lambda lo, hi: int(shift[b]))
        assert torch.allclose(y[b], expected, atol=1e-6, rtol=0)
    # raw log-mel: the noise is in units of twice each clip's std, the roll the same
    raw, _ = noise_roll(feats.unsqueeze(0), None, None, torch.Generator().manual_seed(1))
    replay = torch.Generator().manual_seed(1)
    noise, amplitude = torch.rand((1, *feats.shape), generator=replay), torch.rand(1, generator=replay)
    shift = int(torch.randint(-10, 10, (1,), generator=replay))
    unit = 2 * feats.std(unbiased=False)
    assert torch.allclose(raw[0], torch.roll(feats + noise[0] * amplitude / 10 * unit, shift, 0), atol=1e-4)
    # padding rolls with its frames
    mask = torch.zeros(3, x.shape[1], dtype=torch.bool)
    mask[:, -20:] = True
    _, rolled = noise_roll(x, mask, 1.0, torch.Generator().manual_seed(5))
    assert all(torch.equal(rolled[b], torch.roll(mask[b], int(shift_b), 0))
               for b, shift_b in enumerate(torch.randint(-10, 10, (3,), generator=_after_noise(x, 5))))


def _after_noise(x: torch.Tensor, seed: int) -> torch.Generator:
    g = torch.Generator().manual_seed(seed)
    torch.rand(x.shape, generator=g)
    torch.rand(x.shape[0], generator=g)
    return g


# ---- weight averaging ----------------------------------------------------------------------------

def test_weight_sum_is_the_mean_of_the_added_weights(tmp_path):
    states = [{"w": torch.randn(4, 3), "n": torch.tensor(k)} for k in range(4)]
    total = WeightSum()
    for state in states[1:]:
        total.add(state)
    total.save(tmp_path)
    again = WeightSum.load(tmp_path)
    mean = again.mean()
    assert again.count == 3 and torch.allclose(mean["w"], torch.stack([s["w"] for s in states[1:]]).mean(0))
    assert mean["n"] == 3  # a counter keeps its latest value
    assert average_window([6, 25], 25) == (6, 25) and average_window([6, 25], 10) == (6, 10)
    assert average_window([6, 25], 5) is None and average_window(None, 25) is None


# ---- end to end on the ESC-50 tree ---------------------------------------------------------------

@pytest.fixture(scope="module")
def esc_shards(esc50, tmp_path_factory):  # noqa: F811  (a fixture of tests.official_trees)
    out = tmp_path_factory.mktemp("ssast_esc") / "esc50"
    build_shards("esc50", esc50, out)
    return out


def tiny_esc(shards: Path, run: Path, *overrides: str, **flags):
    return load_finetune_config("finetune_tiny", task="esc50", shards=str(shards), run_dir=str(run),
                                overrides=["--data.clip_seconds", "2", *overrides], **flags)


def test_esc50_reports_every_fold_at_the_best_mean_epoch(esc_shards, tmp_path):
    cfg = tiny_esc(esc_shards, tmp_path / "run", "--schedule.epochs", "3", "--schedule.decay_start", "1",
                   "--optim.lr", "0.02")
    assert cfg.run.select == "fold_mean" and cfg.augment.noise and cfg.schedule.name == "step"
    result = finetune(cfg)
    per_fold = [{int(e): s["accuracy"] for e, s in f["test_by_epoch"].items()} for f in result.folds]
    epoch, _ = best_epoch_over_folds(per_fold)
    assert all(f["epoch"] == epoch and f["selected_by"] == "fold_mean" for f in result.folds)
    assert result.values == [f[epoch] for f in per_fold]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [f["epoch"] for f in saved["folds"]] == [epoch] * 5
    assert saved["mean"] == pytest.approx(float(np.mean([f[epoch] for f in per_fold])))
    fold1 = json.loads((tmp_path / "run" / "fold1" / "result.json").read_text())
    assert fold1["epoch"] == epoch and fold1["test"] == fold1["test_by_epoch"][str(epoch)]
    classifier = json.loads((tmp_path / "run" / "fold1" / "classifier" / "classifier.json").read_text())
    assert (classifier["epoch"], classifier["selected_by"]) == (3, "last")  # what the folder holds
    # the step schedule in the log: 0.02 in epoch 1, then the recipe's x0.85 per epoch (decay_start 1 here)
    lrs = {}
    for line in (tmp_path / "run" / "fold1" / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "train":
            lrs.setdefault(record["epoch"], set()).add(round(record["lr"], 12))
    assert lrs == {1: {0.02}, 2: {0.017}, 3: {0.01445}}, lrs


def test_weight_averaging_exports_the_mean_of_the_epochs_weights(esc_shards, tmp_path):
    run = tmp_path / "wa"
    result = finetune(tiny_esc(esc_shards, run, "--schedule.epochs", "3", "--run.average_epochs", "[2, 3]",
                               "--run.keep", "3", "--optim.lr", "0.01", folds=[2]))
    (fold,) = result.folds
    assert fold["selected_by"] == "average" and fold["averaged"] == [2, 3]
    steps = sorted((run / "fold2" / "checkpoints").glob("step_*"))
    assert len(steps) == 3

    def module_state(folder: Path) -> dict:
        files = list(folder.glob("*model_states.pt"))
        return torch.load(files[0], map_location="cpu", weights_only=False)["module"]

    epoch2, epoch3 = module_state(steps[1]), module_state(steps[2])
    encoder = load_file(str(run / "fold2" / "classifier" / "encoder.safetensors"))
    head = load_file(str(run / "fold2" / "classifier" / "head.safetensors"))
    exported = {**{f"encoder.{k}": v for k, v in encoder.items()}, **{f"head.{k}": v for k, v in head.items()}}
    floats = [k for k, v in epoch3.items() if v.is_floating_point() and k in exported]
    assert len(floats) > 10
    moved = 0
    for k in floats:
        mean = (epoch2[k].float() + epoch3[k].float()) / 2
        # fp32 on the CPU; on CUDA the checkpoints' module weights are bf16 copies of the fp32 master weights
        tol = 1e-6 if epoch3[k].dtype == torch.float32 else 2 ** -7 * float(mean.abs().max()) + 1e-6
        assert torch.allclose(exported[k].float(), mean, atol=tol), k
        moved += not torch.equal(epoch2[k], epoch3[k])
    assert moved > 5  # the two epochs differ, so the mean is neither
    sums = WeightSum.load(steps[2])
    assert sums.count == 2
