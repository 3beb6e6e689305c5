"""AudioEncoder: an exported encoder with its feature recipe; waveforms or fbanks in, embeddings out.

    import maeast
    enc = maeast.load_encoder("runs/patch/encoder")     # any path maeast.artifacts' path rule reads an encoder from
    out = enc(waveform=wave, sample_rate=44100)         # [N], [B, N], or a list of [N] / [C, N] clips
    out.clip                                            # [B, D]: mean over each clip's real tokens
    out = enc(fbank=feats, tokens=True, layer=6)        # [T, F], [B, T, F] (+ padding_mask [B, T]), or a list
    out.tokens[0]                                       # [N_0, D]; token n covers time row n // out.cols

Waveforms are float audio in [-1, 1] at any rate: they are resampled to 16 kHz (soxr), channels (a
[C, N] clip in a list) averaged, and turned into the fbank recipe recorded in the export
(encoder.json "features": window, mel bins, dataset statistics); the encoder's own normalization (its
BatchNorm statistics) is in its weights. fbank input must be that recipe's output:
`maeast.features.fbank(wave_16k, 16000, enc.features)`.

Long clips are encoded in windows of at most `chunk_seconds` (default: the clip length the encoder was
pretrained on, encoder.json pretraining.max_seconds, else 10 s), each a whole number of token rows and
encoded on its own (positions restart). Consecutive windows overlap: each contributes only the token
rows of its core and sees at least `context_seconds` (default a tenth of a window; 0: windows side by
side) of audio on either side of it as context, except at the clip's ends, so tokens near a window
edge still see their neighbourhood. The cores tile the clip: the tokens returned are the clip's token
rows, in order, each once, and the clip embedding averages them. Windows are encoded `batch_size` at a
time, longest first, zero-padded with a padding mask: padding never reaches a real token, so results do
not depend on batching. Trailing frames short of a token row are dropped.

Memory: the encoder holds at most `batch_size` windows at a time, whatever the clip's length; what
grows with length is the waveform, its fbank and the returned tokens (for one sound, about 4 MB per
minute of 16 kHz audio, 3 MB per minute of fbank, and tokens x D x 4 bytes of output).
`layer`: None for the encoder output, N in 1..depth (or -depth..-1) for the output of transformer
block N (pre-LN encoders: before the final LayerNorm). The call runs without gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from maeast.artifacts import features_of, read_encoder
from maeast.audio import resample
from maeast.errors import MaeastError
from maeast.features import fbank, fit_frames
from maeast.model import Encoder
from maeast.precision import inference_autocast
from maeast.shards.format import SAMPLE_RATE

DEFAULT_CHUNK_SECONDS = 10.0


@dataclass
class Embeddings:
    clip: torch.Tensor  # [B, D] float32 on the CPU: mean over each clip's real tokens ([B, L, D]: layer "all")
    tokens: list[torch.Tensor] | None  # per clip [N_i, D] ([L, N_i, D]: layer "all") float32 on the CPU, when asked
    cols: int  # tokens per time row: token n covers frames [(n // cols) * patch_time, ... + patch_time)
    frames: list[int]  # fbank frames per clip (frames past the last whole token row are not encoded)


class AudioEncoder(nn.Module):
    def __init__(self, encoder: Encoder, info: dict, chunk_seconds: float | None = None, batch_size: int = 16,
                 context_seconds: float | None = None):
        super().__init__()
        self.encoder = encoder.eval()
        self.info = info
        self.features = features_of(info)
        cfg = encoder.cfg
        if self.features.n_mels != cfg.n_mels:
            raise MaeastError(f"encoder.json: features have {self.features.n_mels} mel bins, the model "
                              f"{cfg.n_mels}; the export is inconsistent")
        seconds = chunk_seconds or (info.get("pretraining") or {}).get("max_seconds") or DEFAULT_CHUNK_SECONDS
        if not seconds > 0:
            raise MaeastError(f"chunk_seconds {seconds} must be positive")
        if batch_size < 1:
            raise MaeastError(f"batch_size {batch_size} must be at least 1")
        row_ms = cfg.patch_time * self.features.frame_shift_ms
        rows = max(1, int(seconds * 1000 / self.features.frame_shift_ms) // cfg.patch_time)
        context = rows // 10 if context_seconds is None else int(context_seconds * 1000 / row_ms + 1e-9)
        if context < 0 or (context and 2 * context >= rows):
            raise MaeastError(f"context_seconds {context_seconds} must be at least 0 and under half of a window "
                              f"({rows * row_ms / 2000:g} s with chunk_seconds {seconds:g})")
        self.chunk_frames = rows * cfg.patch_time
        self.context_frames = context * cfg.patch_time
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return self.encoder.cfg.dim

    @property
    def device(self) -> torch.device:
        return self.encoder.proj.weight.device

    def train(self, mode: bool = True) -> "AudioEncoder":
        return super().train(False)  # always eval: BatchNorm running statistics, no dropout

    # ---- inputs -> a list of [T_i, F] fbanks ----

    def fbanks_of_waveforms(self, waveform, sample_rate: int) -> list[torch.Tensor]:
        """[N], [B, N] or a list of [N] / [C, N] clips at `sample_rate` -> per clip [T_i, F] on self.device."""
        if not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
            raise MaeastError(f"sample_rate {sample_rate!r}: give the waveform's rate in Hz (a positive integer)")
        clips = list(waveform) if isinstance(waveform, (list, tuple)) else _rows(waveform, "waveform", (1, 2))
        out = []
        for i, clip in enumerate(clips):
            x = clip.detach().cpu().numpy() if isinstance(clip, torch.Tensor) else np.asarray(clip)
            if x.ndim == 2:
                x = x.mean(axis=0)  # [C, N] -> [N]
            if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
                raise MaeastError(f"waveform {i}: shape {list(x.shape)}, dtype {x.dtype}; give float audio in "
                                  f"[-1, 1] as [N] or [channels, N]")
            x = resample(np.ascontiguousarray(x, dtype=np.float32), int(sample_rate), SAMPLE_RATE)
            out.append(fbank(torch.from_numpy(x).to(self.device), SAMPLE_RATE, self.features))  # [T, F]
        return out

    def fbanks_of_features(self, features, padding_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """[T, F], [B, T, F] with padding_mask [B, T] (True = pad, a suffix), or a list of [T_i, F]."""
        if isinstance(features, (list, tuple)):
            clips = [torch.as_tensor(f) for f in features]
        else:
            x = torch.as_tensor(features)
            if x.ndim == 2:
                x = x[None]
            clips = list(x) if padding_mask is None else [f[: int((~m).sum())] for f, m in zip(x, padding_mask)]
        for i, f in enumerate(clips):
            if f.ndim != 2 or f.shape[-1] != self.encoder.cfg.n_mels:
                raise MaeastError(f"fbank {i}: shape {list(f.shape)}; give [frames, {self.encoder.cfg.n_mels}] "
                                  f"from maeast.features.fbank(wave, 16000, enc.features)")
        return [f.to(self.device, torch.float32) for f in clips]

    # ---- the call ----

    @torch.no_grad()
    def forward(self, waveform=None, sample_rate: int | None = None, *, fbank=None,
                padding_mask: torch.Tensor | None = None, tokens: bool = False,
                layer: int | str | None = None) -> Embeddings:
        """Embed waveforms (with sample_rate) or fbanks (see the module docstring) -> Embeddings."""
        if (waveform is None) == (fbank is None):
            raise MaeastError("give either waveform=... (with sample_rate=...) or fbank=..., not both")
        feats = (self.fbanks_of_waveforms(waveform, sample_rate) if waveform is not None
                 else self.fbanks_of_features(fbank, padding_mask))
        return self.embed_fbanks(feats, tokens=tokens, layer=layer)

    def embed_fbanks(self, feats: list[torch.Tensor], tokens: bool = False, layer: int | str | None = None) -> Embeddings:
        """Per clip [T_i, F] fbanks -> Embeddings (chunked, batched); layer "all": every block's, stacked [L, ...]."""
        cfg = self.encoder.cfg
        layer = self._layer_index(layer)
        if not feats:
            raise MaeastError("no clips to embed: give at least one waveform or fbank")
        if self.features.target_frames:  # SSAST's fixed length, the padding seen (maeast.features.fit_frames)
            feats = [fit_frames(f, self.features) for f in feats]
        pieces = self._chunks(feats)  # (clip, window start, window frames, core start, core frames)
        outputs: dict[int, torch.Tensor] = {}  # piece index -> [n_tokens, D] of its core
        order = sorted(range(len(pieces)), key=lambda j: -pieces[j][2])
        for b in range(0, len(order), self.batch_size):
            group = order[b:b + self.batch_size]
            longest = pieces[group[0]][2]
            x = feats[0].new_zeros(len(group), longest, cfg.n_mels)  # [b, T, F]
            pad = torch.ones(len(group), longest, dtype=torch.bool, device=x.device)  # [b, T] True = pad
            for row, j in enumerate(group):
                clip, start, n = pieces[j][:3]
                x[row, :n], pad[row, :n] = feats[clip][start:start + n], False
            with inference_autocast(x.device):  # bf16 on CUDA, as in training
                out = self.encoder(x, pad if bool(pad.any()) else None, layer_results=layer is not None)
            h = out.x if layer is None else torch.stack(out.layers, 1) if layer == "all" else out.layers[layer]
            for row, j in enumerate(group):  # h [b, N, D] or [b, L, N, D]
                _, start, _, core, n = pieces[j]
                first, count = cfg.tokens_for(core - start), cfg.tokens_for(n)
                outputs[j] = h[row, ..., first:first + count, :].float().cpu()
        per_clip: list[list[torch.Tensor]] = [[] for _ in feats]
        for j, (clip, *_) in enumerate(pieces):  # pieces are in clip and time order
            per_clip[clip].append(outputs[j])
        token_lists = [torch.cat(parts, dim=-2) for parts in per_clip]  # [N_i, D] or [L, N_i, D]
        clip_emb = torch.stack([t.double().mean(-2).float() for t in token_lists])  # [B, D] or [B, L, D]
        return Embeddings(clip_emb, token_lists if tokens else None, cfg.freq_cols, [f.shape[0] for f in feats])

    def _chunks(self, feats: list[torch.Tensor]) -> list[tuple[int, int, int, int, int]]:
        """(clip, window start, window frames, core start, core frames) pieces, in whole token rows: the cores
        tile each clip; a window is at most chunk_frames, its core plus context_frames on either side where
        the clip has them (more on one side at the clip's ends, so every window but a short clip's is full)."""
        pt, window, context = self.encoder.cfg.patch_time, self.chunk_frames, self.context_frames
        stride = window - 2 * context
        pieces = []
        for i, f in enumerate(feats):
            usable = f.shape[0] // pt * pt
            if usable == 0:
                ms = pt * self.features.frame_shift_ms + self.features.frame_length_ms - self.features.frame_shift_ms
                raise MaeastError(f"clip {i} has {f.shape[0]} fbank frames, fewer than one token ({pt} frames, "
                                  f"{ms:g} ms of audio); give longer audio")
            if self.encoder.cfg.time_stride != pt:  # overlapping tokens (SSAST's input): the clip whole, one window
                pieces.append((i, 0, f.shape[0], 0, f.shape[0]))
                continue
            if usable <= window:
                pieces.append((i, 0, usable, 0, usable))
                continue
            for core in range(0, usable, stride):
                start = min(max(0, core - context), usable - window)
                pieces.append((i, start, window, core, min(stride, usable - core)))
        return pieces

    def _layer_index(self, layer: int | str | None) -> int | str | None:
        depth = self.encoder.cfg.depth
        if layer is None or layer == "all":
            return layer
        if not (isinstance(layer, (int, np.integer)) and (1 <= layer <= depth or -depth <= layer <= -1)):
            raise MaeastError(f"layer {layer!r}: this encoder has {depth} layers; give 1..{depth} "
                              f"(or -{depth}..-1), \"all\", or none for the encoder output")
        return int(layer) - 1 if layer > 0 else depth + int(layer)


def _rows(x, what: str, ndims: tuple[int, ...]) -> list:
    x = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    if x.ndim not in ndims:
        raise MaeastError(f"{what} has shape {list(x.shape)}; give [N] or [batch, N] (or a list of clips)")
    return [x] if x.ndim == 1 else list(x)


def load_encoder(path, device: str | torch.device = "cpu", chunk_seconds: float | None = None,
                 batch_size: int = 16, context_seconds: float | None = None) -> AudioEncoder:
    """The encoder a path names (maeast.artifacts' path rule: RUN/encoder, a run or checkpoint folder, a
    `maeast convert-official` folder, a classifier, either file) as an AudioEncoder on `device`, in eval mode."""
    encoder, info = read_encoder(path, device)
    return AudioEncoder(encoder, info, chunk_seconds, batch_size, context_seconds)
