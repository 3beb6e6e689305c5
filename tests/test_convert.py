"""`maeast convert-official`: fairseq MAE-AST checkpoints made here with the official key names and shapes
(AlanBaade/MAE-AST-Public, mae_ast/models/mae_ast.py), written out by hand in tests/official_mae_ast.py.

The converted encoder must give the same outputs, on real speech, as (a) an Encoder whose weights are
copied by hand key by key and (b) the official forward pass written here in plain torch (fairseq
MultiheadAttention with separate q/k/v projections, BatchNorm * 0.5, nn.Unfold patches).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import sys
import types
from collections import OrderedDict

import pytest
import torch
from typer.testing import CliRunner

import maeast
from maeast.artifacts import load_model
from maeast.audio import load_clip
from maeast.cli.common import new_app
from maeast.cli.tools import register
from maeast.convert import convert_official, convert_state_dict, official_config, read_checkpoint
from maeast.errors import MaeastError
from maeast.features import fbank
from maeast.model import MAEAST, Encoder, make_config
from maeast.model.positions import sinusoid
from tests.conftest import speak
from tests.official_mae_ast import (FRAME, PATCH, YAML_MODEL, YAML_TASK, fairseq_checkpoint, hand_copied_encoder,
                                    official_encoder_forward, official_keys, official_masked_forward, official_pe,
                                    official_state, small)

# The README's pretraining commands over config/pretrain/mae_ast.yaml.
@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Two real utterances as mae_ast fbanks, cut to one length: [2, T, 128]."""
    root = tmp_path_factory.mktemp("speech")
    waves = [load_clip(speak(t, root / f"{i}.wav", voice=v), 16000).waveform
             for i, (t, v) in enumerate([("a stitch in time saves nine", "en"),
                                         ("how vexingly quick daft zebras jump", "en-us+f3")])]
    feats = [fbank(torch.from_numpy(w), 16000, "mae_ast") for w in waves]
    n = min(f.shape[0] for f in feats)
    return torch.stack([f[:n] for f in feats])


@pytest.mark.parametrize("kernel,over", [(PATCH, {}), (FRAME, {"layer_norm_first": True}),
                                         (PATCH, {"decoder_embed_dim": 24, "use_post_enc_proj": True})],
                         ids=["patch-postLN", "frame-preLN", "patch-decoder-proj"])
def test_converted_encoder_matches_hand_copy_and_official_forward(kernel, over, speech, tmp_path):
    m = small(kernel, **over)
    state = official_state(m)
    path = tmp_path / "ckpt.pt"
    torch.save(fairseq_checkpoint(state, m, {**YAML_TASK, "mask_type": "chunk_mask"}), path)
    done = convert_official(path, tmp_path / "out")
    assert done.tensors == len(state) - 5 and done.step == 600000
    assert set(done.dropped) == {"enc_sine_pos_embed.pe", "dec_sine_pos_embed.pe", "layer_norm.weight",
                                 "layer_norm.bias", "encoder_mask_emb"}
    converted = maeast.load_encoder(tmp_path / "out").encoder
    assert converted.cfg.mask_type == "chunk_official" and converted.cfg.decoder_dim == m["decoder_embed_dim"]
    assert converted.cfg.stored_positions == 0 and "positions.table" not in converted.state_dict()
    ours = converted(speech).x  # [B, N, D]
    by_hand = hand_copied_encoder(state, m)(speech).x
    reference = official_encoder_forward(state, m, speech)
    assert ours.shape == reference.shape == (2, speech.shape[1] // kernel["ast_kernel_size_time"] *
                                             (128 // kernel["ast_kernel_size_chan"]), 32)
    torch.testing.assert_close(ours, by_hand, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
    model, _ = load_model(tmp_path / "out")  # the whole model too, decoder included
    assert torch.equal(model.decoder.head_nce.weight, state["final_proj_classification.weight"])
    assert torch.equal(model.decoder.mask_token, state["decoder_mask_emb"])
    assert torch.equal(model.decoder.transformer.blocks[0].attn.qkv.bias[-m["decoder_embed_dim"]:],
                       state["decoder.layers.0.self_attn.v_proj.bias"])
    if m["use_post_enc_proj"]:
        assert torch.equal(model.decoder.proj.weight, state["post_enc_proj.weight"])


def fp16_checkpoint(m: dict, path, mask_type: str = "chunk_mask") -> OrderedDict:
    """A checkpoint as fairseq's fp16 training saves it: every float tensor, pe tables included, in float16."""
    state = OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in official_state(m).items())
    torch.save(fairseq_checkpoint(state, m, {**YAML_TASK, "mask_type": mask_type}), path)
    return OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in state.items())  # its numbers


@pytest.mark.parametrize("kernel,over", [(PATCH, {}), (FRAME, {"layer_norm_first": True})], ids=["patch", "frame-preLN"])
def test_fp16_checkpoint_keeps_its_positions_and_matches_the_official_layer_by_layer(kernel, over, speech, tmp_path):
    m = small(kernel, **over)
    upcast = fp16_checkpoint(m, tmp_path / "fp16.pt")
    done = convert_official(tmp_path / "fp16.pt", tmp_path / "out")
    assert done.source_dtype == "float16"
    assert "enc_sine_pos_embed.pe" not in done.dropped and "dec_sine_pos_embed.pe" not in done.dropped
    enc = maeast.load_encoder(tmp_path / "out").encoder
    assert enc.proj.weight.dtype == torch.float32 and enc.cfg.stored_positions == m["max_token_length"]
    pe = upcast["enc_sine_pos_embed.pe"][0]
    assert torch.equal(enc.positions.table, pe)
    assert 1e-4 < float((pe - official_pe(m["max_token_length"], 32)[0]).abs().max()) < 2.5e-4  # fp16 rounding

    ours = enc(speech, layer_results=True)
    reference, hidden = official_encoder_forward(upcast, m, speech, hidden=True)
    assert len(ours.layers) == len(hidden) == m["encoder_layers"]
    for mine, theirs in zip(ours.layers + [ours.x], hidden + [reference]):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)  # float32 noise (measured ~1e-6), every layer

    # The same weights with exact sinusoids (what conversion did before) are measurably further off.
    exact = Encoder(dataclasses.replace(enc.cfg, stored_positions=0)).eval()
    exact.load_state_dict({k: v for k, v in enc.state_dict().items() if k != "positions.table"})
    with torch.no_grad():
        assert float((exact(speech).x - reference).abs().max()) > 1e-4  # measured 3-4.5e-4 at every layer

    # The whole model: the decoder adds the stored table too, and the heads match the official ones.
    model, info = load_model(tmp_path / "out")
    assert torch.equal(model.decoder.positions.table, upcast["dec_sine_pos_embed.pe"][0])
    assert info["model"]["stored_positions"] == m["max_token_length"]
    out = model(speech, generator=torch.Generator().manual_seed(0))  # chunk_official: one mask for the batch
    masked = out.ids_masked[0].tolist()
    assert all(out.ids_masked[b].tolist() == masked for b in range(speech.shape[0]))
    retained = sorted(set(range(out.mask.shape[1])) - set(masked))
    recon, classify, target = official_masked_forward(upcast, m, speech, retained, masked)
    torch.testing.assert_close(out.target, target, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.recon, recon, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.classify, classify, atol=1e-5, rtol=0)


def test_float32_checkpoint_recomputes_its_positions(speech, tmp_path):
    m = small(FRAME, random_mask_prob=1.45, mask_length=10)  # the README's retain_spans command
    state = official_state(m)
    torch.save(fairseq_checkpoint(state, m, {**YAML_TASK, "mask_type": "retain_spans"}), tmp_path / "fp32.pt")
    done = convert_official(tmp_path / "fp32.pt", tmp_path / "out")
    assert {"enc_sine_pos_embed.pe", "dec_sine_pos_embed.pe"} <= set(done.dropped)
    enc = maeast.load_encoder(tmp_path / "out").encoder
    assert enc.cfg.stored_positions == 0 and enc.positions.table is None
    assert (enc.cfg.mask_type, enc.cfg.span_prob, enc.cfg.span_length, enc.cfg.mask_ratio) == ("retain_spans", 1.45,
                                                                                                10, 0.75)
    with torch.no_grad():
        torch.testing.assert_close(enc(speech).x, official_encoder_forward(state, m, speech), atol=1e-5, rtol=0)


def test_stored_positions_past_the_table_are_exact_sinusoids():
    cfg = make_config("tiny", stored_positions=4)
    enc = Encoder(cfg)
    with torch.no_grad():
        enc.positions.table.copy_(torch.full((4, cfg.dim), 0.5))
    rows = enc.positions(10, torch.device("cpu"), torch.float32)
    assert torch.equal(rows[:4], torch.full((4, cfg.dim), 0.5))
    assert torch.equal(rows[4:], sinusoid(10, cfg.dim)[4:])
    assert "positions.table" in enc.state_dict() and "positions.table" not in Encoder(make_config("tiny")).state_dict()


def fake_module(name: str, **classes) -> types.ModuleType:
    module = types.ModuleType(name)
    for attr, cls in classes.items():
        cls.__module__, cls.__qualname__, cls.__name__ = name, attr, attr
        setattr(module, attr, cls)
    return module


class DictConfig:  # pickles as omegaconf 2.x does: NEWOBJ + BUILD {_metadata, _parent, _content}
    def __init__(self, content):
        self._metadata, self._parent = {"ref_type": None}, None
        self._content = {k: DictConfig(v) if isinstance(v, dict) else AnyNode(v) for k, v in content.items()}


class AnyNode:
    def __init__(self, value):
        self._metadata, self._parent, self._val = {"ref_type": None}, None, value


class Choices(str, enum.Enum):  # fairseq's ChoiceEnum members
    gelu = "gelu"
    chunk_mask = "chunk_mask"


def test_namespace_omegaconf_and_enums_load_without_their_packages(tmp_path, monkeypatch):
    m, task = small(PATCH), {**YAML_TASK, "mask_type": "chunk_mask"}
    state = official_state(m)
    plain = fairseq_checkpoint(state, m, task)
    torch.save(plain, tmp_path / "plain.pt")
    args = argparse.Namespace(**{**task, **m, "reconstruction_weight": 10.0, "classification_weight": 1.0})
    torch.save({**plain, "cfg": None, "args": args}, tmp_path / "args.pt")
    with monkeypatch.context() as mp:  # the classes exist only while saving
        mp.setitem(sys.modules, "omegaconf", fake_module("omegaconf"))
        mp.setitem(sys.modules, "omegaconf.dictconfig", fake_module("omegaconf.dictconfig", DictConfig=DictConfig))
        mp.setitem(sys.modules, "omegaconf.nodes", fake_module("omegaconf.nodes", AnyNode=AnyNode))
        mp.setitem(sys.modules, "fairseq", fake_module("fairseq"))
        mp.setitem(sys.modules, "fairseq.dataclass", fake_module("fairseq.dataclass"))
        mp.setitem(sys.modules, "fairseq.dataclass.constants", fake_module("fairseq.dataclass.constants",
                                                                             Choices=Choices))
        cfg = {"model": {**m, "activation_fn": Choices.gelu}, "task": {**task, "mask_type": Choices.chunk_mask},
               "criterion": plain["cfg"]["criterion"]}
        torch.save({**plain, "cfg": DictConfig(cfg)}, tmp_path / "omegaconf.pt")
    assert "omegaconf.dictconfig" not in sys.modules
    assert {"omegaconf.dictconfig.DictConfig", "omegaconf.nodes.AnyNode", "fairseq.dataclass.constants.Choices",
            "argparse.Namespace"} <= set(torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "omegaconf.pt")
                                         + torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "args.pt"))
    configs = [official_config(read_checkpoint(tmp_path / f"{name}.pt")) for name in ("plain", "args", "omegaconf")]
    assert configs[0] == configs[1] == configs[2]
    assert configs[2].model["activation_fn"] == "gelu" and configs[2].task["mask_type"] == "chunk_mask"
    assert configs[2].model["encoder_embed_dim"] == 32
    convert_official(tmp_path / "omegaconf.pt", tmp_path / "out")


@pytest.mark.parametrize("kernel,mask,preset", [(PATCH, "chunk_mask", "base"), (FRAME, "random_mask", "base_frame")],
                         ids=["chunk_patch_75_12LayerEncoder", "random_frame_75_12LayerEncoder"])
def test_full_size_key_listing(kernel, mask, preset):
    """Every key and shape of the released 12-layer models maps onto our base presets (meta tensors)."""
    m = {**YAML_MODEL, **kernel}
    listing = official_keys(m, 128)
    assert len(listing) == 9 + 12 * 16 + 2 + 2 * 16 + 2 + 1 + 1 + 4
    state = {k: torch.empty(shape, device="meta") for k, shape in listing.items()}
    off = official_config(fairseq_checkpoint(state, m, {**YAML_TASK, "mask_type": mask}))
    cfg, weights = convert_state_dict(state, off)
    assert cfg == make_config(preset, mask_type="chunk_official" if mask == "chunk_mask" else "random")
    with torch.device("meta"):
        ours = MAEAST(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in weights.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def refuse(tmp_path, ckpt, match: str):
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(MaeastError, match=match) as e:
        convert_official(tmp_path / "bad.pt", tmp_path / "out")
    assert "\n" not in str(e.value)


def test_refusals_name_the_tensor_or_field(tmp_path):
    m = small(PATCH)
    state = official_state(m)
    refuse(tmp_path, fairseq_checkpoint({**state, "encoder.layers.0.self_attn.bias_k": torch.zeros(1, 1, 32)}, m,
                                        YAML_TASK), r"encoder\.layers\.0\.self_attn\.bias_k")
    conv = {**state, "enc_conv_pos_embed.pos_conv.0.weight_g": torch.zeros(1, 1, 128)}
    refuse(tmp_path, fairseq_checkpoint(conv, {**m, "enc_conv_pos": True}, YAML_TASK), r"enc_conv_pos_embed\.\*")
    wrong = {**state, "encoder.layers.1.fc1.weight": torch.zeros(32, 48)}
    refuse(tmp_path, fairseq_checkpoint(wrong, m, YAML_TASK), r"encoder\.layers\.1\.fc1\.weight: shape \[32, 48\]")
    missing = {k: v for k, v in state.items() if k != "decoder.layers.0.fc2.bias"}
    refuse(tmp_path, fairseq_checkpoint(missing, m, YAML_TASK), r"lacks decoder\.layers\.0\.fc2\.bias")
    pe = official_pe(700, 32)
    halves = torch.cat([pe[..., 0::2], pe[..., 1::2]], dim=-1)  # sin | cos instead of interleaved
    refuse(tmp_path, fairseq_checkpoint({**state, "enc_sine_pos_embed.pe": halves}, m, YAML_TASK),
           r"enc_sine_pos_embed\.pe: it differs")
    rounded = {**state, "enc_sine_pos_embed.pe": state["enc_sine_pos_embed.pe"].half().float()}  # kept: fp16 numbers
    refuse(tmp_path, fairseq_checkpoint({**rounded, "dec_sine_pos_embed.pe": halves}, m, YAML_TASK),
           r"dec_sine_pos_embed\.pe: it differs")
    refuse(tmp_path, fairseq_checkpoint(state, {**m, "activation_fn": "relu"}, YAML_TASK), "activation_fn")
    refuse(tmp_path, fairseq_checkpoint(state, m, {**YAML_TASK, "deltas": True}), "deltas=True")
    refuse(tmp_path, fairseq_checkpoint(state, {**m, "_name": "hubert"}, YAML_TASK), "'hubert' model, not mae_ast")
    refuse(tmp_path, {"state_dict": state}, "not a fairseq MAE-AST checkpoint")


def test_cli_converts_and_refuses_in_one_line(speech, tmp_path):
    app = new_app("test")
    register(app)
    m = small(FRAME)
    torch.save(fairseq_checkpoint(official_state(m), m, YAML_TASK), tmp_path / "random_frame.pt")
    r = CliRunner().invoke(app, ["convert-official", str(tmp_path / "random_frame.pt"), "--out", str(tmp_path / "enc")])
    assert r.exit_code == 0, r.output
    assert {p.name for p in (tmp_path / "enc").iterdir()} == {"encoder.safetensors", "encoder.json",
                                                               "model.safetensors", "model.json"}
    enc = maeast.load_encoder(tmp_path / "enc")
    assert enc.chunk_frames == 1562  # the official 250000-sample crops: 15.625 s, whole 2-frame tokens
    assert enc(fbank=speech[0]).clip.shape == (1, 32)
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    for bad in ("notes.pt", "absent.pt"):
        r = CliRunner().invoke(app, ["convert-official", str(tmp_path / bad), "--out", str(tmp_path / "x")])
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "not a fairseq MAE-AST checkpoint" in r.output or "no such file" in r.output


@pytest.mark.slow  # the ONNX export: about 15 s on 2 busy cores
def test_onnx_export_of_stored_positions_takes_any_length(speech, tmp_path):
    """The table is added without a branch on the length: an ONNX graph runs below and past its rows."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from maeast.inference.onnx import export_onnx
    m = small(FRAME, max_token_length=80)  # 80 rows: 1.6 s of frame tokens
    fp16_checkpoint(m, tmp_path / "fp16.pt")
    convert_official(tmp_path / "fp16.pt", tmp_path / "out")
    export_onnx(tmp_path / "out", tmp_path / "e.onnx")
    enc = maeast.load_encoder(tmp_path / "out").encoder
    session = onnxruntime.InferenceSession(str(tmp_path / "e.onnx"))
    assert speech.shape[1] // 2 > 80
    for frames in (120, speech.shape[1]):  # 60 tokens, and past the table
        x = speech[:1, :frames]
        tokens, _ = session.run(None, {"fbank": x.numpy()})
        with torch.no_grad():
            ref = enc(x).x
        assert tokens.shape == tuple(ref.shape) and float(abs(tokens - ref.numpy()).max()) < 1e-4
