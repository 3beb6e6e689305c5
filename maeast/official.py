"""A published MAE-AST checkpoint (fairseq) read without fairseq: its tensors and its config (maeast.convert maps them).

The released files (chunk_patch_75_12LayerEncoder.pt, random_frame_75_12LayerEncoder.pt) are fairseq
checkpoints: a dict with "model", the state dict of MAE_AST in AlanBaade/MAE-AST-Public
(mae_ast/models/mae_ast.py), and "cfg" ({"model", "task", "criterion", ...}; older fairseq: "args",
an argparse.Namespace) holding its config. Loading needs neither fairseq nor omegaconf:
torch.load(weights_only=True) runs with every class the file names outside torch's safe list
(argparse.Namespace, omegaconf's DictConfig and nodes, enum members, numpy scalars) mapped to `Pickled`,
an inert stand-in that records its arguments and state; `plain` then reads the config back as plain
dicts (omegaconf containers by `_content`, nodes by `_val`, enum members by their value). Nothing
named in the file is imported or called. official_config fills in the official defaults of every field
the config leaves out.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maeast.errors import MaeastError

# The official defaults (MAE_AST_Config, MAE_AST_Pretraining_Config, MAE_AST_Criterion_Config),
# used for any field a checkpoint's config leaves out.
MODEL_DEFAULTS: dict[str, Any] = {
    "ast_kernel_size_time": 16, "ast_kernel_size_chan": 16, "ast_kernel_stride_time": 16,
    "ast_kernel_stride_chan": 16, "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_norm_first": False, "use_post_enc_proj": False,
    "decoder_embed_dim": 768, "decoder_layers": 2, "decoder_layerdrop": 0.0, "dropout": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "dropout_input": 0.0,
    "random_mask_prob": 0.75, "mask_length": 10, "max_token_length": 48000, "enc_sine_pos": False, "dec_sine_pos": False,
    "enc_conv_pos": False, "dec_conv_pos": False}
TASK_DEFAULTS: dict[str, Any] = {
    "sample_rate": 16000, "feature_type": "wav", "feature_rate": 100, "feature_dim": 100, "deltas": True,
    "normalize": False, "mask_type": "random_mask", "max_sample_size": None}
CRITERION_DEFAULTS: dict[str, Any] = {"reconstruction_weight": 10.0, "classification_weight": 1.0}


class Pickled:
    """Stand-in for a class a checkpoint names that we do not import: it keeps what it was given."""

    name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.name}>"


def read_checkpoint(path: str | Path) -> dict:
    """torch.load(weights_only=True) of a fairseq checkpoint, foreign classes as `Pickled` stand-ins."""
    path = Path(path)
    what = f"{path} is not a fairseq MAE-AST checkpoint (a torch.save'd dict with 'model' and 'cfg' or 'args')"
    if not path.is_file():
        raise MaeastError(f"{path}: no such file; give a fairseq MAE-AST checkpoint such as "
                          f"chunk_patch_75_12LayerEncoder.pt")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        stand_ins = [(type("Pickled", (Pickled,), {"name": n}), n) for n in names]
        with torch.serialization.safe_globals(stand_ins):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (ValueError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, KeyError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MaeastError(f"{what}: {reason}") from None
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict)
            and (ckpt.get("cfg") is not None or ckpt.get("args") is not None)):
        keys = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise MaeastError(f"{what}; it holds {keys}")
    return ckpt


def plain(x: Any) -> Any:
    """Stand-ins and containers -> plain dicts, lists and values."""
    if isinstance(x, Pickled):
        state = x.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):  # (dict, slots)
            state = {**(state[0] or {}), **state[1]}
        if isinstance(state, dict):
            for key in ("_content", "_val"):  # omegaconf containers and value nodes
                if key in state:
                    return plain(state[key])
            return {k: plain(v) for k, v in state.items()}  # argparse.Namespace and plain objects
        if state is None and len(x.args) == 1:  # enum members: Cls(value)
            return plain(x.args[0])
        return x
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def _scalar(x: Any) -> Any:
    """A config value as JSON can hold it (anything else by its repr)."""
    return x if isinstance(x, (str, int, float, bool, type(None))) else repr(x)


@dataclass
class Official:
    """The official config fields that matter, defaults filled in."""

    model: dict[str, Any]
    task: dict[str, Any]
    criterion: dict[str, Any]


def official_config(ckpt: dict) -> Official:
    """The model, task and criterion configs of a fairseq checkpoint ("cfg", or the legacy "args")."""
    cfg = plain(ckpt.get("cfg"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        model, task, crit = cfg["model"], cfg.get("task") or {}, cfg.get("criterion") or {}
    elif isinstance(args := plain(ckpt.get("args")), dict):
        model = task = crit = args
    else:
        raise MaeastError("the checkpoint's 'cfg' has no 'model' section and it has no 'args': not a fairseq "
                          "MAE-AST checkpoint")
    name = model.get("_name", model.get("arch"))
    if name not in (None, "mae_ast"):
        raise MaeastError(f"the checkpoint holds a fairseq {name!r} model, not mae_ast")

    def fill(section: str, d: dict, defaults: dict) -> dict:
        out = {k: v if d.get(k) is None else _scalar(d[k]) for k, v in defaults.items()}
        for k, v in out.items():
            if isinstance(defaults[k], (int, float)) and not isinstance(v, (int, float)):
                raise MaeastError(f"the checkpoint's config {section}.{k} = {v!r} is not a number")
        return out

    return Official(fill("model", model, MODEL_DEFAULTS), fill("task", task, TASK_DEFAULTS),
                    fill("criterion", crit, CRITERION_DEFAULTS))
