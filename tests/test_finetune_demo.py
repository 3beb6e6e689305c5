"""On the tiny demo keyword corpus (real espeak-ng speech, unseen speakers in valid and test): full
fine-tuning from random weights ends clearly above chance, and a linear probe on the frozen random
encoder stays below what fine-tuning reaches, so that the comparison with a pretrained encoder means
something. The encoder is the tiny preset with frame tokens (2 frames x 128 bins), which learns the
words from scratch in seconds; 16x16 patches do not in a test's budget (see the report of issue 9).
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from maeast.demo.build import build_demo
from maeast.finetune import finetune, load_finetune_config
from maeast.shards.build import build_shards
from maeast.shards.format import iter_tar, shard_paths

FRAMES = ["--model.patch_time", "2", "--model.patch_freq", "128", "--optim.global_batch", "16"]


@pytest.fixture(scope="module")
def keywords(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_kw")
    build_demo(root / "demo", size="tiny", seed=0, workers=2, progress=False, corpora=("speech_commands",))
    build_shards("speechcommands", root / "demo" / "speech_commands", root / "shards")
    return root / "shards"


def majority_share(shards, split: str) -> float:
    """Accuracy of always answering the split's most frequent class: the chance level to beat."""
    counts = Counter(json.loads(p["json"])["label_ids"][0] for s in shard_paths(shards, split) for _, p in iter_tar(s))
    return max(counts.values()) / sum(counts.values())


@pytest.mark.slow
def test_full_fine_tuning_learns_and_the_frozen_random_baseline_does_not_reach_it(keywords, tmp_path):
    chance = majority_share(keywords, "test")
    full = finetune(load_finetune_config("finetune_tiny", task="speechcommands_v1", shards=str(keywords),
                                         run_dir=str(tmp_path / "full"),
                                         overrides=FRAMES + ["--schedule.epochs", "30", "--optim.lr", "2e-3",
                                                             "--schedule.warmup_steps", "50",
                                                             "--schedule.final_lr_scale", "0", "--run.eval_every_epochs", "30"]))
    frozen = finetune(load_finetune_config("finetune_tiny", task="speechcommands_v1", shards=str(keywords),
                                           run_dir=str(tmp_path / "frozen"), freeze_encoder=True,
                                           overrides=FRAMES + ["--schedule.epochs", "30", "--run.eval_every_epochs", "30"]))
    full_acc, frozen_acc = full.summary["mean"], frozen.summary["mean"]
    print(f"tiny demo keywords test: full {full_acc:.3f}, frozen {frozen_acc:.3f}, majority class {chance:.3f}")
    assert full_acc > 2 * chance and full_acc > 0.4, (full_acc, chance)
    assert frozen_acc < 0.8 * full_acc, (frozen_acc, full_acc)
