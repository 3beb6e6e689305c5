"""maeast: a high-throughput trainer for MAE-AST.

Data flows one way through the package:
audio -> shards -> features (fbank) -> loaders -> model -> engine.
"""

__version__ = "0.1.0"
