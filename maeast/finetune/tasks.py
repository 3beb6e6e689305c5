"""The downstream tasks: what each reads, how it is scored, and its published fine-tuning recipe.

A Task names the corpus its shards must hold (index.json "corpus"), its splits (train, an optional
valid split to select the epoch on, and test; cross-validation tasks test on the held-out `fold` of
their train split), its loss and metric, its clip length, and `recipe`: overrides of FinetuneConfig
that reproduce the published recipe. Layering: FinetuneConfig defaults <- task recipe <- YAML <- the
command line.

Recipes. SSAST (YuanGongND/ssast at a1a3eec) for AudioSet-20K (audioset), ESC-50 (esc50) and Speech
Commands v2 (speechcommands_v2): the values of src/finetune/audioset/run_as.sh (set=balanced),
src/finetune/esc50/run_esc_patch.sh (run_esc_frame.sh sets the same, with frame patches) and
src/finetune/speechcommands_v2_35/run_sc.sh, as src/run.py and src/traintest.py use them:
  - lr, n-epochs, batch_size, freqm, timem, mixup, head_lr (1 in all three: the head at the encoder's lr),
    --loss (CE for ESC-50, BCE for AS-20K and KS2) and --metrics;
  - the optimizer: torch.optim.Adam(weight_decay=5e-7, betas=(0.95, 0.999)) over every parameter
    (traintest.py): SSAST_ADAM; ours is AdamW without decay on biases and norms, which at 5e-7 is moot;
  - the schedule (traintest.py): MultiStepLR(milestones=range(lrscheduler_start, 1000, lrscheduler_step),
    gamma=lrscheduler_decay), stepped after each epoch: schedule.name "step" with decay_start, decay_every,
    decay_gamma = 6, 1, 0.85 (ESC-50: epochs 1-6 at lr, epoch 7 at 0.85 lr, ...), 10, 5, 0.5 (AS-20K: x0.5
    after epochs 10, 15, 20) and 5, 1, 0.85 (KS2); warmup (`--warmup True`, KS2 only: run_as.sh sets
    warmup=True but passes --warmup False) is 1000 steps, the lr set to step / 1000 x lr every 50 steps;
  - noise (src/dataloader.py --noise True for ESC-50 and KS2, False for AS-20K): augment.noise;
  - the reported epoch: ESC-50's get_esc_result.py averages the five folds' per-epoch test accuracy and
    reports every fold at the best mean epoch (run.select fold_mean); AS-20K reports the model averaged
    over the weights after epochs 6-25 (--wa True --wa_start 6 --wa_end 25, traintest.py validate_wa:
    run.average_epochs); KS2 the best valid epoch, scored on the test split (run.py --data-eval).
The input: the three recipes feed the encoder SSAST's input pipeline (data.input ssast, maeast.finetune.
inputs): SSAST's fbank options and per-task statistics, every fbank cut or zero-padded to --target_length
(1024 for AS-20K's 10 s, 512 for ESC-50's 5 s clips, 128 for KS2's 1 s) with the padding seen by the
model, overlapping tokens with the scripts' --fstride/--tstride, mixup on waveforms. `--data.input
mae_ast` feeds the checkpoint's own MAE-AST features instead (BatchNorm x 0.5, padding masked out,
tokens that never overlap, mixup on fbank frames). AS-20K: SSAST trains on label-enhanced labels
(run_as.sh's tr_data is .../enhance_label/datafiles_local/balanced_train_data_type1_2_mean.json);
data.label_file takes such a SSAST datafile.

SUPERB tasks (speechcommands_v1 = KS1, voxceleb = SID, iemocap = ER) as the MAE-AST paper ran them:
AlanBaade/MAE-AST-Public s3prl/README.md gives the commands (`run_downstream.py -m train -u mae_ast
-d TASK -f -s FEATURE -o config.optimizer.lr=LR`: -f fine-tunes the upstream; -s last_hidden_state
for KS1 and ER, hidden_states for SID; lr 1e-5 for KS1, 1e-4 for SID and ER) and s3prl/config/
{speech_commands,voxceleb1,emotion}/config.yaml the runner and data: Adam, gradient clipping 1, no
scheduler (a constant lr), total_steps 10000 / 60000 / 3000 optimizer steps (s3prl/s3prl
downstream/runner.py counts steps after accumulation: schedule.steps here), batch_size 512 (KS1),
train_batch_size 4 x gradient_accumulate_steps 4 (SID), 6 x 5 (ER), eval_step 100 / 500 / 150
(run.eval_steps), projector_dim 256 with UtteranceLevel MeanPooling (head.projector: s3prl
downstream/{speech_commands,voxceleb1,emotion}/expert.py put Linear(D->256) on every frame, then
downstream/model.py's UtteranceLevel takes the mean over the real frames and a Linear(256->C), no
norm). From s3prl/s3prl (the downstream experts those configs drive):
  - KS1 trains on a class-balanced sampler (downstream/speech_commands/expert.py: torch's
    WeightedRandomSampler, weight N / clips of the class): data.balanced;
  - SID crops training utterances longer than max_timestep 128000 samples (8 s) at a random offset
    and scores dev and test on whole utterances (downstream/voxceleb1/dataset.py): clip_seconds 8,
    Task.eval_whole;
  - ER never crops (downstream/emotion/dataset.py): clip_seconds None (whole clips, batches padded
    to their longest); tests on one session, the other four train, and dev = valid_ratio 0.2 of
    those four sessions' clips (downstream/emotion/expert.py: random_split after torch.manual_seed(0)):
    Task.dev_fraction; its clips are 20 % of each fold's training clips by key hash (s3prl's own
    draw depends on os.listdir order, which cannot be reproduced). The reported test score is the
    dev-best checkpoint's for all three (each expert's log_records saves dev-best.ckpt on a new best
    dev accuracy; downstream/docs/superb.md scores it with run_downstream.py -m evaluate -e
    dev-best.ckpt), the mean over the five test sessions for ER (the README's loop over test_fold).
  - the upstream keeps its pretraining dropout (config/pretrain/mae_ast.yaml of MAE-AST-Public:
    dropout 0.1, attention_dropout 0.1, activation_dropout 0.0) and runs without layerdrop
    (s3prl/mae_ast/expert.py sets encoder.layerdrop = 0): the model section's defaults.
A frozen encoder (--freeze-encoder) follows the SUPERB benchmark (s3prl run_downstream.py without
-f, -s hidden_states by default; upstream/interfaces.py Featurizer: softmax over weights that start
at zero, i.e. equal) with SUPERB's head; see FinetuneConfig.head_spec. Its learning rate is s3prl's
own downstream configs' 1e-4 (s3prl downstream/{speech_commands,voxceleb1,emotion}/config.yaml);
batch and steps are the MAE-AST recipe's (SUPERB's own configs run 200k / 200k / 30k steps).
Where ours differ: the dev split of KS1 is scored on every dev clip once (s3prl draws it through
the balanced sampler, with replacement, so its dev accuracy is a noisy class-balanced one).

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
SUPERB_HEAD = {"norm": "none", "projector": 256}  # projector_dim 256, UtteranceLevel MeanPooling, no norm


def ssast_steps(start: int, every: int, gamma: float) -> dict:
    """SSAST's --lrscheduler_start, --lrscheduler_step, --lrscheduler_decay as the "step" schedule's fields."""
    return {"name": "step", "decay_start": start, "decay_every": every, "decay_gamma": gamma}


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
    clip_seconds: float | None
    """Every training clip is cropped (at random) or padded to this, and so is every evaluation clip
    (from its start) unless eval_whole; None: no crop, every clip whole (batches padded to their longest)."""
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
    eval_whole: bool = False
    """Score the valid and test clips whole (batches padded to their longest clip, the padding masked
    out of attention and pooling) instead of cropped to clip_seconds (SUPERB SID)."""
    dev_fraction: float = 0.0
    """Cross-validation tasks: share of each fold's training clips (by key hash) held out as the dev
    split that picks the reported checkpoint (SUPERB ER: valid_ratio 0.2); 0: none. Needs valid_split
    = the train split (the split the dev clips come from)."""
    ssast_fbank: str | None = None
    """The fbank preset of SSAST's input pipeline for this task (maeast.features.config: SSAST's statistics and
    target length from its run script; maeast.finetune.inputs, data.input ssast); None: the task has none."""
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
         recipe={"optim": {"lr": 5e-5, "frozen_lr": 1e-3, "head_lr": 1.0, "global_batch": 12, **SSAST_ADAM},
                 "schedule": {"epochs": 25, "warmup_steps": 0, **ssast_steps(10, 5, 0.5)},
                 "augment": {"freq_mask": 48, "time_mask": 192, "mixup": 0.5, "noise": False},
                 "run": {"average_epochs": [6, 25]}, "data": {"input": "ssast"}},
         source="SSAST src/finetune/audioset/run_as.sh (set=balanced: AS-20K)", ssast_fbank="ssast_audioset"),
    Task("esc50", ("esc50", "esc10"), "maeast shard build esc50 --root ESC-50-master --out shards/esc50",
         metric="accuracy", loss="ce", clip_seconds=5.0, train_split="train", valid_split=None, test_split=None,
         shards="shards/esc50",
         recipe={"optim": {"lr": 1e-4, "frozen_lr": 1e-3, "head_lr": 1.0, "global_batch": 48, **SSAST_ADAM},
                 "schedule": {"epochs": 50, "warmup_steps": 0, **ssast_steps(6, 1, 0.85)},
                 "augment": {"freq_mask": 24, "time_mask": 96, "mixup": 0.0, "noise": True},
                 "run": {"select": "fold_mean"}, "data": {"input": "ssast"}},
         source="SSAST src/finetune/esc50/run_esc_patch.sh", ssast_fbank="ssast_esc50"),
    Task("speechcommands_v1", ("speechcommands_v1",),
         "maeast shard build speechcommands --root speech_commands_v0.01 --out shards/speechcommands_v1 "
         "-o version=1 -o test_root=speech_commands_test_set_v0.01",
         metric="accuracy", loss="ce", clip_seconds=1.0, train_split="train", valid_split="valid", test_split="test",
         shards="shards/speechcommands_v1",
         recipe={"optim": {"lr": 1e-5, "frozen_lr": 1e-4, "global_batch": 512, **SUPERB_ADAM},
                 "data": {"balanced": True},
                 "schedule": {"steps": 10000, **SUPERB_SCHEDULE}, "run": {"eval_steps": 100},
                 "head": {"layers": "last", **SUPERB_HEAD}},
         source="MAE-AST-Public s3prl/config/speech_commands/config.yaml and s3prl/README.md (KS1)"),
    Task("speechcommands_v2", ("speechcommands_v2",),
         "maeast shard build speechcommands --root speech_commands_v0.02 --out shards/speechcommands_v2",
         metric="accuracy", loss="bce", clip_seconds=1.0, train_split="train", valid_split="valid", test_split="test",
         shards="shards/speechcommands_v2",
         recipe={"optim": {"lr": 2.5e-4, "frozen_lr": 1e-3, "head_lr": 1.0, "global_batch": 128, **SSAST_ADAM},
                 "schedule": {"epochs": 30, "warmup_steps": 1000, **ssast_steps(5, 1, 0.85)},
                 "augment": {"freq_mask": 48, "time_mask": 48, "mixup": 0.6, "noise": True},
                 "run": {"select": "valid"}, "data": {"input": "ssast"}},
         source="SSAST src/finetune/speechcommands_v2_35/run_sc.sh", ssast_fbank="ssast_speechcommands"),
    Task("voxceleb", ("voxceleb1",), "maeast shard build voxceleb1 --root VoxCeleb1 --out shards/voxceleb1",
         metric="accuracy", loss="ce", clip_seconds=8.0, train_split="train", valid_split="valid", test_split="test",
         shards="shards/voxceleb1", eval_whole=True,
         recipe={"optim": {"lr": 1e-4, "frozen_lr": 1e-4, "global_batch": 16, **SUPERB_ADAM},
                 "data": {"batch_size": 4},
                 "schedule": {"steps": 60000, **SUPERB_SCHEDULE}, "run": {"eval_steps": 500},
                 "head": {"layers": "weighted", **SUPERB_HEAD}},
         source="MAE-AST-Public s3prl/config/voxceleb1/config.yaml and s3prl/README.md (SID; max_timestep 128000 = 8 s)"),
    Task("iemocap", ("iemocap",), "maeast shard build iemocap --root IEMOCAP_full_release --out shards/iemocap",
         metric="accuracy", loss="ce", clip_seconds=None, train_split="train", valid_split="train", test_split=None,
         shards="shards/iemocap", eval_whole=True, dev_fraction=0.2,
         recipe={"optim": {"lr": 1e-4, "frozen_lr": 1e-4, "global_batch": 30, **SUPERB_ADAM},
                 "data": {"batch_size": 6},
                 "schedule": {"steps": 3000, **SUPERB_SCHEDULE}, "run": {"eval_steps": 150},
                 "head": {"layers": "last", **SUPERB_HEAD}},
         source="MAE-AST-Public s3prl/config/emotion/config.yaml and s3prl/README.md (ER: five test sessions)"),
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
