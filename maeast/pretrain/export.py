"""What pretraining exports: the model and encoder files' record of the run, and RUN/encoder.

    RUN/checkpoints/step_N/model.*, encoder.*   written with every checkpoint (maeast.train.checkpoint), with
                                                 model_meta's record: model config, features, provenance
    RUN/encoder/                                 the final export: encoder.safetensors + encoder.json
"""

from __future__ import annotations

import shutil
from pathlib import Path

from maeast.artifacts import features_record
from maeast.train import distributed as dist


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


def model_meta(cfg, features, step: int, samples: int, extra: dict | None = None) -> dict:
    """What the JSON files record: model config, the features the run trained on, the run's provenance."""
    return {"model": cfg.model.to_dict(), "features": features_record(features),
            "pretraining": {"step": step, "samples": samples, "run_dir": str(cfg.run.dir),
                            "shards": list(cfg.data.shards), "max_seconds": cfg.data.max_seconds, **(extra or {})}}
