"""ONNX export of a saved encoder or fine-tuned classifier: fbank frames in; tokens and the clip embedding,
or logits, out; for runtimes without PyTorch (onnxruntime on CPU, GPU, mobile).

    maeast export onnx --checkpoint runs/demo_pretrain/encoder --out encoder.onnx
    session = onnxruntime.InferenceSession("encoder.onnx")
    tokens, clip = session.run(None, {"fbank": feats[None].numpy()})   # feats = maeast.features.fbank(...) [T, F]

The graph takes equal-length clips [B, T, F] (any B, any T of at least one token's frames); an encoder
gives tokens [B, N, D] and their mean [B, D], a classifier its logits [B, C]. What a runtime needs to
make the input and read the output travels in the model's metadata under "maeast": the fbank recipe
(every FbankConfig field, dataset statistics included), the token geometry and, for a classifier, the
labels and whether they are multi-label (sigmoid) or not (softmax). Exported with torch.onnx's dynamo
exporter (onnxscript).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from maeast.artifacts import KINDS, features_of, features_record, load_classifier, read_encoder
from maeast.errors import MaeastError


class _Tokens(nn.Module):
    """An encoder as a graph: fbank [B, T, F] -> (tokens [B, N, D], their mean [B, D])."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, fbank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.encoder(fbank).x
        return tokens, tokens.mean(dim=1)


def export_onnx(checkpoint: str | Path, out: str | Path, classifier: bool = False) -> dict:
    """Write the encoder (or, with classifier, the fine-tuned classifier) a path names as an ONNX file;
    returns the metadata recorded in it."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError:
        raise MaeastError("ONNX export needs the onnx and onnxscript packages: pip install 'maeast[onnx]'") from None
    kind = "classifier" if classifier else "encoder"
    if classifier:
        graph, info = load_classifier(checkpoint)
        cfg, outputs = graph.encoder.cfg, ["logits"]
        extra = {"labels": info["labels"], "multi_label": info["multi_label"], "task": info["task"]}
    else:
        encoder, info = read_encoder(checkpoint)
        graph, cfg, outputs, extra = _Tokens(encoder), encoder.cfg, ["tokens", "clip"], {}
    features = features_of(info)
    meta = {"format": f"maeast-onnx/1 ({KINDS[kind][2]})", "features": features_record(features),
            "tokens": {"patch_time": cfg.patch_time, "patch_freq": cfg.patch_freq, "dim": cfg.dim,
                       "frame_shift_ms": features.frame_shift_ms,
                       **({"stride_time": cfg.time_stride, "stride_freq": cfg.freq_stride}
                          if (cfg.time_stride, cfg.freq_stride) != (cfg.patch_time, cfg.patch_freq) else {})},
            "outputs": outputs, **extra}
    example = torch.zeros(2, 8 * cfg.patch_time, cfg.n_mels)  # two clips, so the batch axis stays free
    frames = torch.export.Dim("frames", min=cfg.patch_time, max=1 << 20)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph.eval(), (example,), dynamo=True, verbose=False, input_names=["fbank"],
                                    output_names=outputs,
                                    dynamic_shapes=({0: torch.export.Dim("batch"), 1: frames},))
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = "maeast", json.dumps(meta)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return meta
