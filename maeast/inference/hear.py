"""The HEAR 2021 API (Holistic Evaluation of Audio Representations) over a maeast encoder.

    import maeast.inference.hear as hear
    model = hear.load_model("runs/demo_pretrain/encoder")        # any path maeast.load_encoder takes
    scene = hear.get_scene_embeddings(audio, model)              # audio [n_sounds, n_samples] at 16 kHz
    emb, ms = hear.get_timestamp_embeddings(audio, model)        # [n_sounds, n_timestamps, D], [n_sounds, n_timestamps]

Scene embeddings are the clip embeddings (the mean of every token). Timestamp embeddings are token rows,
each the mean over its frequency columns, stamped at the centre of the audio its frames cover. A row spans
patch_time fbank frames: 20 ms for frame models, 160 ms for 16x16 patches. HEAR asks for a hop of at most
50 ms, so a patch model is run again on the fbank shifted by whole frames (every 40 ms for 16-frame rows:
4 passes) and the rows of all passes are merged in time order.

Sounds of any length (HEAR's go up to 20 minutes) are encoded in overlapping windows of the clip length the
encoder was pretrained on, each giving the rows of its core with context on either side
(maeast.load_encoder; `load_model(path, context_seconds=...)`), at most 16 windows at a time. Memory
bound: the model and one batch of windows, plus, per sound, what grows with its length: at most 12 MB
a minute for the waveform, its fbank and the fbank's workspace, and the embeddings returned
(rows x D x 4 bytes: 3000 rows, 9 MB a minute for D = 768). tests/test_hear.py checks a 20-minute sound
against it (measured: about 170 MB of growth for 20 minutes with a 64-wide model, within its 255 MB).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from maeast.inference.encoder import AudioEncoder, load_encoder
from maeast.shards.format import SAMPLE_RATE

MAX_HOP_MS = 50.0


class HearModel(nn.Module):
    """A maeast AudioEncoder with the attributes HEAR reads."""

    sample_rate = SAMPLE_RATE

    def __init__(self, encoder: AudioEncoder):
        super().__init__()
        self.encoder = encoder
        self.scene_embedding_size = self.timestamp_embedding_size = encoder.dim
        shift = encoder.features.frame_shift_ms
        st = encoder.encoder.cfg.time_stride  # frames between rows: patch_time, or less for overlapping tokens
        # the largest frame step that divides a row step and keeps the hop within MAX_HOP_MS (1 frame at worst)
        self.step = max(d for d in range(1, st + 1) if st % d == 0 and d * shift <= MAX_HOP_MS)


def load_model(model_file_path: str = "", device: str = "cpu", **kwargs) -> HearModel:
    """HEAR's load_model: the encoder a path names (RUN/encoder, a run folder, a convert-official folder)."""
    if not model_file_path:
        raise ValueError("maeast.inference.hear.load_model needs model_file_path: a maeast encoder folder (e.g. RUN/encoder)")
    return HearModel(load_encoder(Path(model_file_path), device, **kwargs)).eval()


@torch.no_grad()
def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """[n_sounds, n_samples] at model.sample_rate -> [n_sounds, scene_embedding_size]."""
    return model.encoder(waveform=audio, sample_rate=model.sample_rate).clip.to(audio.device)


@torch.no_grad()
def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """[n_sounds, n_samples] -> ([n_sounds, n_timestamps, D] row embeddings, [n_sounds, n_timestamps] centres in ms)."""
    enc = model.encoder
    feats = enc.fbanks_of_waveforms(audio, model.sample_rate)
    pt, st, cols = enc.encoder.cfg.patch_time, enc.encoder.cfg.time_stride, enc.encoder.cfg.freq_cols
    f = enc.features
    rows, times = [], []
    for offset in range(0, st, model.step):
        shifted = [x[offset:] for x in feats]
        if min(len(x) for x in shifted) < pt:
            break  # a sound too short for a row at this offset: the passes so far cover it
        tokens = enc.embed_fbanks(shifted, tokens=True).tokens  # per sound [N, D]
        rows.append(torch.stack([t.view(-1, cols, t.shape[-1]).mean(dim=1) for t in tokens]))  # [S, R, D]
        first = offset + torch.arange(rows[-1].shape[1]) * st  # first frame of each row
        times.append((first + (pt - 1) / 2) * f.frame_shift_ms + f.frame_length_ms / 2)  # centre, ms
    emb, ms = torch.cat(rows, dim=1), torch.cat(times)
    order = ms.argsort()
    emb, ms = emb[:, order], ms[order]
    return emb.to(audio.device), ms.expand(len(emb), -1).to(audio.device)
