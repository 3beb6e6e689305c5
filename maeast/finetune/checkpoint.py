"""Fine-tuning files: the initial encoder, the exported classifier, and resumable fold checkpoints.

    RUN/fold{k}/classifier/        the selected model (best valid epoch, else the last), for `maeast evaluate`:
        encoder.safetensors, encoder.json    the encoder in the pretraining export format (read_encoder reads it)
        head.safetensors, classifier.json    the head, the task, labels, features and how it was selected
    RUN/fold{k}/checkpoints/step_N/  DeepSpeed state (engine.save), state_rank{r}.pt, best/ (a classifier
                                     folder of the best epoch so far); renamed into place only once whole.

Checkpoints are the pretraining engine's (maeast.engine.checkpoint: save_checkpoint with an extra
file hook, load_train_state, tags, `latest`, clearing interrupted saves).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from maeast.engine.checkpoint import latest_checkpoint, read_encoder, save_checkpoint, write_encoder
from maeast.errors import MaeastError
from maeast.features import get_config as get_fbank
from maeast.finetune.heads import Classifier, Head
from maeast.model import Encoder, ModelConfig

CLASSIFIER_FORMAT = "maeast-classifier/1"


def initial_encoder(checkpoint: str | None, preset_cfg: ModelConfig, seed: int) -> tuple[dict, ModelConfig, dict]:
    """(encoder state dict, its ModelConfig, its encoder.json or {}) from a checkpoint, or random weights
    drawn with `seed` for the preset (the same weights for every fold of a run)."""
    if checkpoint is None:
        torch.manual_seed(seed)
        encoder = Encoder(preset_cfg)
        return encoder.state_dict(), preset_cfg, {}
    path = Path(checkpoint)
    if not path.exists():
        raise MaeastError(f"checkpoint {path} not found; give RUN/encoder of a `maeast pretrain` run, the run "
                          f"folder, or RUN/checkpoints/step_N")
    folder = path.parent if path.suffix in (".safetensors", ".json") else path
    if path.is_dir() and not (folder / "encoder.json").is_file() and not (folder / "encoder").is_dir():
        latest = latest_checkpoint(folder)  # a run folder still training: its newest checkpoint's encoder
        if latest is not None:
            path = latest
    encoder, info = read_encoder(path)
    return encoder.state_dict(), encoder.cfg, info


def with_rates(cfg: ModelConfig, rates: dict) -> ModelConfig:
    """The encoder config with fine-tuning's dropout and layerdrop rates."""
    return dataclasses.replace(cfg, **rates)


# ---- the exported classifier --------------------------------------------------------------------

def write_classifier(folder: Path, encoder_weights: dict[str, torch.Tensor], head_weights: dict[str, torch.Tensor],
                     model_cfg: ModelConfig, fbank: str, pretraining: dict, info: dict) -> Path:
    """Write encoder.* (pretraining's export format), head.safetensors and classifier.json into folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fb = get_fbank(fbank)
    meta = {"model": model_cfg.to_dict(), "features": {"preset": fb.name, **dataclasses.asdict(fb)},
            "pretraining": pretraining}
    write_encoder({f"encoder.{k}": v.detach().float().cpu() for k, v in encoder_weights.items()}, meta, folder)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in head_weights.items()},
              str(folder / "head.safetensors"), metadata={"format": CLASSIFIER_FORMAT})
    text = json.dumps({"format": CLASSIFIER_FORMAT, "fbank": fb.name, **info}, indent=2) + "\n"
    tmp = folder / ".classifier.json.tmp"
    tmp.write_text(text)
    tmp.replace(folder / "classifier.json")
    return folder


def load_classifier(folder: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """A classifier folder -> (Classifier in eval mode, its classifier.json)."""
    folder = Path(folder)
    info_file = folder / "classifier.json"
    if not info_file.is_file():
        raise MaeastError(f"{folder} holds no classifier.json: give a `maeast finetune` run folder or its "
                          f"fold*/classifier folder")
    info = json.loads(info_file.read_text())
    if info.get("format") != CLASSIFIER_FORMAT:
        raise MaeastError(f"{info_file} is not a {CLASSIFIER_FORMAT} file (format {info.get('format')!r})")
    encoder, _ = read_encoder(folder)
    head_cfg = info["head"]
    head = Head(head_cfg["layers"], encoder.cfg.dim, len(info["labels"]), head_cfg["norm"])
    head.load_state_dict(load_file(str(folder / "head.safetensors")))
    return Classifier(encoder, head, head_cfg["weighted"]).to(device).eval(), info


# ---- resumable checkpoints of a fold --------------------------------------------------------------

def save_fold_checkpoint(engine, part_dir: Path, step: int, state: dict, best_dir: Path | None, keep: int) -> Path:
    """Every process calls this at the same step: the engine's checkpoint (DeepSpeed state, this
    process's state) plus best/, a copy of the best classifier so far."""
    def copy_best(folder: Path) -> None:
        if best_dir is not None and best_dir.is_dir():
            shutil.copytree(best_dir, folder / "best")
    return save_checkpoint(engine, part_dir, step, state, None, keep, extra=copy_best)
