"""The downstream tasks: what each reads, how it is scored, and its published fine-tuning recipe.

A Task names the corpus its shards must hold (index.json "corpus"), its splits (train, an optional
valid split to select the epoch on, and test; cross-validation tasks test on the held-out `fold` of
their train split), its loss and metric, its clip length, and `recipe`: overrides of FinetuneConfig
that reproduce the published recipe. Layering: FinetuneConfig defaults <- task recipe <- YAML <- the
command line.

Recipes. SSAST (YuanGongND/ssast, src/finetune/*/run_*.sh) for AudioSet-20K, ESC-50 and Speech
Commands v2: its lr, epochs, batch, SpecAugment widths (freqm, timem), mixup, loss and head_lr.
SUPERB as SSAST ran it (src/finetune/superb/*/config*.yaml) for Speech Commands v1, VoxCeleb1 and
IEMOCAP: Adam at a constant 1e-4, gradient clipping 1, 32 clips per step (4 x 8 accumulated for SID
and ER), its total steps turned into epochs of the full corpora. Where ours differ: the learning
rate follows the engine's warmup + linear decay (SSAST decays in steps: x0.85 per epoch for ESC-50
and KS2, x0.5 every 5 epochs for AS-20K), and ESC-50 has mixup 0 because run_esc_patch.sh sets
mixup=0 (turn it on with --augment.mixup 0.5).

`custom` (CUSTOM) is the seventh task: any labelled shard folder given with --data, whatever recipe
packed it. It has no published recipe (FinetuneConfig's own defaults apply); its loss, metric,
splits and clip length are read off the corpus by maeast.finetune.custom.resolve_custom.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from maeast.errors import MaeastError

SSAST_ADAM = {"betas": [0.95, 0.999], "eps": 1e-8, "weight_decay": 5e-7, "clip_grad": 0.0}
SUPERB_ADAM = {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "clip_grad": 1.0}
SUPERB_SCHEDULE = {"warmup_steps": 0, "final_lr_scale": 1.0}  # SUPERB: no scheduler, a constant lr


@dataclass(frozen=True)
class Task:
    name: str
    corpora: tuple[str, ...]
    """index.json "corpus" values this task reads."""
    build: str
    """The command that builds its shards (for error messages)."""
    metric: str
    """"accuracy" or "map" (maeast.finetune.metrics.METRICS)."""
    loss: str
    """"ce" (softmax cross-entropy) or "bce" (per-class sigmoid), maeast.finetune.loop.LOSSES."""
    clip_seconds: float
    """Every clip is cropped (at random in training, from its start in evaluation) or padded to this."""
    train_split: str
    valid_split: str | None
    """Split the epoch is selected on (the best valid metric); None: report the last epoch."""
    test_split: str | None
    """Split to report; None: the held-out fold of the train split (cross-validation)."""
    shards: str
    """Default shard folder."""
    recipe: dict = field(default_factory=dict)
    """FinetuneConfig overrides of the published recipe (sections optim, schedule, data, augment)."""
    source: str = ""
    from_corpus: bool = False
    """True for `custom`: loss, metric, splits and clip length are the corpus's (maeast.finetune.custom),
    the fields above only the template they are resolved from."""

    @property
    def cross_validation(self) -> bool:
        return self.test_split is None


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("audioset", ("audioset",), "maeast shard build audioset --root AUDIOSET --out shards/audioset",
         metric="map", loss="bce", clip_seconds=10.0, train_split="balanced_train", valid_split=None,
         test_split="eval", shards="shards/audioset",
         recipe={"optim": {"lr": 5e-5, "frozen_lr": 1e-3, "global_batch": 12, **SSAST_ADAM},
                 "schedule": {"epochs": 25, "warmup_steps": 0},
                 "augment": {"freq_mask": 48, "time_mask": 192, "mixup": 0.5}},
         source="SSAST src/finetune/audioset/run_as.sh (set=balanced: AS-20K)"),
    Task("esc50", ("esc50", "esc10"), "maeast shard build esc50 --root ESC-50-master --out shards/esc50",
         metric="accuracy", loss="ce", clip_seconds=5.0, train_split="train", valid_split=None, test_split=None,
         shards="shards/esc50",
         recipe={"optim": {"lr": 1e-4, "frozen_lr": 1e-3, "head_lr": 10.0, "global_batch": 48, **SSAST_ADAM},
                 "schedule": {"epochs": 50, "warmup_steps": 0},
                 "augment": {"freq_mask": 24, "time_mask": 96, "mixup": 0.0}},
         source="SSAST src/finetune/esc50/run_esc_patch.sh"),
    Task("speechcommands_v1", ("speechcommands_v1",),
         "maeast shard build speechcommands --root speech_commands_v0.01 --out shards/speechcommands_v1 "
         "-o version=1 -o test_root=speech_commands_test_set_v0.01",
         metric="accuracy", loss="ce", clip_seconds=1.0, train_split="train", valid_split="valid", test_split="test",
         shards="shards/speechcommands_v1",
         recipe={"optim": {"lr": 1e-4, "frozen_lr": 1e-4, "global_batch": 32, **SUPERB_ADAM},
                 "schedule": {"epochs": 12, **SUPERB_SCHEDULE}},  # 20k steps x 32 over ~51k clips
         source="SUPERB KS (SSAST src/finetune/superb/speechcommands_v1/config.yaml)"),
    Task("speechcommands_v2", ("speechcommands_v2",),
         "maeast shard build speechcommands --root speech_commands_v0.02 --out shards/speechcommands_v2",
         metric="accuracy", loss="bce", clip_seconds=1.0, train_split="train", valid_split="valid", test_split="test",
         shards="shards/speechcommands_v2",
         recipe={"optim": {"lr": 2.5e-4, "frozen_lr": 1e-3, "global_batch": 128, **SSAST_ADAM},
                 "schedule": {"epochs": 30, "warmup_steps": 1000},
                 "augment": {"freq_mask": 48, "time_mask": 48, "mixup": 0.6}},
         source="SSAST src/finetune/speechcommands_v2_35/run_sc.sh"),
    Task("voxceleb", ("voxceleb1",), "maeast shard build voxceleb1 --root VoxCeleb1 --out shards/voxceleb1",
         metric="accuracy", loss="ce", clip_seconds=8.0, train_split="train", valid_split="valid", test_split="test",
         shards="shards/voxceleb1",
         recipe={"optim": {"lr": 1e-4, "frozen_lr": 1e-4, "global_batch": 32, **SUPERB_ADAM},
                 "schedule": {"epochs": 9, **SUPERB_SCHEDULE}},  # 40k steps x 32 over ~138k clips
         source="SUPERB SID (SSAST src/finetune/superb/voxceleb/config.yaml; max_timestep 128000 = 8 s)"),
    Task("iemocap", ("iemocap",), "maeast shard build iemocap --root IEMOCAP_full_release --out shards/iemocap",
         metric="accuracy", loss="ce", clip_seconds=8.0, train_split="train", valid_split=None, test_split=None,
         shards="shards/iemocap",
         recipe={"optim": {"lr": 1e-4, "frozen_lr": 1e-4, "global_batch": 32, **SUPERB_ADAM},
                 "schedule": {"epochs": 70, **SUPERB_SCHEDULE}},  # 10k steps x 32 over ~4.4k clips
         source="SUPERB ER (SSAST src/finetune/superb/iemocap/config_er.yaml)"),
]}


CUSTOM = Task("custom", (), "maeast shard build folder --root CLASS_FOLDERS --out SHARDS",
              metric="accuracy", loss="ce", clip_seconds=10.0, train_split="train", valid_split="valid",
              test_split="test", shards="", recipe={}, source="the corpus itself (index.json and its sample JSONs)",
              from_corpus=True)
"""The template of `--task custom`: corpora () = any; clip_seconds is the cap of the corpus-derived length."""

TASK_NAMES: tuple[str, ...] = (*TASKS, CUSTOM.name)


def get_task(name: str) -> Task:
    """The task called `name`; an unknown name is a one-line error listing the valid ones."""
    if name == CUSTOM.name:
        return CUSTOM
    if name not in TASKS:
        raise MaeastError(f"unknown task {name!r}; choose one of: {', '.join(TASK_NAMES)} (custom: any labelled "
                          f"shard folder, given with --data)")
    return TASKS[name]
