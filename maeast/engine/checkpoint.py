"""Checkpoints: atomic saves, the latest good one, exact resume, and the exported encoder.

    RUN/checkpoints/step_00001000/     one complete checkpoint, renamed into place only once whole:
        mp_rank_00_model_states.pt, *optim_states.pt   DeepSpeed: weights, optimizer, schedule, step
        state_rank{r}.pt                per process: step, loader position, RNG state
        model.safetensors, model.json   the whole MAE-AST in fp32 (for `maeast visualize`)
        encoder.safetensors, encoder.json   the encoder for fine-tuning (EXPORT_FORMAT)
    RUN/checkpoints/latest             the newest complete tag (written atomically)
    RUN/encoder/                       the final export: encoder.safetensors + encoder.json

Every process writes into `checkpoints/.tmp-step_N`; after a barrier rank 0 renames it to `step_N`
and then replaces `latest`. A process killed at any point leaves the previous checkpoint and
`latest` untouched; the half-written .tmp folder is cleared by the next save or run start.
Read an exported encoder with `read_encoder(path)` -> (Encoder, encoder.json); `maeast.load_encoder` wraps
it into the inference module (waveforms or fbanks in, embeddings out).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from maeast.engine import distributed as dist
from maeast.errors import MaeastError
from maeast.features import get_config as get_fbank
from maeast.model import MAEAST, Encoder, ModelConfig

EXPORT_FORMAT = "maeast-encoder/1"
MODEL_FORMAT = "maeast-model/1"
PREFIX = "step_"


def tag_of(step: int) -> str:
    return f"{PREFIX}{step:08d}"


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


def clear_partial(run_dir: Path) -> None:
    """Rank 0: remove folders of saves that a kill interrupted."""
    root = checkpoints_dir(run_dir)
    if dist.is_main() and root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-") or p.name.startswith(".old-"):
                shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(engine, run_dir: Path, step: int, train_state: dict, model_meta: dict | None, keep: int,
                    extra: Callable[[Path], None] | None = None) -> Path:
    """Every process calls this at the same step; returns the checkpoint folder.

    Writes DeepSpeed's state, this process's train_state, the model and encoder files (when model_meta
    is given) and whatever `extra(folder)` adds (rank 0 calls it: fine-tuning copies its best classifier)
    into a hidden folder, which is renamed into place only once whole; then `latest`, then pruning."""
    root = checkpoints_dir(run_dir)
    tag = tag_of(step)
    tmp = root / f".tmp-{tag}"
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    engine.save(root, tmp.name, client_state={"step": step})
    torch.save(train_state, tmp / f"state_rank{dist.rank()}.pt")
    if model_meta is not None:
        weights = engine.full_state_dict()  # a collective under ZeRO
        if dist.is_main():
            write_model(weights, model_meta, tmp)
            write_encoder(weights, model_meta, tmp)
    if extra is not None and dist.is_main():
        extra(tmp)
    dist.barrier()
    final = root / tag
    if dist.is_main():
        if final.exists():  # the same step saved before: move it aside first, so a kill leaves one of the two
            aside = root / f".old-{tag}"
            shutil.rmtree(aside, ignore_errors=True)
            final.rename(aside)
            tmp.rename(final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            tmp.rename(final)
        _write_atomic(root / "latest", tag)
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_train_state(path: Path) -> dict:
    """This process's state file of a checkpoint."""
    file = Path(path) / f"state_rank{dist.rank()}.pt"
    if not file.is_file():
        raise MaeastError(f"{path} has no {file.name}: it was written by fewer processes than this run has "
                          f"({dist.world_size()}); resume with the process count that wrote it")
    return torch.load(file, map_location="cpu", weights_only=True)


def publish_encoder(checkpoint: Path, run_dir: Path) -> Path:
    """Rank 0: copy a checkpoint's encoder files to RUN/encoder, swapping the folder in whole."""
    out = Path(run_dir) / "encoder"
    if not dist.is_main():
        return out
    tmp, old = out.with_name(".encoder-tmp"), out.with_name(".encoder-old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in ("encoder.safetensors", "encoder.json"):
        shutil.copy2(Path(checkpoint) / name, tmp / name)
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


# ---- the exported files ------------------------------------------------------------------------

def model_meta(cfg, step: int, samples: int, extra: dict | None = None) -> dict:
    """What the JSON files record: model config, features, the run's provenance."""
    fbank = get_fbank(cfg.data.fbank)
    return {"model": cfg.model.to_dict(),
            "features": {"preset": fbank.name, **dataclasses.asdict(fbank)},
            "pretraining": {"step": step, "samples": samples, "run_dir": str(cfg.run.dir),
                            "shards": list(cfg.data.shards), "max_seconds": cfg.data.max_seconds, **(extra or {})}}


def write_model(weights: dict[str, torch.Tensor], meta: dict, folder: Path) -> None:
    save_file(_contiguous(weights), str(Path(folder) / "model.safetensors"), metadata={"format": MODEL_FORMAT})
    _write_json(Path(folder) / "model.json", {"format": MODEL_FORMAT, **meta})


def write_encoder(weights: dict[str, torch.Tensor], meta: dict, folder: Path) -> None:
    """The encoder's tensors (keys as Encoder.state_dict()) and a JSON to rebuild and feed it."""
    encoder = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
    cfg = ModelConfig.from_dict(meta["model"])
    norm = {"input_norm": cfg.input_norm}
    if cfg.input_norm == "batchnorm":
        norm.update(scale=cfg.input_scale, running_mean=float(encoder["input_norm.running_mean"][0]),
                    running_var=float(encoder["input_norm.running_var"][0]))
    features = meta["features"]
    norm["features_mean"], norm["features_std"] = features.get("norm_mean"), features.get("norm_std")
    info = {"format": EXPORT_FORMAT, "model": meta["model"], "features": features, "normalization": norm,
            "tokens": {"patch_time": cfg.patch_time, "patch_freq": cfg.patch_freq, "dim": cfg.dim,
                       "frame_shift_ms": features["frame_shift_ms"]},
            "parameters": int(sum(v.numel() for k, v in encoder.items() if v.is_floating_point()
                                  and not k.startswith("input_norm."))),
            "pretraining": meta["pretraining"]}
    save_file(_contiguous(encoder), str(Path(folder) / "encoder.safetensors"), metadata={"format": EXPORT_FORMAT})
    _write_json(Path(folder) / "encoder.json", info)


def _encoder_files(path: Path) -> tuple[Path, Path]:
    path = Path(path)
    folder = path.parent if path.suffix in (".safetensors", ".json") else path
    if (folder / "encoder").is_dir() and not (folder / "encoder.json").is_file():
        folder = folder / "encoder"
    weights, info = folder / "encoder.safetensors", folder / "encoder.json"
    if not (weights.is_file() and info.is_file()):
        raise MaeastError(f"{path}: no encoder.safetensors + encoder.json there; give RUN/encoder or a checkpoint "
                          f"folder of a `maeast pretrain` run")
    return weights, info


def read_encoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[Encoder, dict]:
    """An exported encoder (RUN/encoder, a checkpoint folder, or either file) -> (Encoder in eval mode, its JSON)."""
    weights, info_file = _encoder_files(path)
    info = json.loads(info_file.read_text())
    if info.get("format") != EXPORT_FORMAT:
        raise MaeastError(f"{info_file} is not a {EXPORT_FORMAT} file (format {info.get('format')!r})")
    encoder = Encoder(ModelConfig.from_dict(info["model"]))
    encoder.load_state_dict(load_file(str(weights)))
    return encoder.to(device).eval(), info


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[MAEAST, dict]:
    """The whole MAE-AST of a checkpoint (a run folder means its latest checkpoint), in eval mode."""
    path = Path(path)
    folder = path.parent if path.suffix in (".safetensors", ".json") else path
    if not (folder / "model.safetensors").is_file():
        latest = latest_checkpoint(folder)
        if latest is None:
            raise MaeastError(f"{path}: no model.safetensors there and no checkpoint under it; give a run folder "
                              f"or RUN/checkpoints/step_N")
        folder = latest
    meta = json.loads((folder / "model.json").read_text())
    model = MAEAST(ModelConfig.from_dict(meta["model"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.to(device).eval(), meta


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in tensors.items()}


def _write_json(path: Path, data: dict) -> None:
    _write_atomic(path, json.dumps(data, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
