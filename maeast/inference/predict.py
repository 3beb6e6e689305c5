"""`maeast predict`: a fine-tuned classifier's labels for audio files of any length.

Each file is read as 16 kHz mono (maeast.audio), turned into the fbank the classifier recorded, and cut
into windows of the classifier's clip length, one every `hop_seconds`, the last one ending at the file's
end (a file shorter than a window is one window of its own length). Each window gets class scores
(softmax, or sigmoid for a multi-label classifier); a file's scores are the mean over its windows.
Files that cannot be read, or are shorter than one token, are skipped and listed. The classifier runs in
maeast.precision's inference precision: bf16 autocast on CUDA, fp32 on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from maeast.artifacts import features_of, load_classifier
from maeast.errors import MaeastError
from maeast.features import fbank, fit_frames
from maeast.inference.files import check_some, find_audio, read_found
from maeast.precision import inference_autocast
from maeast.shards.format import SAMPLE_RATE


@dataclass
class FilePrediction:
    key: str
    seconds: float
    scores: torch.Tensor  # [C] the mean of the windows' scores
    windows: list[tuple[float, float, torch.Tensor]]  # (start s, end s, scores [C]) per window


@dataclass
class Predictions:
    labels: list[str]
    multi_label: bool
    window_seconds: float
    hop_seconds: float
    files: list[FilePrediction] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)

    def top(self, scores: torch.Tensor, k: int) -> list[tuple[str, float]]:
        values, index = scores.topk(min(k, len(self.labels)))
        return [(self.labels[i], float(v)) for v, i in zip(values.tolist(), index.tolist())]

    def to_dict(self, k: int) -> dict:
        return {"labels": self.labels, "multi_label": self.multi_label, "window_seconds": self.window_seconds,
                "hop_seconds": self.hop_seconds,
                "files": [{"key": f.key, "seconds": round(f.seconds, 3), "top": self.top(f.scores, k),
                           "windows": [{"start": round(a, 3), "end": round(b, 3), "top": self.top(s, k)}
                                       for a, b, s in f.windows]} for f in self.files],
                "skipped": [{"key": key, "reason": reason} for key, reason in self.skipped]}


def predict_files(checkpoint: str | Path, audio: str | Path, hop_seconds: float | None = None,
                  batch_size: int = 16, device: str = "cpu") -> Predictions:
    """Score one audio file, or every audio file below a folder, with a fine-tuned classifier."""
    model, info = load_classifier(checkpoint, device)
    features = features_of(info)
    shift = features.frame_shift_ms / 1000
    window = max(int(round(info["clip_seconds"] / shift)), model.encoder.cfg.patch_time)  # frames
    hop = window // 2 if hop_seconds is None else int(round(hop_seconds / shift))
    if hop < 1:
        raise MaeastError(f"--hop-seconds {hop_seconds} is under one fbank frame ({shift * 1000:g} ms)")
    out = Predictions(info["labels"], info["multi_label"], window * shift, hop * shift)
    found = find_audio(Path(audio))
    for key, path, clip, reason in read_found(found, Path(audio).is_file(), features, model.encoder.cfg.patch_time):
        if clip is None:
            out.skipped.append((key, reason))
            continue
        x = fbank(torch.from_numpy(clip.waveform).to(device), SAMPLE_RATE, features)  # [T, F]
        starts = window_starts(len(x), window, hop)
        size = min(window, len(x))
        scores = []
        with torch.no_grad():
            for first in range(0, len(starts), batch_size):
                batch = torch.stack([x[s:s + size] for s in starts[first:first + batch_size]])  # [b, W, F]
                batch = fit_frames(batch, features) if features.target_frames else batch  # SSAST's fixed length
                with inference_autocast(device):  # bf16 on CUDA, as the classifier was fine-tuned
                    logits = model(batch).float()
                scores.append(logits.sigmoid() if out.multi_label else logits.softmax(dim=-1))
        scores = torch.cat(scores).cpu()  # [windows, C]
        out.files.append(FilePrediction(key, clip.duration, scores.mean(dim=0),
                                        [(s * shift, (s + size) * shift, row) for s, row in zip(starts, scores)]))
    check_some(audio, len(found), out.files, out.skipped, "scored")
    return out


def window_starts(frames: int, window: int, hop: int) -> list[int]:
    """First frames of the windows of a clip: every hop, then one ending at the clip's end; [0] when short."""
    if frames <= window:
        return [0]
    starts = list(range(0, frames - window + 1, hop))
    return starts if starts[-1] == frames - window else starts + [frames - window]
