"""`maeast convert-official`: a published MAE-AST checkpoint (fairseq) -> our exported encoder and model.

Reading the checkpoint and its config without fairseq is maeast.official. Here every tensor is checked
against the key and shape the official code gives it for the checkpoint's config, then mapped
(ours <- official):
    encoder.input_norm.*                  <- batch_norm.{running_mean,running_var,num_batches_tracked}
    encoder.proj.*                        <- post_extract_proj.*
    encoder.transformer.norm_in.*         <- encoder.layer_norm.*  (post-LN; pre-LN: norm_out.*)
    encoder.transformer.blocks.N.attn.qkv.* <- encoder.layers.N.self_attn.{q,k,v}_proj.*  (rows q, k, v)
    ....blocks.N.attn.out.*               <- ....layers.N.self_attn.out_proj.*
    ....blocks.N.{norm1,fc1,fc2,norm2}.*  <- ....layers.N.{self_attn_layer_norm,fc1,fc2,final_layer_norm}.*
    decoder.proj.*                        <- post_enc_proj.*  (when decoder and encoder widths differ)
    decoder.mask_token                    <- decoder_mask_emb
    decoder.transformer.*                 <- decoder.*  (as the encoder stack)
    decoder.head_recon.*, decoder.head_nce.* <- final_proj_reconstruction.*, final_proj_classification.*
    encoder.positions.table, decoder.positions.table <- {enc,dec}_sine_pos_embed.pe[0, :POSITIONS_KEPT]
                                          only when they differ from exact sinusoids (below)
Checked, then left out (no effect on any output of the official model):
    enc_sine_pos_embed.pe, dec_sine_pos_embed.pe   when both equal our float32 sinusoid to PE_EXACT
                                                   (rows < POSITIONS_KEPT): the model recomputes them
    layer_norm.*                                   LayerNorm(feature_dim) that forward never calls
    encoder_mask_emb                               masked tokens are removed before the encoder
Anything else, and configs our model cannot represent (convolutional positions, no sinusoidal
positions, patches further apart than their size, non-GELU activations, waveform-normalized or delta
features), is refused with a message naming the tensor or the config field. Half-precision weights
become float32. Patches closer than their size (model.ast_kernel_stride_* below ast_kernel_size_*:
nn.Unfold's overlapping tiles) become ModelConfig.stride_time / stride_freq.

Positions: fairseq's fp16 training (common.fp16, as the official config) saved the sinusoid tables
rounded to float16, up to 2.4e-4 off, and the released models were trained with those numbers. A
table further than PE_EXACT from our sinusoid (but within PE_ATOL: still the official layout) is kept:
the converted model gets ModelConfig.stored_positions = its rows and adds the checkpoint's own
numbers, which reproduces the official forward to float32 noise (tests/test_convert.py, layer by layer).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from maeast.artifacts import features_record, write_encoder, write_model
from maeast.errors import MaeastError
from maeast.features import get_config as get_fbank
from maeast.model import MAEAST, ModelConfig
from maeast.model.positions import sinusoid
from maeast.official import Official, official_config, plain, read_checkpoint

POSITIONS_KEPT = 8192  # pe rows compared, and kept when they differ: 131 s of patch tokens, 164 s of frame tokens
PE_ATOL = 1e-3  # the official layout: float16 rounding is within 2.4e-4 of ours, a wrong layout ~1 off
PE_EXACT = 1e-5  # our float32 sinusoid: within a few ulps of the sine (the same float32 angles)
MASK_TYPES = {"random_mask": "random", "random_mask_batched": "random", "chunk_mask": "chunk_official",
              "retain_spans": "retain_spans"}
POSITION_TABLES = {"encoder.positions.table": "enc_sine_pos_embed.pe", "decoder.positions.table": "dec_sine_pos_embed.pe"}
DROPPED = {"enc_sine_pos_embed.pe": "equal to our sinusoid positions, recomputed at run time (else kept)",
           "dec_sine_pos_embed.pe": "equal to our sinusoid positions, recomputed at run time (else kept)",
           "layer_norm.weight": "LayerNorm(feature_dim) never called by the official forward",
           "layer_norm.bias": "LayerNorm(feature_dim) never called by the official forward",
           "encoder_mask_emb": "masked tokens are removed before the encoder: never reaches an output"}


# ---- the official config in ours -------------------------------------------------------------------

def model_config(off: Official) -> ModelConfig:
    """Our ModelConfig for an official config, or a MaeastError naming what cannot be represented."""
    m, t, c = off.model, off.task, off.criterion

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise MaeastError(f"cannot convert: {what}; maeast's model has no counterpart")

    for axis in ("time", "chan"):  # nn.Unfold's stride: below the size, overlapping tokens (stride_time/_freq)
        size, stride = int(m[f"ast_kernel_size_{axis}"]), int(m[f"ast_kernel_stride_{axis}"])
        need(1 <= stride <= size,
             f"patches {stride} apart, more than their size {size} (model.ast_kernel_stride_{axis})")
    need(str(m["activation_fn"]) == "gelu", f"activation {m['activation_fn']!r} (model.activation_fn)")
    need(not m["enc_conv_pos"], "enc_conv_pos_embed.*: convolutional positions (model.enc_conv_pos)")
    need(not m["dec_conv_pos"], "dec_conv_pos_embed.*: convolutional positions (model.dec_conv_pos)")
    need(bool(m["enc_sine_pos"]) and bool(m["dec_sine_pos"]),
         "a model without sinusoidal positions (model.enc_sine_pos / dec_sine_pos false)")
    need(bool(m["use_post_enc_proj"]) == (m["decoder_embed_dim"] != m["encoder_embed_dim"]),
         "post_enc_proj.*: a projection between equal encoder and decoder widths (model.use_post_enc_proj)")
    need(t["feature_type"] == "fbank" and not t["deltas"] and not t["normalize"],
         f"features other than plain Kaldi fbank (task.feature_type={t['feature_type']!r}, "
         f"deltas={t['deltas']}, normalize={t['normalize']})")
    need(t["sample_rate"] == 16000 and t["feature_rate"] == 100,
         f"features at {t['sample_rate']} Hz, {t['feature_rate']} frames/s (task.sample_rate, task.feature_rate)")
    need(t["feature_dim"] % m["ast_kernel_size_chan"] == 0,
         f"task.feature_dim {t['feature_dim']} not a multiple of model.ast_kernel_size_chan "
         f"{m['ast_kernel_size_chan']} (the official Unfold drops the last bins)")
    mask = MASK_TYPES.get(str(t["mask_type"]), "random")  # masking only matters to continued pretraining
    spans = mask == "retain_spans"  # random_mask_prob is its span probability (1.45 in the README)
    ratio = float(m["random_mask_prob"]) if 0 < float(m["random_mask_prob"]) < 1 and not spans else 0.75
    return ModelConfig(
        n_mels=int(t["feature_dim"]), patch_time=int(m["ast_kernel_size_time"]),
        patch_freq=int(m["ast_kernel_size_chan"]), input_norm="batchnorm", input_scale=0.5,
        stride_time=_stride(m, "time"), stride_freq=_stride(m, "chan"),
        dim=int(m["encoder_embed_dim"]), depth=int(m["encoder_layers"]), heads=int(m["encoder_attention_heads"]),
        ffn_dim=int(m["encoder_ffn_embed_dim"]), pre_norm=bool(m["layer_norm_first"]),
        dropout=float(m["dropout"]), attn_dropout=float(m["attention_dropout"]),
        act_dropout=float(m["activation_dropout"]), input_dropout=float(m["dropout_input"]),
        layerdrop=float(m["encoder_layerdrop"]),
        # the official decoder layers take the encoder's heads and FFN width
        decoder_dim=int(m["decoder_embed_dim"]), decoder_depth=int(m["decoder_layers"]),
        decoder_heads=int(m["encoder_attention_heads"]), decoder_ffn_dim=int(m["encoder_ffn_embed_dim"]),
        decoder_layerdrop=float(m["decoder_layerdrop"]), mask_type=mask, mask_ratio=ratio,
        span_length=int(m["mask_length"]), span_prob=float(m["random_mask_prob"]) if spans else 1.45,
        mse_weight=float(c["reconstruction_weight"]), infonce_weight=float(c["classification_weight"]),
        init="official")


def _stride(m: dict, axis: str) -> int | None:
    """ModelConfig's stride of an official axis: None where the tokens do not overlap (stride = size)."""
    stride = int(m[f"ast_kernel_stride_{axis}"])
    return None if stride == int(m[f"ast_kernel_size_{axis}"]) else stride


# ---- keys and shapes --------------------------------------------------------------------------------

def _stack_shapes(prefix: str, dim: int, ffn: int, depth: int) -> dict[str, tuple[int, ...]]:
    """fairseq TransformerEncoder as MAE-AST builds it: layer_norm + TransformerSentenceEncoderLayers."""
    shapes = {f"{prefix}.layer_norm.weight": (dim,), f"{prefix}.layer_norm.bias": (dim,)}
    for i in range(depth):
        layer = f"{prefix}.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes |= {f"{layer}.self_attn.{proj}.weight": (dim, dim), f"{layer}.self_attn.{proj}.bias": (dim,)}
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes |= {f"{layer}.{norm}.weight": (dim,), f"{layer}.{norm}.bias": (dim,)}
        shapes |= {f"{layer}.fc1.weight": (ffn, dim), f"{layer}.fc1.bias": (ffn,),
                   f"{layer}.fc2.weight": (dim, ffn), f"{layer}.fc2.bias": (dim,)}
    return shapes


def official_shapes(off: Official) -> dict[str, tuple[int, ...]]:
    """Every key of the official MAE_AST state dict for this config, with its shape."""
    m, t = off.model, off.task
    D, Dd, ffn = m["encoder_embed_dim"], m["decoder_embed_dim"], m["encoder_ffn_embed_dim"]
    P, F = m["ast_kernel_size_time"] * m["ast_kernel_size_chan"], t["feature_dim"]
    shapes = {"post_extract_proj.weight": (D, P), "post_extract_proj.bias": (D,),
              "layer_norm.weight": (F,), "layer_norm.bias": (F,), "batch_norm.running_mean": (1,),
              "batch_norm.running_var": (1,), "batch_norm.num_batches_tracked": (), "encoder_mask_emb": (D,),
              "decoder_mask_emb": (Dd,), "final_proj_reconstruction.weight": (P, Dd),
              "final_proj_reconstruction.bias": (P,), "final_proj_classification.weight": (P, Dd),
              "final_proj_classification.bias": (P,)}
    if m["enc_sine_pos"]:
        shapes["enc_sine_pos_embed.pe"] = (1, m["max_token_length"], D)
    if m["dec_sine_pos"]:
        shapes["dec_sine_pos_embed.pe"] = (1, m["max_token_length"], Dd)
    if m["use_post_enc_proj"]:
        shapes |= {"post_enc_proj.weight": (Dd, D), "post_enc_proj.bias": (Dd,)}
    return shapes | _stack_shapes("encoder", D, ffn, m["encoder_layers"]) | _stack_shapes("decoder", Dd, ffn,
                                                                                         m["decoder_layers"])


def _stack_map(ours: str, theirs: str, depth: int, pre_norm: bool) -> dict[str, tuple[str, ...]]:
    norm = "norm_out" if pre_norm else "norm_in"
    pairs: dict[str, tuple[str, ...]] = {}
    for p in ("weight", "bias"):
        pairs[f"{ours}.{norm}.{p}"] = (f"{theirs}.layer_norm.{p}",)
        for i in range(depth):
            a, b = f"{ours}.blocks.{i}", f"{theirs}.layers.{i}"
            pairs |= {f"{a}.attn.qkv.{p}": tuple(f"{b}.self_attn.{x}_proj.{p}" for x in "qkv"),
                      f"{a}.attn.out.{p}": (f"{b}.self_attn.out_proj.{p}",),
                      f"{a}.norm1.{p}": (f"{b}.self_attn_layer_norm.{p}",), f"{a}.fc1.{p}": (f"{b}.fc1.{p}",),
                      f"{a}.fc2.{p}": (f"{b}.fc2.{p}",), f"{a}.norm2.{p}": (f"{b}.final_layer_norm.{p}",)}
    return pairs


def key_map(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Our MAEAST key -> the official key(s) it is made of (several: concatenated along rows, in order)."""
    pairs = {f"encoder.input_norm.{b}": (f"batch_norm.{b}",)
             for b in ("running_mean", "running_var", "num_batches_tracked")}
    for p in ("weight", "bias"):
        pairs |= {f"encoder.proj.{p}": (f"post_extract_proj.{p}",),
                  f"decoder.head_recon.{p}": (f"final_proj_reconstruction.{p}",),
                  f"decoder.head_nce.{p}": (f"final_proj_classification.{p}",)}
        if cfg.decoder_dim != cfg.dim:
            pairs[f"decoder.proj.{p}"] = (f"post_enc_proj.{p}",)
    pairs["decoder.mask_token"] = ("decoder_mask_emb",)
    return (pairs | _stack_map("encoder.transformer", "encoder", cfg.depth, cfg.pre_norm)
            | _stack_map("decoder.transformer", "decoder", cfg.decoder_depth, cfg.pre_norm))


def convert_state_dict(state: dict[str, torch.Tensor], off: Official) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Official MAE_AST state dict -> (our ModelConfig, MAEAST state dict in float32). Works on meta tensors."""
    cfg = model_config(off)
    expected = official_shapes(off)
    for key, tensor in state.items():
        if key not in expected:
            raise MaeastError(f"cannot convert {key} {list(getattr(tensor, 'shape', []))}: the official MAE-AST "
                              f"with this checkpoint's config has no such tensor")
        if tuple(tensor.shape) != expected[key]:
            raise MaeastError(f"cannot convert {key}: shape {list(tensor.shape)}, the checkpoint's config gives "
                              f"{list(expected[key])}")
    missing = [k for k in expected if k not in state]
    if missing:
        raise MaeastError(f"the checkpoint lacks {missing[0]} (and {len(missing) - 1} more tensors) that the "
                          f"official MAE-AST with its config has")
    pairs = key_map(cfg)
    used = {k for keys in pairs.values() for k in keys}
    assert used | set(DROPPED) >= set(expected), sorted(set(expected) - used - set(DROPPED))
    exact = [check_positions(key, state[key]) for key in POSITION_TABLES.values()]  # both checked, always
    if not all(exact):
        rows = min(state["enc_sine_pos_embed.pe"].shape[1], POSITIONS_KEPT)
        cfg = dataclasses.replace(cfg, stored_positions=rows)
        pairs |= {ours: (theirs,) for ours, theirs in POSITION_TABLES.items()}
    out = {}
    for ours, theirs in pairs.items():
        parts = [state[k] for k in theirs]
        t = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        if ours in POSITION_TABLES:
            t = t[0, :cfg.stored_positions].clone()  # [1, L, D] -> [rows, D], not a view of all L rows
        out[ours] = t.float() if t.is_floating_point() else t
    return cfg, out


def check_positions(key: str, pe: torch.Tensor) -> bool:
    """Whether the official pe table [1, L, D] is our float32 sinusoid (on its first rows); a table that
    is not the official layout at all is refused."""
    if pe.is_meta:
        return True
    rows = min(pe.shape[1], POSITIONS_KEPT)
    ours = sinusoid(rows, pe.shape[2])  # [rows, D]
    error = float((pe[0, :rows].float() - ours).abs().max())
    tolerance = PE_ATOL + 2 * torch.finfo(pe.dtype).eps if pe.is_floating_point() else 0.0
    if not error <= tolerance:
        raise MaeastError(f"cannot convert {key}: it differs from maeast's sinusoid positions by {error:.3g} "
                          f"(tolerance {tolerance:.3g}); these are not the official MAE-AST positions")
    return error <= PE_EXACT


# ---- the command ------------------------------------------------------------------------------------

@dataclass
class Converted:
    out: Path
    config: ModelConfig
    tensors: int  # official tensors mapped
    dropped: list[str]  # official tensors checked and left out
    source_dtype: str
    step: int | None


def convert_official(checkpoint: str | Path, out: str | Path) -> Converted:
    """Write OUT/encoder.{safetensors,json} (the encoder export) and OUT/model.{safetensors,json}."""
    ckpt = read_checkpoint(checkpoint)
    state = {k: v for k, v in ckpt["model"].items()}
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise MaeastError(f"cannot convert {bad}: the checkpoint's 'model' entry is not a tensor")
    off = official_config(ckpt)
    cfg, weights = convert_state_dict(state, off)
    MAEAST(cfg).load_state_dict(weights, strict=True)  # every one of our tensors, right shapes
    history = plain(ckpt.get("optimizer_history")) or [{}]
    step = history[-1].get("num_updates") if isinstance(history[-1], dict) else None
    fb = dataclasses.replace(get_fbank("mae_ast"), n_mels=cfg.n_mels)
    max_samples, rate = off.task["max_sample_size"], off.task["sample_rate"]
    meta = {"model": cfg.to_dict(), "features": features_record(fb),
            "pretraining": {"step": step, "samples": None, "run_dir": None, "shards": [],
                            "max_seconds": max_samples / rate if isinstance(max_samples, int) and max_samples > 0
                            else 10.0,
                            "converted_from": str(Path(checkpoint).resolve()),
                            "official": {"model": off.model, "task": off.task, "criterion": off.criterion}}}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_encoder(weights, meta, out)
    write_model(weights, meta, out)
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()})
    dropped = sorted(DROPPED.keys() & state.keys() - ({*POSITION_TABLES.values()} if cfg.stored_positions else set()))
    return Converted(out, cfg, len(state) - len(dropped), dropped, "/".join(dtypes),
                     step if isinstance(step, int) else None)
