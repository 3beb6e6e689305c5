"""Every saved model is written and read here, each kind a pair of files in a folder (KINDS):

    encoder.safetensors + encoder.json   the encoder: RUN/encoder, checkpoints, classifiers, convert-official
    model.safetensors + model.json       the whole MAE-AST: pretraining checkpoints, convert-official
    head.safetensors + classifier.json   beside the encoder files: RUN/fold{k}/classifier, RUN/main/classifier
The JSON files record every FbankConfig field (dataset statistics included) under "features";
`features_of(info)` rebuilds the features the model was trained on.

One path rule for every reader: a path names the first of these that holds the kind's files: the folder
of a .safetensors or .json file; the folder itself; RUN/encoder of a pretraining run; a fine-tuning fold's
classifier/; a pretraining run's latest complete checkpoint; a fine-tuning run's only */classifier/.
Anything else is a one-line MaeastError naming the path and what to give.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from maeast.errors import MaeastError
from maeast.features import FbankConfig
from maeast.files import write_json
from maeast.model import MAEAST, Classifier, Encoder, ModelConfig
from maeast.model.heads import head_from_record

EXPORT_FORMAT, MODEL_FORMAT, CLASSIFIER_FORMAT = "maeast-encoder/1", "maeast-model/1", "maeast-classifier/1"
PREFIX = "step_"  # checkpoint folders: RUN/checkpoints/step_00001000
KINDS = {  # kind: (its tensors, its JSON, their format, what to give a reader)
    "encoder": ("encoder.safetensors", "encoder.json", EXPORT_FORMAT, "RUN/encoder, the run folder or "
                "RUN/checkpoints/step_N of a `maeast pretrain` run, or a `maeast convert-official` folder"),
    "model": ("model.safetensors", "model.json", MODEL_FORMAT, "a run folder or RUN/checkpoints/step_N"),
    "classifier": ("head.safetensors", "classifier.json", CLASSIFIER_FORMAT, "a `maeast finetune` run folder or "
                   "its fold*/classifier folder"),
}


# ---- the path rule ----------------------------------------------------------------------------------

def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (a folder exists under its final name only when whole)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
                  and (p / "state_rank0.pt").is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names, or else the newest complete one; None when there is none."""
    root = checkpoints_dir(run_dir)
    latest = root / "latest"
    if latest.is_file():
        named = root / latest.read_text().strip()
        if (named / "state_rank0.pt").is_file():
            return named
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def _parts(folder: Path) -> list[Path]:
    """A fine-tuning run's classifier folders (fold*/classifier, main/classifier)."""
    return sorted(p.parent for p in Path(folder).glob("*/classifier/classifier.json"))


def locate(path: str | Path, kind: str) -> Path:
    """The folder holding the files of `kind` ("encoder", "model", "classifier") that a path names."""
    path = Path(path)
    *files, _, fix = KINDS[kind]
    if not path.exists():
        raise MaeastError(f"checkpoint {path} not found; give {fix}")
    folder = path.parent if path.suffix in (".safetensors", ".json") else path
    parts = _parts(folder)
    tried = [folder, folder / "encoder", folder / "classifier", latest_checkpoint(folder)]
    for found in tried + (parts if len(parts) == 1 else []):
        if found is not None and all((found / name).is_file() for name in files):
            return found
    if len(parts) > 1:
        names = ", ".join(str(p.relative_to(folder)) for p in parts)
        raise MaeastError(f"{path} holds {len(parts)} classifiers ({names}); give one of them")
    raise MaeastError(f"{path}: no {' + '.join(files)} there; give {fix}")


def classifier_folders(path: str | Path) -> list[Path]:
    """Every classifier a path names: a fine-tuning run's */classifier folders, else the one `locate` finds."""
    parts = _parts(path)
    return parts if len(parts) > 1 else [locate(path, "classifier")]


# ---- the readers ------------------------------------------------------------------------------------

def features_of(info: dict) -> FbankConfig:
    """The FbankConfig an artifact's JSON records under "features" (dataset statistics included)."""
    known = {f.name for f in dataclasses.fields(FbankConfig)}
    return FbankConfig(**{k: v for k, v in info["features"].items() if k in known})


def read_encoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[Encoder, dict]:
    """The encoder a path names -> (Encoder in eval mode, its encoder.json)."""
    return _read(path, "encoder", Encoder, device)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[MAEAST, dict]:
    """The whole MAE-AST a path names (a run folder: its latest checkpoint) -> (MAEAST in eval mode, model.json)."""
    return _read(path, "model", MAEAST, device)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """The classifier a path names -> (Classifier in eval mode, its classifier.json with the encoder's "features")."""
    folder = locate(path, "classifier")
    info = _read_json(folder, "classifier")
    encoder, encoder_info = read_encoder(folder)
    head = head_from_record(info["head"], encoder.cfg.dim, len(info["labels"]))
    head.load_state_dict(load_file(str(folder / "head.safetensors")))
    model = Classifier(encoder, head, info["head"]["weighted"]).to(device).eval()
    return model, {**info, "features": encoder_info["features"]}


def initial_encoder(checkpoint: str | Path | None, preset_cfg: ModelConfig,
                    seed: int) -> tuple[dict, ModelConfig, dict]:
    """(encoder state dict, its ModelConfig, its encoder.json or {}) of the encoder a path names, or random
    weights drawn with `seed` for the preset (the same weights for every fold of a run)."""
    if checkpoint is None:
        torch.manual_seed(seed)
        return Encoder(preset_cfg).state_dict(), preset_cfg, {}
    encoder, info = read_encoder(checkpoint)
    return encoder.state_dict(), encoder.cfg, info


def _read(path: str | Path, kind: str, cls: type, device) -> tuple[torch.nn.Module, dict]:
    """(cls of the kind's JSON "model" with its tensors, in eval mode on device; its JSON)."""
    folder = locate(path, kind)
    info = _read_json(folder, kind)
    module = cls(ModelConfig.from_dict(info["model"]))
    module.load_state_dict(load_file(str(folder / KINDS[kind][0])))
    return module.to(device).eval(), info


def _read_json(folder: Path, kind: str) -> dict:
    _, name, expected, _ = KINDS[kind]
    info = json.loads((folder / name).read_text())
    if info.get("format") != expected:
        raise MaeastError(f"{folder / name} is not a {expected} file (format {info.get('format')!r})")
    return info


# ---- the writers ------------------------------------------------------------------------------------

def features_record(fbank: FbankConfig) -> dict:
    """The JSON files' "features": the preset's name and every field of its FbankConfig."""
    return {"preset": fbank.name, **dataclasses.asdict(fbank)}


def write_model(weights: dict[str, torch.Tensor], meta: dict, folder: Path) -> None:
    """The whole model's tensors and meta ({"model", "features", "pretraining"}) as model.*."""
    save_file(_contiguous(weights), str(Path(folder) / "model.safetensors"), metadata={"format": MODEL_FORMAT})
    write_json(Path(folder) / "model.json", {"format": MODEL_FORMAT, **meta})


def write_encoder(weights: dict[str, torch.Tensor], meta: dict, folder: Path) -> None:
    """The encoder's tensors (keys as Encoder.state_dict()) and a JSON to rebuild and feed it."""
    encoder = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
    cfg = ModelConfig.from_dict(meta["model"])
    norm = {"input_norm": cfg.input_norm}
    if cfg.input_norm in ("batchnorm", "batchnorm_padded"):  # the same running statistics
        norm.update(scale=cfg.input_scale, running_mean=float(encoder["input_norm.running_mean"][0]),
                    running_var=float(encoder["input_norm.running_var"][0]))
    features = meta["features"]
    norm["features_mean"], norm["features_std"] = features.get("norm_mean"), features.get("norm_std")
    info = {"format": EXPORT_FORMAT, "model": meta["model"], "features": features, "normalization": norm,
            "tokens": {"patch_time": cfg.patch_time, "patch_freq": cfg.patch_freq, "dim": cfg.dim,
                       "frame_shift_ms": features["frame_shift_ms"]},
            "parameters": int(sum(v.numel() for k, v in encoder.items() if v.is_floating_point()
                                  and not k.startswith(("input_norm.", "positions.")))),
            "pretraining": meta["pretraining"]}
    save_file(_contiguous(encoder), str(Path(folder) / "encoder.safetensors"), metadata={"format": EXPORT_FORMAT})
    write_json(Path(folder) / "encoder.json", info)


def write_classifier(folder: Path, encoder_weights: dict[str, torch.Tensor], head_weights: dict[str, torch.Tensor],
                     model_cfg: ModelConfig, fbank: FbankConfig, pretraining: dict, info: dict) -> Path:
    """Write encoder.* (the export format), head.safetensors and classifier.json into folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"model": model_cfg.to_dict(), "features": features_record(fbank), "pretraining": pretraining}
    write_encoder({f"encoder.{k}": v.detach().float().cpu() for k, v in encoder_weights.items()}, meta, folder)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in head_weights.items()},
              str(folder / "head.safetensors"), metadata={"format": CLASSIFIER_FORMAT})
    write_json(folder / "classifier.json", {"format": CLASSIFIER_FORMAT, "fbank": fbank.name, **info})
    return folder


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in tensors.items()}
