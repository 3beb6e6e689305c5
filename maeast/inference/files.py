"""`maeast embed`: audio files (one file, or every audio file below a folder) -> embedding files.

Each file is decoded, downmixed and resampled to 16 kHz mono (maeast.audio.load_clip), then embedded by
AudioEncoder (in overlapping windows of the export's clip length, batched). Keys are paths relative to the folder
(the file name for a single file), in sorted order. Files that cannot be read, or are shorter than one
token, are skipped and listed. The output is chosen by the --out extension:

  .safetensors  tensors "clip/KEY" [D] (and "tokens/KEY" [N, D] with tokens); metadata "maeast" holds
                the JSON below, whose "keys" gives the file order
  .npy          clip embeddings [files, D], rows in "keys" order, plus the sidecar OUT.json (the JSON
                below); with tokens also OUT.tokens.npy [sum N_i, D], file i's tokens at rows
                token_offsets[i]:token_offsets[i + 1]

With --layers all every transformer block's embeddings are kept, stacked before the token axis: clip
[L, D] per file, tokens [L, N, D] (.npy: [files, L, D] and [L, sum N_i, D]); the inputs of SUPERB's
weighted sum of layers.

JSON: format, keys, files, dim, layer, cols (tokens per time row), patch_time, frame_shift_ms,
row_seconds (token n of a file starts at (n // cols) x row_seconds), chunk_seconds, context_seconds, checkpoint, seconds
(audio per file), token_offsets (with tokens), skipped [{key, reason}].
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from itertools import islice
from typing import Callable, Iterator

import numpy as np
import torch
from safetensors.torch import save_file

from maeast.audio import AudioError, Clip, load_clip
from maeast.errors import MaeastError
from maeast.features import FbankConfig
from maeast.inference.encoder import load_encoder
from maeast.shards.format import SAMPLE_RATE
from maeast.shards.recipes.base import audio_files

OUTPUT_FORMAT = "maeast-embeddings/1"
OUTPUT_SUFFIXES = (".npy", ".safetensors")
FILES_PER_CALL = 64  # files decoded and embedded together (their chunks form the batches)


@dataclass
class FileEmbeddings:
    keys: list[str]  # file keys, in row order
    files: list[Path]
    clip: np.ndarray  # [files, D] float32
    tokens: list[np.ndarray] | None  # per file [N_i, D] float32
    seconds: list[float]  # audio duration per file
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    info: dict = field(default_factory=dict)  # dim, layer, cols, patch_time, frame_shift_ms, chunk_seconds, checkpoint
    wall_seconds: float = 0.0


def find_audio(path: Path) -> list[tuple[str, Path]]:
    """(key, file) pairs: the file itself, or every audio file below a folder (keys relative, sorted)."""
    path = Path(path)
    if path.is_file():
        return [(path.name, path)]
    if path.is_dir():
        found = [(p.relative_to(path).as_posix(), p) for p in audio_files(path)]
        if not found:
            raise MaeastError(f"{path}: no audio files below it (wav, flac, ogg, mp3, ...)")
        return found
    raise MaeastError(f"{path}: no such file or folder")


def embed_files(checkpoint: str | Path, audio: str | Path, *, tokens: bool = False, layer: int | str | None = None,
                batch_size: int = 16, chunk_seconds: float | None = None, context_seconds: float | None = None,
                device: str = "cpu", progress: Callable[[int, int], None] | None = None) -> FileEmbeddings:
    """Embed one audio file or every audio file below a folder with an exported encoder."""
    enc = load_encoder(checkpoint, device, chunk_seconds, batch_size, context_seconds)
    enc._layer_index(layer)  # a bad --layer fails before any decoding
    found = find_audio(Path(audio))
    readable = read_found(found, Path(audio).is_file(), enc.features, enc.encoder.cfg.patch_time)
    start = time.perf_counter()
    keys, files, clips, token_lists, seconds, skipped = [], [], [], [], [], []
    for first in range(0, len(found), FILES_PER_CALL):
        waves, names = [], []
        for key, path, clip, reason in islice(readable, FILES_PER_CALL):
            if clip is None:
                skipped.append((key, reason))
            else:
                waves.append(torch.from_numpy(clip.waveform))
                names.append((key, path))
        if waves:
            out = enc(waveform=waves, sample_rate=SAMPLE_RATE, tokens=tokens, layer=layer)
            clips.append(out.clip.numpy())
            token_lists += [t.numpy() for t in out.tokens] if tokens else []
            keys += [k for k, _ in names]
            files += [p for _, p in names]
            seconds += [len(w) / SAMPLE_RATE for w in waves]
        if progress is not None:
            progress(min(first + FILES_PER_CALL, len(found)), len(found))
    check_some(audio, len(found), keys, skipped, "embedded")
    info = {"dim": enc.dim, "layer": layer, "cols": enc.encoder.cfg.freq_cols,
            "patch_time": enc.encoder.cfg.patch_time, "frame_shift_ms": enc.features.frame_shift_ms,
            "row_seconds": enc.encoder.cfg.patch_time * enc.features.frame_shift_ms / 1000,
            "chunk_seconds": enc.chunk_frames * enc.features.frame_shift_ms / 1000,
            "context_seconds": enc.context_frames * enc.features.frame_shift_ms / 1000, "checkpoint": str(checkpoint)}
    return FileEmbeddings(keys, files, np.concatenate(clips), token_lists if tokens else None, seconds, skipped,
                          info, time.perf_counter() - start)


def read_found(found: list[tuple[str, Path]], single: bool, features: FbankConfig, patch_time: int
               ) -> Iterator[tuple[str, Path, Clip | None, str | None]]:
    """(key, path, the file as 16 kHz mono, None) per file of find_audio, or (key, path, None, why not) where a
    file cannot be read or gives less than one token (patch_time fbank frames); with single, that is an error."""
    for key, path in found:
        clip, reason = None, None
        try:
            clip = load_clip(path, SAMPLE_RATE)
        except (AudioError, OSError) as e:
            reason = f"cannot read it as audio ({e})"
        else:
            frames = features.num_frames(len(clip.waveform))
            if frames < patch_time:
                clip, reason = None, (f"too short: {clip.duration:.3f} s gives {frames} fbank frames, one token "
                                      f"needs {patch_time}")
        if reason is not None and single:
            raise MaeastError(f"{path}: {reason}")
        yield key, path, clip, reason


def check_some(audio, files: int, kept: list, skipped: list[tuple[str, str]], done: str) -> None:
    """The one-line error when none of a folder's files could be used."""
    if not kept:
        raise MaeastError(f"{audio}: none of its {files} audio files could be {done} "
                          f"(first: {skipped[0][0]}: {skipped[0][1]})")


def save_embeddings(result: FileEmbeddings, out: str | Path) -> list[Path]:
    """Write by extension (module docstring); returns the files written."""
    out = Path(out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise MaeastError(f"--out {out}: name a .npy or .safetensors file")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": OUTPUT_FORMAT, "keys": result.keys, "files": [str(p) for p in result.files], **result.info,
            "seconds": [round(s, 4) for s in result.seconds],
            "skipped": [{"key": k, "reason": r} for k, r in result.skipped]}
    if result.tokens is not None:
        meta["token_offsets"] = np.concatenate([[0], np.cumsum([t.shape[-2] for t in result.tokens])]).tolist()
    if out.suffix == ".safetensors":
        tensors = {f"clip/{k}": torch.from_numpy(result.clip[i]).contiguous() for i, k in enumerate(result.keys)}
        if result.tokens is not None:
            tensors |= {f"tokens/{k}": torch.from_numpy(t).contiguous() for k, t in zip(result.keys, result.tokens)}
        save_file(tensors, str(out), metadata={"format": OUTPUT_FORMAT, "maeast": json.dumps(meta)})
        return [out]
    written = [out, out.with_suffix(".json")]
    np.save(out, result.clip)
    if result.tokens is not None:
        tokens_file = out.with_suffix(".tokens.npy")
        np.save(tokens_file, np.concatenate(result.tokens, axis=-2))
        written.insert(1, tokens_file)
    written[-1].write_text(json.dumps(meta, indent=1) + "\n")
    return written


def read_embeddings(path: str | Path) -> tuple[dict, np.ndarray, list[np.ndarray] | None]:
    """What save_embeddings wrote -> (JSON, clip [files, D], per-file tokens or None)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), "np") as f:
            meta = json.loads(f.metadata()["maeast"])
            clip = np.stack([f.get_tensor(f"clip/{k}") for k in meta["keys"]])
            tokens = [f.get_tensor(f"tokens/{k}") for k in meta["keys"]] if "token_offsets" in meta else None
        return meta, clip, tokens
    meta = json.loads(path.with_suffix(".json").read_text())
    clip = np.load(path)
    if "token_offsets" not in meta:
        return meta, clip, None
    flat, o = np.load(path.with_suffix(".tokens.npy")), meta["token_offsets"]
    return meta, clip, [flat[..., o[i]:o[i + 1], :] for i in range(len(meta["keys"]))]
