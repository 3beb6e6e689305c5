"""maeast: a high-throughput trainer for MAE-AST.

Data flows one way through the package:
audio -> shards -> features (fbank) -> loaders -> model -> artifacts (saved models) -> engine.
"""

__version__ = "0.1.0"


def load_encoder(path, device="cpu"):
    """An encoder (RUN/encoder, a run or checkpoint folder, a `maeast convert-official` folder: maeast.artifacts)
    as a torch module: `enc(waveform=..., sample_rate=...)` or `enc(fbank=...)` -> clip (and token) embeddings.
    See maeast.inference.encoder."""
    from maeast.inference import load_encoder as load

    return load(path, device)
