"""SSAST's input pipeline (data.input ssast, maeast.finetune.inputs) against transcriptions of SSAST's code
(YuanGongND/ssast src/dataloader.py _wav2fbank and __getitem__, src/models/ast_models.py's patch embedding
and get_shape, the src/finetune/*/run_*.sh values) on real clips: features, waveform mixup, SpecAugment's
fill, the overlapping token grid; then the pipeline's choice per task and a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from maeast.audio import load_clip
from maeast.errors import MaeastError
from maeast.features import featurize, fit_frames, get_config
from maeast.finetune import finetune, load_finetune_config
from maeast.finetune.augment import beta, spec_augment, wave_mixup
from maeast.finetune.inputs import SSAST_STRIDES, apply_input, clip_key, read_label_file
from maeast.finetune.tasks import TASKS, get_task
from maeast.model import Encoder
from maeast.model.config import make_config
from maeast.model.tokens import grid_shape, patchify, unpatchify
from maeast.shards.build import build_shards
from maeast.shards.recipes.base import make_key
from tests.conftest import speak
from tests.fixtures.make_fbank_fixtures import import_kaldi

TOLERANCE = 1e-3  # raw log-mel units, as tests/test_fbank.py against torchaudio

# The run scripts' values, transcribed (YuanGongND/ssast src/finetune/...):
SCRIPTS = {  # preset: (dataset_mean, dataset_std, target_length)
    "ssast_audioset": (-4.2677393, 4.5689974, 1024),  # audioset/run_as.sh
    "ssast_esc50": (-6.6268077, 5.358466, 512),  # esc50/run_esc_patch.sh, run_esc_frame.sh
    "ssast_speechcommands": (-6.845978, 5.5654526, 128),  # speechcommands_v2_35/run_sc.sh
}


def kaldi_or_skip():
    found = import_kaldi()
    if found is None:
        pytest.skip("torchaudio does not import here (the parity reference): set MAEAST_TORCHAUDIO to a scratch "
                    "install, as `make test` does")
    return found[0]


def ssast_wav2fbank(kaldi, waveform, target_length, mean, std, waveform2=None, mix_lambda=None):
    """src/dataloader.py _wav2fbank (sr 16000, melbins 128) and __getitem__'s normalization, no SpecAugment."""
    if waveform2 is None:
        waveform = waveform - waveform.mean()
    else:
        waveform1 = waveform - waveform.mean()
        waveform2 = waveform2 - waveform2.mean()
        if waveform1.shape[1] != waveform2.shape[1]:
            if waveform1.shape[1] > waveform2.shape[1]:
                temp_wav = torch.zeros(1, waveform1.shape[1])
                temp_wav[0, 0:waveform2.shape[1]] = waveform2
                waveform2 = temp_wav
            else:
                waveform2 = waveform2[0, 0:waveform1.shape[1]]
        mix_waveform = mix_lambda * waveform1 + (1 - mix_lambda) * waveform2
        waveform = mix_waveform - mix_waveform.mean()
    fbank = kaldi.fbank(waveform, htk_compat=True, sample_frequency=16000, use_energy=False,
                        window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)
    n_frames = fbank.shape[0]
    p = target_length - n_frames
    if p > 0:
        m = torch.nn.ZeroPad2d((0, 0, 0, p))
        fbank = m(fbank)
    elif p < 0:
        fbank = fbank[0:target_length, :]
    return (fbank - mean) / (std * 2)


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> list[torch.Tensor]:
    """Two real spoken clips of different lengths (espeak-ng), float in [-1, 1] at 16 kHz."""
    folder = tmp_path_factory.mktemp("ssast_voices")
    texts = ["the quick brown fox jumps over the lazy dog", "seven"]
    return [torch.from_numpy(load_clip(speak(t, folder / f"{i}.wav"), 16000).waveform).float()
            for i, t in enumerate(texts)]


def batch_of(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(c) for c in clips])
    wave = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        wave[i, :len(c)] = c
    return wave, lengths


# ---- features -------------------------------------------------------------------------------------

def test_presets_carry_the_run_scripts_values():
    for name, (mean, std, target) in SCRIPTS.items():
        cfg = get_config(name)
        assert (cfg.norm_mean, cfg.norm_std, cfg.target_frames) == (mean, std, target)
        assert (cfg.window, cfg.subtract_waveform_mean, cfg.n_mels, cfg.frame_shift_ms) == ("hanning", True, 128, 10.0)
        assert cfg.pad_value == pytest.approx((0 - mean) / (std * 2))
    assert {t.name: t.ssast_fbank for t in TASKS.values() if t.ssast_fbank} == {
        "audioset": "ssast_audioset", "esc50": "ssast_esc50", "speechcommands_v2": "ssast_speechcommands"}
    assert get_config("ssast").target_frames is None and get_config("mae_ast").target_frames is None


@pytest.mark.parametrize("preset", list(SCRIPTS))
def test_features_equal_ssast_dataloader_on_real_clips(voices, preset):
    kaldi = kaldi_or_skip()
    mean, std, target = SCRIPTS[preset]
    wave, lengths = batch_of(voices)  # 3.1 s and 0.8 s of speech: cut to 128 frames, padded to 512 and 1024
    ours, mask = featurize(wave, lengths, preset, 16000)
    assert mask is None and ours.shape == (2, target, 128)
    for row, clip in zip(ours, voices):
        want = ssast_wav2fbank(kaldi, clip.view(1, -1), target, mean, std)
        assert ((row - want).abs().max() * 2 * std).item() <= TOLERANCE
    alone, _ = featurize(voices[1][None], lengths[1:], preset, 16000)  # a clip batched is the clip alone
    assert torch.equal(alone[0], ours[1])
    n = get_config(preset).num_frames(len(voices[1]))
    if n < target:  # the padding the model sees: SSAST's zero frames, normalized
        assert torch.equal(ours[1, n:], torch.full((target - n, 128), get_config(preset).pad_value))


def test_fit_frames_cuts_and_pads_in_normalized_units():
    cfg = get_config("ssast_speechcommands")
    x = torch.randn(2, 100, 128)
    assert fit_frames(torch.randn(300, 128), cfg).shape == (128, 128)
    assert torch.equal(fit_frames(x, cfg)[:, :100], x)
    assert torch.equal(fit_frames(x, cfg)[:, 100:], torch.full((2, 28, 128), cfg.pad_value))
    long = torch.randn(200, 128)
    assert torch.equal(fit_frames(long, cfg), long[:128])
    with pytest.raises(MaeastError, match="target_frames"):
        cfg.__class__(name="bad", target_frames=0)


# ---- waveform mixup and SpecAugment's fill ------------------------------------------------------

def test_waveform_mixup_equals_ssast_mixup_on_real_clips(voices):
    kaldi = kaldi_or_skip()
    mean, std, target = SCRIPTS["ssast_audioset"]
    wave, lengths = batch_of(voices)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    swaps = (s for s in range(100) if torch.randperm(2, generator=torch.Generator().manual_seed(s)).tolist() == [1, 0])
    seed = next(swaps)  # a seed whose partners are each other
    mixed, mixed_targets = wave_mixup(wave, lengths, targets, 1.0, 10.0, torch.Generator().manual_seed(seed))
    replay = torch.Generator().manual_seed(seed)  # the documented draw order: partners, choice, weights
    perm, _ = torch.randperm(2, generator=replay), torch.rand(2, generator=replay)
    lam = beta(10.0, 2, replay)
    assert perm.tolist() == [1, 0] and 0 < lam.min() < lam.max() < 1
    assert torch.equal(mixed[1, lengths[1]:], torch.zeros(len(wave[0]) - lengths[1]))  # keeps its own length
    ours, _ = featurize(mixed, lengths, "ssast_audioset", 16000)
    for i, j in ((0, 1), (1, 0)):  # clip 0 longer than its partner (padded), clip 1 shorter (partner cut)
        want = ssast_wav2fbank(kaldi, voices[i].view(1, -1), target, mean, std, voices[j].view(1, -1), float(lam[i]))
        assert ((ours[i] - want).abs().max() * 2 * std).item() <= TOLERANCE
        # __getitem__: label_indices[own] += mix_lambda, label_indices[partner's] += 1 - mix_lambda
        assert torch.allclose(mixed_targets[i], lam[i] * targets[i] + (1 - lam[i]) * targets[j])
    same, same_targets = wave_mixup(wave, lengths, targets, 0.0, 10.0, torch.Generator())
    assert same is wave and same_targets is targets


def test_spec_augment_fills_raw_zero_as_ssast(voices):
    cfg = get_config("ssast_esc50")
    wave, lengths = batch_of(voices)
    x, _ = featurize(wave, lengths, cfg, 16000)  # [2, 512, 128] normalized
    ours = spec_augment(x, None, 24, 96, torch.Generator().manual_seed(3), fill=cfg.pad_value)
    where = spec_augment(x, None, 24, 96, torch.Generator().manual_seed(3), fill=float("nan")).isnan()
    assert where.any(dim=(1, 2)).all() and where[:, 500:].any()  # the masks reach into the padding too
    raw = x * (2 * cfg.norm_std) + cfg.norm_mean  # SSAST: FrequencyMasking/TimeMasking on raw fbank (0), then
    want = (raw.masked_fill(where, 0.0) - cfg.norm_mean) / (cfg.norm_std * 2)  # normalized
    assert torch.allclose(ours, want, atol=1e-5)
    # the mae_ast input keeps its rule: a masked cell is the clip's mean
    old = spec_augment(x, None, 24, 96, torch.Generator().manual_seed(3))
    assert torch.allclose(old[where], x.mean(dim=(1, 2), keepdim=True).expand_as(x)[where])


# ---- the token grid -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,frames", [((16, 16), 1024), ((16, 16), 512), ((2, 128), 128)])
def test_overlapping_grid_equals_ssast_conv_patch_embedding(shape, frames):
    tshape, fshape = shape
    tstride, fstride = SSAST_STRIDES[shape]
    cfg = make_config("tiny", patch_time=tshape, patch_freq=fshape, stride_time=tstride, stride_freq=fstride,
                      input_norm="none")
    encoder = Encoder(cfg)
    x = torch.randn(2, frames, 128)  # [B, T, F] as SSAST's input
    tokens = encoder.tokenize(x)
    # SSAST (src/models/ast_models.py): Conv2d(1, D, kernel_size=(fshape, tshape), stride=(fstride, tstride))
    # over x.unsqueeze(1).transpose(2, 3) [B, 1, F, T]; get_shape's f_dim, t_dim.
    proj = nn.Conv2d(1, cfg.dim, kernel_size=(fshape, tshape), stride=(fstride, tstride))
    with torch.no_grad():  # our Linear's input index i * patch_freq + j is frame i, bin j
        proj.weight.copy_(encoder.proj.weight.view(cfg.dim, tshape, fshape).transpose(1, 2).unsqueeze(1))
        proj.bias.copy_(encoder.proj.bias)
        out = proj(x.unsqueeze(1).transpose(2, 3))  # [B, D, f_dim, t_dim]
    f_dim, t_dim = out.shape[2], out.shape[3]
    assert tokens.grid == (t_dim, f_dim) == grid_shape(frames, 128, tshape, fshape, tstride, fstride)
    assert cfg.tokens_for(frames) == t_dim * f_dim == tokens.x.shape[1]
    ours = tokens.x.view(2, t_dim, f_dim, cfg.dim).permute(0, 3, 2, 1)  # time-major -> SSAST's [B, D, f, t]
    assert torch.allclose(ours, out, atol=1e-5)
    if shape == (16, 16) and frames == 1024:
        assert (t_dim, f_dim) == (101, 12)  # AST's 1212 patches of a 10 s clip


def test_overlap_keeps_defaults_and_refuses_what_has_no_meaning():
    x = torch.randn(2, 40, 128)
    assert torch.equal(patchify(x, 16, 16, 16, 16), patchify(x, 16, 16))
    assert torch.equal(unpatchify(patchify(x, 16, 16), (2, 8), 16, 16), x[:, :32])
    with pytest.raises(MaeastError, match="overlap"):
        unpatchify(patchify(x, 16, 16, 10, 10), (3, 12), 16, 16, 10, 10)
    base = make_config("base")
    assert (base.stride_time, base.stride_freq, base.time_stride, base.freq_cols) == (None, None, 16, 8)
    assert make_config("base", stride_time=10, stride_freq=10).to_dict()["stride_time"] == 10
    with pytest.raises(MaeastError, match="stride_time"):
        make_config("base", stride_time=17)


def test_overlapping_encoder_padding_gives_the_clip_alone():
    cfg = make_config("tiny", stride_time=10, stride_freq=10, input_norm="none", dropout=0.0, attn_dropout=0.0)
    encoder = Encoder(cfg).eval()
    x = torch.randn(2, 100, 128)
    pad = torch.zeros(2, 100, dtype=torch.bool)
    pad[1, 60:] = True
    out = encoder(x, pad)
    alone = encoder(x[1:, :60])
    n = cfg.tokens_for(60)
    assert out.padding_mask[1].sum() == out.x.shape[1] - n and not out.padding_mask[1, :n].any()
    assert torch.allclose(out.x[1, :n], alone.x[0], atol=1e-5)


# ---- the pipeline of each task ------------------------------------------------------------------

def test_recipes_choose_the_ssast_pipeline_and_apply_input_builds_it():
    for task in TASKS:
        cfg = load_finetune_config("finetune_patch", task=task)
        assert cfg.data.input == ("ssast" if task in ("audioset", "esc50", "speechcommands_v2") else "mae_ast")
    chosen = load_finetune_config("finetune_patch", task="esc50", overrides=["--data.input", "mae_ast"])
    assert chosen.data.input == "mae_ast"
    base, frame = make_config("base"), make_config("base_frame")
    state = Encoder(make_config("tiny")).state_dict()
    mae = get_config("mae_ast")
    assert apply_input("mae_ast", get_task("esc50"), base, state, mae) == (base, state, mae)
    cfg, weights, features = apply_input("ssast", get_task("esc50"), base, state, mae)
    assert (cfg.stride_time, cfg.stride_freq, cfg.input_norm, features.name) == (10, 10, "none", "ssast_esc50")
    assert not any(k.startswith("input_norm.") for k in weights) and any(k.startswith("input_norm.") for k in state)
    cfg, _, features = apply_input("ssast", get_task("speechcommands_v2"), frame, state, mae)
    assert (cfg.stride_time, cfg.stride_freq, features.target_frames) == (1, 128, 128)
    with pytest.raises(MaeastError, match="task voxceleb has no SSAST recipe"):
        apply_input("ssast", get_task("voxceleb"), base, state, mae)
    with pytest.raises(MaeastError, match="8x8"):
        apply_input("ssast", get_task("audioset"), make_config("base", patch_time=8, patch_freq=8), state, mae)
    with pytest.raises(MaeastError, match="drop data.fbank"):
        apply_input("ssast", get_task("audioset"), base, state, mae, "mae_ast")
    with pytest.raises(MaeastError, match="task voxceleb has no SSAST recipe"):
        load_finetune_config("finetune_patch", task="voxceleb", overrides=["--data.input", "ssast"])
    with pytest.raises(MaeastError, match="drop data.fbank"):
        load_finetune_config("finetune_patch", task="esc50", overrides=["--data.fbank", "mae_ast"])
    with pytest.raises(MaeastError, match="data.input 'spectrogram' unknown"):
        load_finetune_config("finetune_patch", task="esc50", overrides=["--data.input", "spectrogram"])


def test_label_file_of_ssast_is_read_by_key(tmp_path):
    rows = [{"wav": "/data/sls/audioset/--4gqARaEJE_0.000.flac", "labels": "/m/a,/m/c"},
            {"wav": "/x/eval/abcdefghijk_30.500.wav", "labels": "/m/b"},
            {"wav": "/y/1-100032-A-0.wav", "labels": "/m/a"}]
    path = tmp_path / "enhanced.json"
    path.write_text(json.dumps({"data": rows}))
    read = read_label_file(str(path), ["/m/a", "/m/b", "/m/c"])
    assert set(read) == {make_key("--4gqARaEJE", 0), make_key("abcdefghijk", 30500), make_key("1-100032-A-0")}
    assert read[make_key("--4gqARaEJE", 0)].tolist() == [1.0, 0.0, 1.0]
    assert clip_key("x/abcdefghijk_30.500.flac") == make_key("abcdefghijk", 30500)
    with pytest.raises(MaeastError, match="'/m/b' .* is not one of the corpus's labels"):
        read_label_file(str(path), ["/m/a", "/m/c"])
    with pytest.raises(MaeastError, match="set --run.cache_features false"):
        load_finetune_config("finetune_patch", task="audioset", freeze_encoder=True,
                             overrides=["--data.label_file", str(path)])
    with pytest.raises(MaeastError, match="data.label_file .* not found"):
        load_finetune_config("finetune_patch", task="audioset", overrides=["--data.label_file", str(tmp_path / "no")])


# ---- end to end ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def esc_shards(esc50, tmp_path_factory):  # noqa: F811  (a fixture of tests.official_trees)
    out = tmp_path_factory.mktemp("ssast_input_esc") / "esc50"
    build_shards("esc50", esc50, out)
    return out


def test_waveform_mixup_on_another_backend_is_one_line(esc_shards, tmp_path):
    pytest.importorskip("nvidia.dali", reason="the `dali` extra is not installed")
    cfg = load_finetune_config("finetune_tiny", task="esc50", shards=str(esc_shards), run_dir=str(tmp_path / "run"),
                               folds=[1], overrides=["--data.clip_seconds", "2", "--schedule.epochs", "1",
                                                     "--augment.mixup", "0.5", "--data.backend", "dali"])
    with pytest.raises(MaeastError, match=r"^data.input ssast mixes waveforms \(augment.mixup 0.5\), which backend "
                                          r"dali cannot; use data.backend stream, or augment.mixup 0$") as caught:
        finetune(cfg)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run" / "fold1" / "checkpoints").exists()


def test_tiny_esc50_run_trains_and_exports_the_ssast_pipeline(esc_shards, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from maeast.artifacts import load_classifier
    from maeast.inference import load_encoder
    from maeast.inference.onnx import export_onnx
    from maeast.inference.predict import predict_files
    labels = tmp_path / "labels.json"  # a SSAST datafile relabelling one training clip
    labels.write_text(json.dumps({"data": [{"wav": "audio/2-114587-A-1.wav", "labels": "dog"}]}))
    cfg = load_finetune_config("finetune_tiny", task="esc50", shards=str(esc_shards), run_dir=str(tmp_path / "run"),
                               folds=[1], overrides=["--data.clip_seconds", "2", "--schedule.epochs", "1",
                                                     "--augment.mixup", "0.5", "--data.label_file", str(labels)])
    assert cfg.data.input == "ssast"
    result = finetune(cfg)
    assert len(result.folds) == 1
    folder = tmp_path / "run" / "fold1" / "classifier"
    model, info = load_classifier(folder)
    got = model.encoder.cfg
    assert (got.stride_time, got.stride_freq, got.input_norm) == (10, 10, "none")
    assert info["features"]["target_frames"] == 512 and info["features"]["name"] == "ssast_esc50"
    # inference rebuilds the grid: every clip becomes the 512 frames it was fine-tuned on (padding seen)
    clip = speak("a dog barks", tmp_path / "dog.wav")  # under 2 s: one window of predict_files
    wave = torch.from_numpy(load_clip(clip, 16000).waveform).float()
    emb = load_encoder(folder)(wave, 16000, tokens=True)
    assert emb.tokens[0].shape == (model.encoder.cfg.tokens_for(512), model.encoder.cfg.dim) == (600, 64)
    feats, _ = featurize(wave[None], torch.tensor([len(wave)]), get_config("ssast_esc50"), 16000)  # [1, 512, F]
    with torch.no_grad():
        logits = model(feats)
    scored = predict_files(folder, clip)
    assert torch.allclose(scored.files[0].scores, logits.softmax(dim=-1)[0], atol=1e-5)
    meta = export_onnx(folder, tmp_path / "c.onnx", classifier=True)  # the grid's strides travel with the graph
    assert meta["tokens"]["stride_time"] == 10 and meta["features"]["target_frames"] == 512
    (onnx_logits,) = onnxruntime.InferenceSession(str(tmp_path / "c.onnx")).run(None, {"fbank": feats.numpy()})
    assert abs(onnx_logits - logits.numpy()).max() < 1e-4


# ---- the converter ------------------------------------------------------------------------------

def test_converter_takes_an_official_checkpoint_with_overlapping_patches(voices, tmp_path):
    """MAE-AST's nn.Unfold(kernel_size=(size_time, size_chan), stride=(stride_time, stride_chan))
    (MAE-AST-Public mae_ast/models/mae_ast.py) with strides below the size: the converted encoder gets
    stride_time/stride_freq and gives the official forward, transcribed here with the checkpoint's stride."""
    import torch.nn.functional as F

    import maeast
    from maeast.convert import convert_official
    from maeast.features import fbank
    from tests.official_mae_ast import PATCH, YAML_TASK, fairseq_checkpoint, official_stack, official_state, small
    m = small({**PATCH, "ast_kernel_stride_time": 10, "ast_kernel_stride_chan": 10})
    state = official_state(m)
    path = tmp_path / "ckpt.pt"
    torch.save(fairseq_checkpoint(state, m, YAML_TASK), path)
    convert_official(path, tmp_path / "out")
    encoder = maeast.load_encoder(tmp_path / "out").encoder
    assert (encoder.cfg.stride_time, encoder.cfg.stride_freq) == (10, 10)
    feats = fbank(voices[0], 16000, "mae_ast")[None, :300]  # [1, 300, 128] real speech
    mean, var = state["batch_norm.running_mean"], state["batch_norm.running_var"]
    x = (feats.unsqueeze(1) - mean) / torch.sqrt(var + 1e-5) * 0.5  # BatchNorm (eval) x 0.5
    patches = F.unfold(x, kernel_size=(16, 16), stride=(10, 10)).transpose(-1, -2)  # [1, N, 256]
    official = F.linear(patches, state["post_extract_proj.weight"], state["post_extract_proj.bias"])
    official, _ = official_stack(state, "encoder", official + state["enc_sine_pos_embed.pe"][:, :official.shape[1]], m)
    ours = encoder(feats).x
    assert ours.shape[1] == 29 * 12 == official.shape[1]
    torch.testing.assert_close(ours, official, atol=1e-4, rtol=0)
    with pytest.raises(MaeastError, match="patches 20 apart, more than their size 16"):
        torch.save(fairseq_checkpoint(state, {**m, "ast_kernel_stride_time": 20}, YAML_TASK), path)
        convert_official(path, tmp_path / "out2")


def test_hear_timestamps_follow_overlapping_rows(voices, tmp_path):
    """An encoder whose token rows are stride_time frames apart: HEAR passes every hop of at most 50 ms
    over those rows (not over patch_time), each stamped at the centre of its frames."""
    from maeast.inference import hear
    from tests.conftest import make_export
    model = hear.load_model(str(make_export(tmp_path, stride_time=10, stride_freq=10)))
    assert model.step == 5  # 10-frame rows (100 ms): two passes, 50 ms apart
    audio = voices[0][None, :32000]  # 2 s of speech
    emb, ms = hear.get_timestamp_embeddings(audio, model)
    frames = get_config("mae_ast").num_frames(32000)
    rows = [(frames - offset - 16) // 10 + 1 for offset in (0, 5)]
    assert emb.shape == (1, sum(rows), 64) and ms.shape == (1, sum(rows))
    assert torch.allclose(ms[0, :3], torch.tensor([0.0, 5.0, 10.0]) * 10 + 7.5 * 10 + 12.5)
    assert float(ms[0].diff().max()) == 50.0
