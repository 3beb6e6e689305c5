"""maeast.load_encoder and `maeast embed`: real audio (espeak-ng speech, sox plucked strings) at 8, 16,
22.05 and 44.1 kHz, mono and stereo, through a tiny exported encoder (the engine's write_encoder)."""

from __future__ import annotations


import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

import maeast
from maeast.audio import load_clip
from maeast.cli.common import new_app
from maeast.cli.tools import register
from maeast.errors import MaeastError
from maeast.features import fbank, get_config
from maeast.inference import read_embeddings
from tests.conftest import make_export, pluck, sox, speak

@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """speech at 8 kHz mono and 16 kHz mono, plucked chords at 22.05 kHz stereo and 44.1 kHz stereo."""
    root = tmp_path_factory.mktemp("audio")
    (root / "speech").mkdir()
    speak("the quick brown fox jumps over the lazy dog", root / "raw.wav")
    sox(root / "raw.wav", "-r", "8000", root / "speech" / "fox_8k.wav")
    speak("she sells sea shells by the sea shore", root / "speech" / "shells_16k.wav", voice="en-us+f3")
    sox(root / "raw.wav", "-r", "16000", root / "speech" / "fox_16k.flac")
    (root / "raw.wav").unlink()
    pluck(root / "chord_22k.wav", ("A3", "C4", "E4"), seconds=2.5, rate=22050, channels=2)
    pluck(root / "chord_44k.flac", ("C4", "E4", "G4"), seconds=3.0, rate=44100, channels=2)
    return root


def cli(*args):
    app = new_app("test")
    register(app)
    return CliRunner().invoke(app, [str(a) for a in args])


def test_embed_folder_any_rate_and_channels(export, audio, tmp_path):
    out = tmp_path / "emb.safetensors"
    r = cli("embed", "--checkpoint", export, audio, "--out", out, "--batch-size", "3")
    assert r.exit_code == 0, r.output
    meta, clip, tokens = read_embeddings(out)
    assert meta["keys"] == ["chord_22k.wav", "chord_44k.flac", "speech/fox_16k.flac", "speech/fox_8k.wav",
                            "speech/shells_16k.wav"]
    assert clip.shape == (5, 64) and tokens is None and np.isfinite(clip).all()
    assert not meta["skipped"]
    enc = maeast.load_encoder(export)
    for key, row in zip(meta["keys"], clip):
        data, rate = sf.read(audio / key, dtype="float32", always_2d=True)  # [N, C] at the file's own rate
        direct = enc(waveform=[torch.from_numpy(data.T.copy())], sample_rate=rate).clip[0]  # [C, N] clip
        np.testing.assert_allclose(row, direct.numpy(), atol=2e-5, rtol=0)
    dist = np.linalg.norm(clip[:, None] - clip[None], axis=-1)  # different audio, different embeddings
    assert dist[np.triu_indices(5, 1)].min() > 1e-3


def test_embed_npy_tokens_and_sidecar(export, audio, tmp_path):
    out = tmp_path / "one.npy"
    wav = audio / "chord_44k.flac"
    r = cli("embed", "--checkpoint", export, wav, "--out", out, "--tokens", "--layer", "-1")
    assert r.exit_code == 0, r.output
    meta, clip, tokens = read_embeddings(out)
    assert (tmp_path / "one.json").is_file() and (tmp_path / "one.tokens.npy").is_file()
    assert meta["keys"] == ["chord_44k.flac"] and meta["layer"] == -1 and meta["cols"] == 8
    frames = get_config("mae_ast").num_frames(round(3.0 * 16000))
    assert tokens[0].shape == ((frames // 16) * 8, 64)  # every whole token row of the 3 s clip, over 3 chunks
    np.testing.assert_allclose(clip[0], tokens[0].mean(0), atol=1e-6)
    assert meta["token_offsets"] == [0, tokens[0].shape[0]]


def test_waveform_and_fbank_give_the_same_embedding(export, audio):
    enc = maeast.load_encoder(export)
    waves = [torch.from_numpy(load_clip(audio / k, 16000).waveform)
             for k in ("speech/shells_16k.wav", "speech/fox_8k.wav", "chord_22k.wav")]
    from_wave = enc(waveform=waves, sample_rate=16000, tokens=True)
    feats = [fbank(w, 16000, enc.features) for w in waves]
    from_list = enc(fbank=feats, tokens=True)
    longest = max(f.shape[0] for f in feats)
    padded = torch.stack([torch.nn.functional.pad(f, (0, 0, 0, longest - f.shape[0])) for f in feats])
    mask = torch.arange(longest)[None] >= torch.tensor([f.shape[0] for f in feats])[:, None]  # [B, T]
    from_padded = enc(fbank=padded, padding_mask=mask)
    torch.testing.assert_close(from_wave.clip, from_list.clip, atol=1e-6, rtol=0)
    torch.testing.assert_close(from_wave.clip, from_padded.clip, atol=1e-6, rtol=0)
    for a, b in zip(from_wave.tokens, from_list.tokens):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # a [B, N] batch of equal-length waveforms is the same as a list of them
    same = torch.stack([waves[0][:32000], waves[1][:32000]])
    torch.testing.assert_close(enc(waveform=same, sample_rate=16000).clip,
                               enc(waveform=list(same), sample_rate=16000).clip, atol=1e-6, rtol=0)


@pytest.mark.parametrize("preset", [{}, {"patch_time": 2, "patch_freq": 128}], ids=["patch", "frame"])
def test_batched_equals_one_by_one(preset, audio, tmp_path):
    enc = maeast.load_encoder(make_export(tmp_path, **preset))
    keys = ["speech/fox_8k.wav", "chord_44k.flac", "speech/shells_16k.wav", "chord_22k.wav"]
    waves = [torch.from_numpy(load_clip(audio / k, 16000).waveform) for k in keys]
    enc.batch_size = 5
    together = enc(waveform=waves, sample_rate=16000, tokens=True, layer=1)
    enc.batch_size = 1
    for i, w in enumerate(waves):
        alone = enc(waveform=w, sample_rate=16000, tokens=True, layer=1)
        torch.testing.assert_close(together.clip[i], alone.clip[0], atol=2e-5, rtol=0)
        torch.testing.assert_close(together.tokens[i], alone.tokens[0], atol=2e-5, rtol=0)


def test_long_clip_chunks_are_the_clip_token_rows(export, audio):
    enc = maeast.load_encoder(export)
    feats = fbank(torch.from_numpy(load_clip(audio / "chord_44k.flac", 16000).waveform), 16000, enc.features)
    assert enc.chunk_frames == 96  # 1 s = 100 frames, down to whole 16-frame rows
    whole = enc(fbank=feats, tokens=True).tokens[0]  # [N, D]
    assert whole.shape[0] == feats.shape[0] // 16 * 8
    for start in (0, 96, 192):  # each chunk encoded alone gives the same tokens, in order
        part = enc(fbank=feats[start:start + 96], tokens=True).tokens[0]
        n = part.shape[0]
        torch.testing.assert_close(whole[start // 16 * 8: start // 16 * 8 + n], part, atol=1e-6, rtol=0)
    longer = maeast.inference.load_encoder(export, chunk_seconds=30.0)  # one chunk: attention across the clip
    assert not torch.allclose(longer(fbank=feats).clip, enc(fbank=feats).clip, atol=1e-4)


def test_overlapping_windows_give_each_row_once_with_context(export, audio):
    """2 s windows (8 rows of 16 frames) with 1 row of context a side: cores of 6 rows tile the clip, each
    row's token comes from a window that holds its neighbours, and the windows are full-length."""
    enc = maeast.inference.load_encoder(export, chunk_seconds=2.0, context_seconds=0.16)
    assert (enc.chunk_frames, enc.context_frames) == (192, 16)
    feats = fbank(torch.from_numpy(load_clip(audio / "chord_44k.flac", 16000).waveform), 16000, enc.features)
    usable = feats.shape[0] // 16 * 16
    pieces = enc._chunks([feats])
    cores = [(core, core + n) for _, _, _, core, n in pieces]
    assert cores[0][0] == 0 and cores[-1][1] == usable and all(a[1] == b[0] for a, b in zip(cores, cores[1:]))
    for _, start, n, core, size in pieces:
        assert n == 192 and start <= core and core + size <= start + n  # the core lies inside its full window
        assert core == 0 or core - start >= 16  # context before, except at the clip's start
        assert core + size == usable or start + n - (core + size) >= 16  # and after, except at its end
    tokens = enc(fbank=feats, tokens=True).tokens[0]
    assert tokens.shape[0] == usable // 16 * 8  # every whole row once
    for _, start, n, core, size in pieces:  # each core's tokens are those of its window encoded alone
        part = enc(fbank=feats[start:start + n], tokens=True).tokens[0]
        first = (core - start) // 16 * 8
        torch.testing.assert_close(tokens[core // 16 * 8:(core + size) // 16 * 8], part[first:first + size // 16 * 8],
                                   atol=1e-6, rtol=0)
    side_by_side = maeast.inference.load_encoder(export, chunk_seconds=2.0, context_seconds=0)
    assert side_by_side.context_frames == 0 and not torch.allclose(side_by_side(fbank=feats).clip,
                                                                   enc(fbank=feats).clip, atol=1e-5)
    with pytest.raises(MaeastError, match="context_seconds"):
        maeast.inference.load_encoder(export, chunk_seconds=2.0, context_seconds=1.0)


def test_layers(export, audio):
    enc = maeast.load_encoder(export)
    wave = torch.from_numpy(load_clip(audio / "speech/fox_16k.flac", 16000).waveform)
    last = enc(waveform=wave, sample_rate=16000).clip
    torch.testing.assert_close(enc(waveform=wave, sample_rate=16000, layer=2).clip, last)  # post-LN: no final norm
    torch.testing.assert_close(enc(waveform=wave, sample_rate=16000, layer=-1).clip, last)
    assert not torch.allclose(enc(waveform=wave, sample_rate=16000, layer=1).clip, last, atol=1e-3)
    for bad in (0, 3, -3):
        with pytest.raises(MaeastError, match="this encoder has 2 layers"):
            enc(waveform=wave, sample_rate=16000, layer=bad)


def test_every_layer_stacked(export, audio, tmp_path):
    """--layers all: each block's clip and token embeddings, block by block as --layer N gives them."""
    enc = maeast.load_encoder(export)
    wave = torch.from_numpy(load_clip(audio / "speech/fox_16k.flac", 16000).waveform)
    every = enc(waveform=wave, sample_rate=16000, layer="all", tokens=True)
    assert every.clip.shape == (1, 2, enc.dim) and every.tokens[0].shape[0] == 2
    for block in (1, 2):
        one = enc(waveform=wave, sample_rate=16000, layer=block, tokens=True)
        torch.testing.assert_close(every.clip[:, block - 1], one.clip)
        torch.testing.assert_close(every.tokens[0][block - 1], one.tokens[0])
    assert cli("embed", audio / "speech", "--checkpoint", export, "--out", tmp_path / "e.npy", "--tokens",
               "--layers", "all").exit_code == 0
    meta, clip, tokens = read_embeddings(tmp_path / "e.npy")
    assert clip.shape == (len(meta["keys"]), 2, enc.dim) and all(t.shape[0] == 2 for t in tokens)
    assert meta["row_seconds"] == enc.encoder.cfg.patch_time * 0.01
    result = cli("embed", audio / "speech", "--checkpoint", export, "--out", tmp_path / "x.npy", "--layers", "every")
    assert result.exit_code != 0 and "--layers" in result.output


def test_bad_input_is_one_line(export, audio, tmp_path):
    enc = maeast.load_encoder(export)
    with pytest.raises(MaeastError, match="sample_rate"):
        enc(waveform=torch.zeros(16000))
    with pytest.raises(MaeastError, match="fewer than one token"):
        enc(waveform=torch.from_numpy(load_clip(audio / "chord_22k.wav", 16000).waveform[:2000]), sample_rate=16000)
    r = cli("embed", "--checkpoint", export, audio, "--out", tmp_path / "emb.csv")
    assert r.exit_code == 2 and "name a .npy or .safetensors file" in r.output and r.output.count("\n") == 1
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all\n")
    r = cli("embed", "--checkpoint", export, junk, "--out", tmp_path / "e.npy")
    assert r.exit_code == 2 and "cannot read it as audio" in r.output
    r = cli("embed", "--checkpoint", tmp_path, audio, "--out", tmp_path / "e.npy")
    assert r.exit_code == 2 and "no encoder.safetensors" in r.output


def test_folder_skips_and_lists_unusable_files(export, audio, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.wav").write_bytes((audio / "speech" / "shells_16k.wav").read_bytes())
    (folder / "broken.flac").write_bytes(b"fLaC but not really")
    sox("-n", "-r", "16000", folder / "blip.wav", "synth", "0.05", "pluck", "C5")  # 50 ms: under one token
    out = tmp_path / "e.safetensors"
    r = cli("embed", "--checkpoint", export, folder, "--out", out)
    assert r.exit_code == 0, r.output
    meta, clip, _ = read_embeddings(out)
    assert meta["keys"] == ["good.wav"] and clip.shape == (1, 64)
    assert {s["key"] for s in meta["skipped"]} == {"broken.flac", "blip.wav"}
    assert "too short" in {s["key"]: s["reason"] for s in meta["skipped"]}["blip.wav"]


@pytest.mark.gpu
def test_cuda_matches_cpu(export, audio):
    waves = [torch.from_numpy(load_clip(audio / k, 16000).waveform) for k in ("speech/fox_8k.wav", "chord_44k.flac")]
    cpu = maeast.load_encoder(export)(waveform=waves, sample_rate=16000, tokens=True)
    gpu = maeast.load_encoder(export, "cuda")(waveform=waves, sample_rate=16000, tokens=True)  # bf16 autocast
    assert gpu.clip.device.type == "cpu" and [t.shape for t in gpu.tokens] == [t.shape for t in cpu.tokens]
    assert float(torch.nn.functional.cosine_similarity(cpu.clip, gpu.clip).min()) > 0.99
