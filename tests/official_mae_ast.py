"""The official MAE-AST, written out by hand in plain torch for the converter's tests: fairseq checkpoints
with the official key names and shapes (AlanBaade/MAE-AST-Public, mae_ast/models/mae_ast.py), and the
official forward pass (fairseq MultiheadAttention with separate q/k/v projections, BatchNorm * 0.5,
nn.Unfold patches). Not a test module: tests/test_convert.py imports it.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

from maeast.model import Encoder, make_config

YAML_MODEL = {"_name": "mae_ast", "dropout_input": 0.1, "dropout": 0.1, "attention_dropout": 0.1,
              "activation_dropout": 0.0, "feature_grad_mult": 0.1, "encoder_layerdrop": 0.05, "decoder_layerdrop": 0.0,
              "encoder_layers": 12, "decoder_layers": 2, "random_mask_prob": 0.75, "enc_conv_pos": False,
              "enc_sine_pos": True, "dec_conv_pos": False, "dec_sine_pos": True, "encoder_embed_dim": 768,
              "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12, "activation_fn": "gelu",
              "layer_norm_first": False, "use_post_enc_proj": False, "decoder_embed_dim": 768,
              "max_token_length": 48000}
YAML_TASK = {"_name": "mae_ast_pretraining", "data": "/data", "feature_type": "fbank", "mask_type": "random_mask",
             "sample_rate": 16000, "max_sample_size": 250000, "min_sample_size": 32000, "feature_rate": 100,
             "feature_dim": 128, "pad_audio": False, "random_crop": True, "normalize": False, "deltas": False}
PATCH = {"ast_kernel_size_chan": 16, "ast_kernel_size_time": 16, "ast_kernel_stride_chan": 16,
         "ast_kernel_stride_time": 16}
FRAME = {"ast_kernel_size_chan": 128, "ast_kernel_size_time": 2, "ast_kernel_stride_chan": 128,
         "ast_kernel_stride_time": 2}
SMALL = {"encoder_layers": 2, "decoder_layers": 1, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 48,
         "encoder_attention_heads": 4, "decoder_embed_dim": 32, "max_token_length": 700}


def official_keys(m: dict, feature_dim: int) -> dict[str, tuple]:
    """The state dict keys and shapes of MAE_AST(cfg) in the official code, listed by hand."""
    D, Dd, H, P = m["encoder_embed_dim"], m["decoder_embed_dim"], m["encoder_ffn_embed_dim"], \
        m["ast_kernel_size_time"] * m["ast_kernel_size_chan"]
    keys = {"post_extract_proj.weight": (D, P), "post_extract_proj.bias": (D,), "layer_norm.weight": (feature_dim,),
            "layer_norm.bias": (feature_dim,), "batch_norm.running_mean": (1,), "batch_norm.running_var": (1,),
            "batch_norm.num_batches_tracked": (), "encoder_mask_emb": (D,),
            "enc_sine_pos_embed.pe": (1, m["max_token_length"], D)}
    for stack, dim, n in (("encoder", D, m["encoder_layers"]), ("decoder", Dd, m["decoder_layers"])):
        for i in range(n):
            p = f"{stack}.layers.{i}."
            for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
                keys[p + f"self_attn.{proj}.weight"], keys[p + f"self_attn.{proj}.bias"] = (dim, dim), (dim,)
            keys[p + "self_attn_layer_norm.weight"], keys[p + "self_attn_layer_norm.bias"] = (dim,), (dim,)
            keys[p + "fc1.weight"], keys[p + "fc1.bias"] = (H, dim), (H,)
            keys[p + "fc2.weight"], keys[p + "fc2.bias"] = (dim, H), (dim,)
            keys[p + "final_layer_norm.weight"], keys[p + "final_layer_norm.bias"] = (dim,), (dim,)
        keys[f"{stack}.layer_norm.weight"], keys[f"{stack}.layer_norm.bias"] = (dim,), (dim,)
        if stack == "encoder" and m["use_post_enc_proj"]:
            keys["post_enc_proj.weight"], keys["post_enc_proj.bias"] = (Dd, D), (Dd,)
    keys["decoder_mask_emb"] = (Dd,)
    keys["dec_sine_pos_embed.pe"] = (1, m["max_token_length"], Dd)
    for head in ("final_proj_reconstruction", "final_proj_classification"):
        keys[f"{head}.weight"], keys[f"{head}.bias"] = (P, Dd), (P,)
    return keys


def official_pe(max_len: int, d: int) -> torch.Tensor:
    """SinusoidalPositionalEncoding.pe of the official code."""
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
    pe = torch.zeros(1, max_len, d)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe


def official_state(m: dict, feature_dim: int = 128, seed: int = 0) -> OrderedDict:
    """Random weights under the official names (LayerNorm gains near 1, real-looking BatchNorm statistics)."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in official_keys(m, feature_dim).items():
        if key.endswith("pe"):
            state[key] = official_pe(shape[1], shape[2])
        elif key == "batch_norm.running_mean":
            state[key] = torch.tensor([-5.5])
        elif key == "batch_norm.running_var":
            state[key] = torch.tensor([14.0])
        elif key == "batch_norm.num_batches_tracked":
            state[key] = torch.tensor(400000)
        elif "layer_norm.weight" in key:
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


def fairseq_checkpoint(state, model_cfg, task_cfg, **extra) -> dict:
    """The layout fairseq's trainer saves (cfg as plain containers)."""
    return {"args": None, "cfg": {"common": {"fp16": True}, "model": model_cfg, "task": task_cfg,
                                  "criterion": {"_name": "mae_ast", "classification_weight": 1.0,
                                                "reconstruction_weight": 10.0}},
            "model": state, "criterion": None,
            "optimizer_history": [{"criterion_name": "MAE_AST_Criterion", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {"best": None}, "num_updates": 600000}],
            "task_state": {}, "extra_state": {"metrics": {}, "previous_training_time": 12.5}, **extra}


def small(kernel: dict, **over) -> dict:
    return {**YAML_MODEL, **kernel, **SMALL, **over}


def official_stack(s: dict, prefix: str, x: torch.Tensor, m: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """fairseq-style TransformerEncoder of MAE-AST (eval, no padding): x [B, N, D] -> (x, hidden_states)."""
    layers = m["encoder_layers"] if prefix == "encoder" else m["decoder_layers"]
    D, heads = x.shape[-1], m["encoder_attention_heads"]  # the decoder takes the encoder's heads and FFN
    ln = lambda y, k: F.layer_norm(y, (D,), s[k + ".weight"], s[k + ".bias"], 1e-5)  # noqa: E731
    first = m["layer_norm_first"]
    if not first:
        x = ln(x, f"{prefix}.layer_norm")
    hidden_states = []
    for i in range(layers):
        p = f"{prefix}.layers.{i}."

        def attn(y):
            B, N, _ = y.shape
            split = lambda t: t.view(B, N, heads, D // heads).transpose(1, 2)  # noqa: E731
            scaling = (D // heads) ** -0.5  # fairseq MultiheadAttention scales q after q_proj
            q = split(F.linear(y, s[p + "self_attn.q_proj.weight"], s[p + "self_attn.q_proj.bias"]) * scaling)
            k = split(F.linear(y, s[p + "self_attn.k_proj.weight"], s[p + "self_attn.k_proj.bias"]))
            v = split(F.linear(y, s[p + "self_attn.v_proj.weight"], s[p + "self_attn.v_proj.bias"]))
            o = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v  # [B, H, N, Dh]
            return F.linear(o.transpose(1, 2).reshape(B, N, D), s[p + "self_attn.out_proj.weight"],
                            s[p + "self_attn.out_proj.bias"])

        def ffn(y):
            return F.linear(F.gelu(F.linear(y, s[p + "fc1.weight"], s[p + "fc1.bias"])), s[p + "fc2.weight"],
                            s[p + "fc2.bias"])

        if first:
            x = x + attn(ln(x, p + "self_attn_layer_norm"))
            x = x + ffn(ln(x, p + "final_layer_norm"))
        else:
            x = ln(x + attn(x), p + "self_attn_layer_norm")
            x = ln(x + ffn(x), p + "final_layer_norm")
        hidden_states.append(x)
    return (ln(x, f"{prefix}.layer_norm") if first else x), hidden_states


def official_tokens(s: dict, m: dict, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm (eval) x 0.5, nn.Unfold patches, post_extract_proj: [B, T, F] -> (patches, features)."""
    pt, pf = m["ast_kernel_size_time"], m["ast_kernel_size_chan"]
    x = feats.unsqueeze(1)  # [B, 1, T, F]
    x = (x - s["batch_norm.running_mean"]) / torch.sqrt(s["batch_norm.running_var"] + 1e-5) * 0.5
    patches = F.unfold(x, kernel_size=(pt, pf), stride=(pt, pf)).transpose(-1, -2)  # [B, N, pt * pf]
    return patches, F.linear(patches, s["post_extract_proj.weight"], s["post_extract_proj.bias"])


def official_encoder_forward(s: dict, m: dict, feats: torch.Tensor, hidden: bool = False):
    """The official forward (mask=False, features_only=True, eval) in plain torch: [B, T, F] -> [B, N, D]
    (with hidden=True: (x, the hidden_states of every layer))."""
    _, x = official_tokens(s, m, feats)
    x = x + s["enc_sine_pos_embed.pe"][:, : x.shape[1]]
    x, hidden_states = official_stack(s, "encoder", x, m)
    return (x, hidden_states) if hidden else x


def official_masked_forward(s: dict, m: dict, feats: torch.Tensor, retained: list[int], masked: list[int]):
    """The official forward with one mask for the batch (eval): -> (logit_m_list_recon, logit_m_list_class,
    target_m_list), the masked tokens in index order."""
    patches, features = official_tokens(s, m, feats)
    B, T, C = features.shape
    features = features + s["enc_sine_pos_embed.pe"][:, :T]
    x, _ = official_stack(s, "encoder", features[:, retained], m)
    if m["use_post_enc_proj"]:
        x = F.linear(x, s["post_enc_proj.weight"], s["post_enc_proj.bias"])
    full_x = torch.empty((B, T, x.shape[-1]), dtype=x.dtype)
    full_x[:, retained] = x
    full_x[:, masked] = s["decoder_mask_emb"]
    full_x = full_x + s["dec_sine_pos_embed.pe"][:, :T]
    x, _ = official_stack(s, "decoder", full_x, m)
    mask_indices = torch.zeros(B, T, dtype=torch.bool)
    mask_indices[:, masked] = True
    x = x[mask_indices].view(B, len(masked), -1)
    return (F.linear(x, s["final_proj_reconstruction.weight"], s["final_proj_reconstruction.bias"]),
            F.linear(x, s["final_proj_classification.weight"], s["final_proj_classification.bias"]),
            patches[mask_indices].view(B, len(masked), -1))


def hand_copied_encoder(s: dict, m: dict) -> Encoder:
    """Our Encoder with the official weights copied in one by one."""
    cfg = make_config("base", dim=m["encoder_embed_dim"], depth=m["encoder_layers"],
                      heads=m["encoder_attention_heads"], ffn_dim=m["encoder_ffn_embed_dim"],
                      patch_time=m["ast_kernel_size_time"], patch_freq=m["ast_kernel_size_chan"],
                      pre_norm=m["layer_norm_first"], decoder_dim=m["encoder_embed_dim"], decoder_heads=4)
    enc = Encoder(cfg).eval()
    with torch.no_grad():
        enc.input_norm.running_mean.copy_(s["batch_norm.running_mean"])
        enc.input_norm.running_var.copy_(s["batch_norm.running_var"])
        enc.proj.weight.copy_(s["post_extract_proj.weight"])
        enc.proj.bias.copy_(s["post_extract_proj.bias"])
        outer = enc.transformer.norm_out if cfg.pre_norm else enc.transformer.norm_in
        outer.weight.copy_(s["encoder.layer_norm.weight"])
        outer.bias.copy_(s["encoder.layer_norm.bias"])
        for i, block in enumerate(enc.transformer.blocks):
            p = f"encoder.layers.{i}."
            for part in ("weight", "bias"):
                getattr(block.attn.qkv, part).copy_(torch.cat([s[p + f"self_attn.q_proj.{part}"],
                                                               s[p + f"self_attn.k_proj.{part}"],
                                                               s[p + f"self_attn.v_proj.{part}"]]))
                getattr(block.attn.out, part).copy_(s[p + f"self_attn.out_proj.{part}"])
                getattr(block.norm1, part).copy_(s[p + f"self_attn_layer_norm.{part}"])
                getattr(block.fc1, part).copy_(s[p + f"fc1.{part}"])
                getattr(block.fc2, part).copy_(s[p + f"fc2.{part}"])
                getattr(block.norm2, part).copy_(s[p + f"final_layer_norm.{part}"])
    return enc
