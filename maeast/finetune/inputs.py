"""The input pipeline of a fine-tuning run, chosen once per run (data.input): what the encoder is fed.

    mae_ast  the checkpoint's own features (MAE-AST's fbank, normalized by the encoder's BatchNorm x 0.5),
             clips cropped or padded to clip_seconds with the padding masked out, tokens that never
             overlap, mixup on fbank frames. Every task's default but the three below.
    ssast    SSAST's (YuanGongND/ssast, which the MAE-AST paper ran AudioSet, ESC-50 and Speech Commands
             v2 under, "with no settings changed": AlanBaade/MAE-AST-Public README.md), the default of the
             audioset, esc50 and speechcommands_v2 recipes:
               - fbank: torchaudio's kaldi.fbank(htk_compat=True, window_type='hanning', dither=0.0,
                 num_mel_bins=128, use_energy=False) of the clip minus its mean (src/dataloader.py
                 _wav2fbank), normalized (x - mean) / (2 * std) with the statistics of the task's run
                 script: the task's `ssast_fbank` preset (maeast.features.config);
               - cut or zero-padded to the script's target_length frames (1024 AS, 512 ESC-50, 128 KS2),
                 the padding seen by the model (no padding mask);
               - tokens overlapping as the scripts' --fstride/--tstride cut them (SSAST_STRIDES), the
                 positions sized to the larger grid (maeast.model.positions: one per token index);
               - no input BatchNorm (input_norm "none": the features come normalized; a checkpoint's
                 BatchNorm statistics are dropped);
               - mixup on waveforms (`SsastTrain`, maeast.finetune.augment.wave_mixup), SpecAugment
                 masks filled with raw log-mel 0 (FbankConfig.pad_value).

`apply_input` turns the encoder's config, weights and features into the pipeline's; the tokens' strides
and the features' target length travel in every export (encoder.json, classifier, ONNX, Hugging Face),
so inference rebuilds the same grid from the same fixed-length fbank.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

from maeast.batch import Batch
from maeast.errors import MaeastError
from maeast.features import FbankConfig, get_config
from maeast.finetune.augment import wave_mixup
from maeast.finetune.tasks import Task
from maeast.model.config import ModelConfig
from maeast.shards.recipes.audioset import YTID_LEN
from maeast.shards.recipes.base import make_key
from maeast.streams import derive_seed

SSAST_STRIDES: dict[tuple[int, int], tuple[int, int]] = {
    (16, 16): (10, 10),  # fshape=tshape=16, fstride=tstride=10: src/finetune/audioset/run_as.sh,
                         # src/finetune/esc50/run_esc_patch.sh
    (2, 128): (1, 128),  # tshape=2, fshape=128, tstride=1, fstride=128: src/finetune/speechcommands_v2_35/run_sc.sh,
                         # src/finetune/esc50/run_esc_frame.sh
}
"""(patch_time, patch_freq) -> (stride_time, stride_freq) of SSAST's fine-tuning scripts (YuanGongND/ssast)."""

WAVE_MIXUP_STREAM = 0x55A5
"""Seed part of SsastTrain's draws (a batch's draws are a function of run seed, fold, epoch and its keys)."""


def check_input(name: str, task: Task, data_fbank: str | None) -> None:
    """The config's choice of pipeline against its task (FinetuneConfig checks it before any work)."""
    if name == "ssast" and task.ssast_fbank is None:
        raise MaeastError(f"data.input ssast: task {task.name} has no SSAST recipe (SSAST's statistics and length "
                          f"exist for audioset, esc50 and speechcommands_v2); set --data.input mae_ast")
    if name == "ssast" and data_fbank is not None:
        raise MaeastError(f"data.fbank {data_fbank!r} with data.input ssast: the SSAST pipeline uses the task's "
                          f"{task.ssast_fbank} features; drop data.fbank or set --data.input mae_ast")


def apply_input(name: str, task: Task, model_cfg: ModelConfig, state: dict, fbank: FbankConfig,
                data_fbank: str | None = None) -> tuple[ModelConfig, dict, FbankConfig]:
    """(model config, encoder weights, features) of the run under input pipeline `name`; mae_ast: unchanged."""
    check_input(name, task, data_fbank)
    if name == "mae_ast":
        return model_cfg, state, fbank
    shape = (model_cfg.patch_time, model_cfg.patch_freq)
    if shape not in SSAST_STRIDES:
        known = " or ".join(f"{t}x{f}" for t, f in SSAST_STRIDES)
        raise MaeastError(f"data.input ssast: SSAST's token strides are given for {known} (frames x bins) tokens, "
                          f"the encoder's are {shape[0]}x{shape[1]}; set --data.input mae_ast")
    stride_time, stride_freq = SSAST_STRIDES[shape]
    features = get_config(task.ssast_fbank)
    if features.n_mels != model_cfg.n_mels:
        raise MaeastError(f"data.input ssast: {features.name} gives {features.n_mels} mel bins, the encoder takes "
                          f"{model_cfg.n_mels}; set --data.input mae_ast")
    cfg = dataclasses.replace(model_cfg, stride_time=stride_time, stride_freq=stride_freq, input_norm="none")
    weights = {k: v for k, v in state.items() if not k.startswith("input_norm.")}
    return cfg, weights, features


def read_label_file(path: str, labels: list[str]) -> dict[str, torch.Tensor]:
    """A SSAST datafile ({"data": [{"wav": PATH, "labels": "MID,MID"}]}, YuanGongND/ssast src/dataloader.py's
    input) -> clip key -> multi-hot [C] over the corpus's labels. The key is the shard recipes': an
    AudioSet file YTID_START[...] (11-character YouTube id, start in seconds) is make_key(YTID, START in ms),
    any other file its stem."""
    try:
        rows = json.loads(Path(path).read_text())["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MaeastError(f"data.label_file {path}: not a SSAST datafile ({{\"data\": [...]}}): {e}") from None
    index = {name: i for i, name in enumerate(labels)}
    out = {}
    for row in rows:
        names = [m.strip() for m in str(row.get("labels", "")).split(",") if m.strip()]
        unknown = [m for m in names if m not in index]
        if unknown:
            raise MaeastError(f"data.label_file {path}: label {unknown[0]!r} of {row.get('wav')} is not one of the "
                              f"corpus's labels; use a datafile of the same label set")
        hot = torch.zeros(len(labels))
        hot[[index[m] for m in names]] = 1.0
        out[clip_key(str(row.get("wav", "")))] = hot
    return out


def clip_key(wav: str) -> str:
    """The shard key of a SSAST datafile's wav path (see read_label_file)."""
    stem = Path(wav).stem
    ytid, sep, rest = stem[:YTID_LEN], stem[YTID_LEN:YTID_LEN + 1], stem[YTID_LEN + 1:]
    try:
        if sep == "_":
            return make_key(ytid, int(round(float(rest.split("_")[0]) * 1000)))
    except ValueError:
        pass
    return make_key(stem)


class SsastTrain:
    """A training loader whose batches get a SSAST datafile's labels (`relabel`: key -> multi-hot, from
    read_label_file) and SSAST's mixup on waveforms (prob > 0: the loader yields waveforms, fbank_on
    "device", and each batch computes its fbank where it goes, Batch.to). Mixup draws: a torch.Generator
    per batch, seeded by (seed, epoch, the batch's keys), so a resumed epoch mixes its batches as before."""

    def __init__(self, loader, classes: int, prob: float, alpha: float, seed: int,
                 relabel: dict[str, torch.Tensor] | None = None):
        self.loader, self.classes, self.prob, self.alpha, self.seed = loader, classes, prob, alpha, seed
        self.relabel = relabel or {}

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)

    def __iter__(self):
        epoch = self.loader.state.epoch if hasattr(self.loader, "state") else 0  # it advances on the last batch
        for batch in self.loader:
            targets = batch.labels.float() if batch.labels.ndim == 2 else F.one_hot(batch.labels, self.classes).float()
            if self.relabel:
                targets = torch.stack([self.relabel.get(k, t) for k, t in zip(batch.keys, targets)])
            if self.prob == 0.0:
                yield Batch(batch.features, batch.padding_mask, targets, list(batch.keys))
                continue
            crc = zlib.crc32("\n".join(batch.keys).encode())
            generator = torch.Generator().manual_seed(derive_seed(self.seed, WAVE_MIXUP_STREAM, epoch, crc))
            wave, targets = wave_mixup(batch.waveform, batch.lengths, targets, self.prob, self.alpha, generator)
            yield Batch(None, None, targets, list(batch.keys), wave, batch.lengths, batch.fbank, batch.sample_rate)
