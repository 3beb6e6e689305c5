"""MAEAST end to end on the tiny preset: gradients, padding, the encoder alone, config, counts."""

import json

import pytest
import torch

from maeast.batch import Batch
from maeast.errors import MaeastError
from maeast.model import MAEAST, Encoder, ModelConfig, build_model, make_config, param_groups
from maeast.model.losses import masked_infonce, masked_mse
from maeast.precision import autocast

NO_DROPOUT = dict(dropout=0.0, attn_dropout=0.0, input_dropout=0.0, layerdrop=0.0)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def fbank(B, T, F=128, seed=0):
    """Log-mel-like input: a smooth spectral envelope plus frame-to-frame variation."""
    g = gen(seed)
    envelope = torch.linspace(-2.0, -8.0, F)[None, None, :]
    return envelope + 1.5 * torch.randn(B, T, F, generator=g) - 4.0


def padding(lengths, T):
    return torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]  # [B, T] True = pad


@pytest.mark.parametrize("overrides", [
    {},  # 16x16 patches, post-LN
    {"patch_time": 2, "patch_freq": 128},  # frame tokens
    {"pre_norm": True, "mask_type": "chunk"},
    {"decoder_dim": 32, "decoder_heads": 2, "decoder_ffn_dim": 64, "mask_type": "tf"},  # narrower decoder
    {"mask_type": "chunk_official"},  # the official masks, padded batches included
    {"patch_time": 2, "patch_freq": 128, "mask_type": "retain_spans", "span_prob": 0.3},
])
def test_every_parameter_gets_a_finite_gradient(overrides):
    model = build_model("tiny", **{**NO_DROPOUT, **overrides})
    out = model(fbank(3, 160), padding_mask=padding([160, 130, 100], 160), generator=gen())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_loss_matches_a_naive_per_clip_loop():
    """The official criterion, clip by clip: F.mse_loss and log-softmax of dot products to the diagonal."""
    model = build_model("tiny", **NO_DROPOUT)
    lengths = [160, 129, 64]
    out = model(fbank(3, 160), padding_mask=padding(lengths, 160), generator=gen(1))
    se, nce, count = 0.0, 0.0, 0
    for b, length in enumerate(lengths):
        n = (~out.target_pad[b]).sum()
        assert n == (length // 16) * 8 - int(0.25 * (length // 16) * 8)  # visible: the official int()
        pred, cls, tgt = out.recon[b, :n], out.classify[b, :n], out.target[b, :n]
        se += torch.nn.functional.mse_loss(pred, tgt, reduction="sum") / tgt.shape[-1]
        nce -= torch.log_softmax(cls @ tgt.T, dim=-1).diagonal().sum()
        count += n
    assert torch.allclose(out.parts["mse"], se / count, rtol=1e-5)
    assert torch.allclose(out.parts["infonce"], nce / count, rtol=1e-5)
    assert torch.allclose(out.loss, 10 * se / count + nce / count, rtol=1e-5)


def test_losses_equal_the_official_batched_form_without_padding():
    g = gen(2)
    pred, cls, tgt = (torch.randn(4, 30, 256, generator=g) for _ in range(3))
    valid = torch.ones(4, 30, dtype=torch.bool)
    assert torch.allclose(masked_mse(pred, tgt, valid), torch.nn.functional.mse_loss(pred, tgt))
    official = -torch.log_softmax(cls @ tgt.transpose(1, 2), dim=-1).diagonal(dim1=-2, dim2=-1).mean()
    assert torch.allclose(masked_infonce(cls, tgt, valid), official)


def test_padded_frames_do_not_change_the_loss():
    model = build_model("tiny", **NO_DROPOUT)
    x, pm = fbank(3, 160), padding([160, 120, 70], 160)
    garbage = x.masked_fill(pm[..., None], 1e4)
    zeros = x.masked_fill(pm[..., None], 0.0)
    a = model(garbage, padding_mask=pm, generator=gen(3))
    b = model(zeros, padding_mask=pm, generator=gen(3))
    assert torch.isfinite(a.loss) and torch.allclose(a.loss, b.loss)
    assert torch.equal(a.mask, b.mask)
    assert a.mask[1, 7 * 8:].sum() == 0 and a.mask[2, 4 * 8:].sum() == 0  # padding is never a target
    # The batch statistics come from real frames only (two updates of momentum 0.1 from 0).
    real = x[~pm]
    bn = model.encoder.input_norm
    assert torch.allclose(bn.running_mean, (1 - 0.9 ** 2) * real.mean(), rtol=1e-4)
    expected_var = 0.9 ** 2 * 1.0 + (1 - 0.9 ** 2) * real.var(unbiased=True)
    assert torch.allclose(bn.running_var, expected_var, rtol=1e-4)


@pytest.mark.parametrize("lengths", [None, [160, 100]])
def test_encoder_sees_only_visible_tokens(lengths):
    model = build_model("tiny", **NO_DROPOUT).eval()  # eval: the input statistics stay fixed
    x = fbank(2, 160)
    pm = None if lengths is None else padding(lengths, 160)
    out = model(x, padding_mask=pm, generator=gen(4))
    masked = out.mask.reshape(2, 10, 8)[..., None, :, None].expand(2, 10, 16, 8, 16).reshape(2, 160, 128)
    changed = model(x + 5.0 * masked, padding_mask=pm, generator=gen(4))
    assert torch.equal(changed.mask, out.mask)
    assert torch.allclose(changed.recon, out.recon, atol=1e-5)  # the decoder only saw mask tokens there
    assert not torch.allclose(changed.target, out.target)


def test_padding_does_not_change_the_encoder_outputs():
    encoder = build_model("tiny").encoder.eval()
    x = fbank(2, 160)
    alone = encoder(x[:1, :96])
    pm = padding([96, 160], 160)
    batch = encoder(x.masked_fill(pm[..., None], 7.0), padding_mask=pm)
    n = alone.x.shape[1]
    assert n == 6 * 8 and batch.padding_mask[0].sum() == 80 - 48
    assert torch.allclose(batch.x[0, :n], alone.x[0], atol=1e-5)


def test_token_counts_and_layer_results():
    encoder = build_model("tiny").encoder.eval()
    out = encoder(fbank(1, 998), layer_results=True)
    assert out.x.shape == (1, 496, 64) and out.padding_mask is None and out.grid == (62, 8)
    assert len(out.layers) == 2 and torch.equal(out.layers[-1], out.x)
    frames = build_model("tiny", patch_time=2, patch_freq=128).encoder.eval()
    assert frames(fbank(1, 998)).x.shape == (1, 499, 64)


def test_batch_input_equals_tensor_input():
    model = build_model("tiny", **NO_DROPOUT)
    x, pm = fbank(2, 64), padding([64, 48], 64)
    a = model(Batch(x, pm, None, ["a", "b"]), generator=gen(5))
    b = model(x, padding_mask=pm, generator=gen(5))
    assert torch.allclose(a.loss, b.loss)


def test_input_norm_none_passes_features_through():
    model = build_model("tiny", input_norm="none", **NO_DROPOUT)
    x = fbank(1, 64)
    out = model(x, generator=gen(6))
    patches = x.reshape(1, 4, 16, 8, 16).permute(0, 1, 3, 2, 4).reshape(1, 32, 256)
    assert torch.equal(out.target[0], patches[0, out.ids_masked[0]])


def test_encoder_exports_and_rebuilds_from_json():
    model = build_model("tiny", patch_time=8, **NO_DROPOUT)
    model(fbank(2, 64), generator=gen(7)).loss.backward()  # one training forward moves the running stats
    state = model.encoder.state_dict()
    assert "input_norm.running_mean" in state and float(state["input_norm.running_mean"]) != 0.0
    rebuilt = Encoder(ModelConfig.from_dict(json.loads(json.dumps(model.cfg.to_dict()))))
    rebuilt.load_state_dict(state, strict=True)
    x = fbank(1, 64, seed=1)
    assert torch.allclose(rebuilt.eval()(x).x, model.encoder.eval()(x).x)


def test_config_errors_name_the_problem():
    with pytest.raises(MaeastError, match="unknown key 'depht'"):
        make_config("tiny", depht=3)
    with pytest.raises(MaeastError, match="unknown model preset"):
        make_config("huge")
    with pytest.raises(MaeastError, match="mask_type"):
        make_config("tiny", mask_type="spans")
    with pytest.raises(MaeastError, match="multiple of heads"):
        make_config("tiny", dim=66)
    with pytest.raises(MaeastError, match=r"expected fbank \[batch, frames, 128\]"):
        build_model("tiny")(torch.zeros(1, 64, 80))
    with pytest.raises(MaeastError, match="fewer than 16 real frames"):
        build_model("tiny")(torch.zeros(2, 64, 128), padding_mask=padding([64, 10], 64))


def test_base_parameter_count_by_formula():
    d, f, depth, dec_depth, patch = 768, 3072, 12, 2, 16 * 16
    block = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d
    assert block == 7_087_872
    formula = (depth + dec_depth) * block + (patch * d + d) + 2 * (d * patch + patch)
    formula += 2 * 2 * d + d  # post-LN input LayerNorm of encoder and decoder, the mask token
    model = MAEAST(make_config("base"))
    assert sum(p.numel() for p in model.parameters()) == formula == 99_825_152


def test_param_groups_decay_and_layer_scales():
    model = build_model("tiny")
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    seen = [p for g in groups for p in g["params"]]
    assert len(seen) == len(list(model.parameters())) == len({id(p) for p in seen})
    by_id = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_id[id(named["decoder.mask_token"])]["weight_decay"] == 0.0
    assert by_id[id(named["encoder.proj.bias"])]["weight_decay"] == 0.0
    assert by_id[id(named["encoder.proj.weight"])]["weight_decay"] == 0.05
    assert by_id[id(named["encoder.proj.weight"])]["lr_scale"] == 0.5 ** 3
    assert by_id[id(named["encoder.transformer.blocks.0.fc1.weight"])]["lr_scale"] == 0.5 ** 2
    assert by_id[id(named["encoder.transformer.blocks.1.fc1.weight"])]["lr_scale"] == 0.5
    assert by_id[id(named["decoder.head_recon.weight"])]["lr_scale"] == 1.0
    torch.optim.AdamW(groups, lr=1e-3)  # a valid optimizer spec


def test_official_init():
    model = build_model("base", depth=1, decoder_depth=1)
    w = model.encoder.transformer.blocks[0].fc1.weight
    assert abs(w.std().item() - 0.02) < 1e-3 and model.encoder.transformer.blocks[0].fc1.bias.abs().sum() == 0
    token = model.decoder.mask_token
    assert 0.0 <= token.min() and token.max() < 1.0 and abs(token.mean().item() - 0.5) < 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bf16_step():
    model = build_model("tiny").cuda()
    x, pm = fbank(2, 160).cuda(), padding([160, 100], 160).cuda()
    with autocast(x.device):
        out = model(x, padding_mask=pm, generator=torch.Generator("cuda").manual_seed(0))
    assert out.recon.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_input_batchnorm_matches_the_official_batchnorm2d():
    from maeast.model.norm import MaskedBatchNorm

    x = fbank(3, 64)
    ours, official = MaskedBatchNorm(0.5), torch.nn.BatchNorm2d(1, affine=False)
    for _ in range(2):
        assert torch.allclose(ours(x), official(x.unsqueeze(1)).squeeze(1) * 0.5, atol=1e-5)
    assert torch.allclose(ours.running_mean, official.running_mean)
    assert torch.allclose(ours.running_var, official.running_var)
    ours.eval(), official.eval()
    assert torch.allclose(ours(x), official(x.unsqueeze(1)).squeeze(1) * 0.5, atol=1e-5)


def test_layerdrop_skips_blocks_but_keeps_layer_indices():
    encoder = build_model("tiny", depth=6, layerdrop=0.5).encoder.train()
    out = encoder(fbank(1, 64), layer_results=True, generator=gen(8))
    same = [torch.equal(a, b) for a, b in zip(out.layers, out.layers[1:])]
    assert len(out.layers) == 6 and any(same) and not all(same)  # a skipped block repeats its input


def test_mae_init():
    model = build_model("base", depth=1, decoder_depth=1, init="mae")
    w = model.encoder.transformer.blocks[0].fc1.weight  # xavier-uniform: std sqrt(2 / (fan_in + fan_out))
    assert abs(w.std().item() - (2 / (768 + 3072)) ** 0.5) < 1e-3
    assert abs(model.decoder.mask_token.std().item() - 0.02) < 3e-3
