"""Hugging Face-style folders: `save_pretrained(dir)` and `from_pretrained(dir or hub id)` for an encoder and
for a fine-tuned classifier, through huggingface_hub's PyTorchModelHubMixin (config.json with the model,
its fbank recipe and, for a classifier, its head and labels; model.safetensors with the weights).

    enc = PretrainedEncoder.from_pretrained("runs/demo_pretrain/encoder")   # any maeast encoder folder too
    enc.save_pretrained("hf/encoder")                                       # or push_to_hub(...)
    out = PretrainedEncoder.from_pretrained("hf/encoder")(fbank)            # EncoderOutput: .x [B, N, D]
    clf = PretrainedClassifier.from_pretrained("runs/ft/main/classifier")   # .labels; forward: logits [B, C]

A local folder without config.json is read as a maeast artifact (maeast.artifacts' path rule: RUN/encoder,
a `maeast convert-official` folder, a classifier folder); anything else goes to huggingface_hub, and a
hub id it cannot reach is a one-line error.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin

from maeast.artifacts import features_of, load_classifier, read_encoder
from maeast.errors import MaeastError
from maeast.model import Classifier, Encoder, ModelConfig
from maeast.model.heads import head_from_record

HUB = dict(library_name="maeast", tags=["audio", "mae-ast", "maeast"], license="mit")


class PretrainedEncoder(nn.Module, PyTorchModelHubMixin, **HUB):
    """An MAE-AST encoder with its fbank recipe: fbank [B, T, F] (maeast.features.fbank(wave, 16000,
    self.features)) -> EncoderOutput."""

    def __init__(self, model: dict, features: dict, pretraining: dict | None = None):
        super().__init__()
        self.encoder = Encoder(ModelConfig.from_dict(model))
        self.features = features_of({"features": features})
        self.pretraining = pretraining or {}

    def forward(self, fbank: torch.Tensor, padding_mask: torch.Tensor | None = None):
        return self.encoder(fbank, padding_mask)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> "PretrainedEncoder":
        def artifact(folder):
            encoder, info = read_encoder(folder)
            out = cls(info["model"], info["features"], info.get("pretraining"))
            out.encoder.load_state_dict(encoder.state_dict())
            return out
        return _load(cls, path, artifact, kwargs)


class PretrainedClassifier(nn.Module, PyTorchModelHubMixin, **HUB):
    """A fine-tuned classifier with its fbank recipe and labels: fbank [B, T, F] -> logits [B, C]."""

    def __init__(self, model: dict, features: dict, head: dict, labels: list[str], multi_label: bool = False,
                 task: str | None = None):
        super().__init__()
        encoder = Encoder(ModelConfig.from_dict(model))
        self.classifier = Classifier(encoder, head_from_record(head, encoder.cfg.dim, len(labels)),
                                     head["weighted"])
        self.features = features_of({"features": features})
        self.labels, self.multi_label, self.task = list(labels), multi_label, task

    def forward(self, fbank: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(fbank, padding_mask)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> "PretrainedClassifier":
        def artifact(folder):
            classifier, info = load_classifier(folder)
            out = cls(classifier.encoder.cfg.to_dict(), info["features"], info["head"], info["labels"],
                      info["multi_label"], info.get("task"))
            out.classifier.load_state_dict(classifier.state_dict())
            return out
        return _load(cls, path, artifact, kwargs)


def _load(cls, path, artifact, kwargs):
    """A maeast artifact folder, or huggingface_hub's from_pretrained (strict), errors in one line."""
    local = Path(path)
    if local.exists() and not (local / "config.json").is_file():
        return artifact(local).eval()
    try:
        return PyTorchModelHubMixin.from_pretrained.__func__(cls, path, strict=True, **kwargs).eval()
    except MaeastError:
        raise
    except Exception as e:  # huggingface_hub's network, missing-file and offline errors
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MaeastError(f"{path}: not a local model folder, and the hub could not give it ({type(e).__name__}: "
                          f"{reason}); give a folder saved by save_pretrained or a maeast model folder") from None
