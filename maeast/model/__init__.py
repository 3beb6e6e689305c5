"""The MAE-AST model (Baade, Peng and Harwath, 2022), read top to bottom:

config (ModelConfig, presets) -> norm (input BatchNorm) -> tokens (patchify) -> masking -> positions
-> transformer -> encoder / decoder -> losses -> mae_ast (MAEAST) -> heads (fine-tuning's Head and
Classifier on the encoder); init and optim hold the initialisation and the optimizer parameter groups.
"""

from maeast.model.config import PRESETS, ModelConfig, make_config
from maeast.model.encoder import Encoder, EncoderOutput
from maeast.model.heads import Classifier, Head
from maeast.model.mae_ast import MAEAST, MAEOutput, build_model
from maeast.model.masking import MASKS, Masking
from maeast.model.optim import param_groups
from maeast.model.tokens import patchify, unpatchify

__all__ = ["MAEAST", "MAEOutput", "Encoder", "EncoderOutput", "Classifier", "Head", "ModelConfig", "PRESETS",
           "make_config", "build_model", "MASKS", "Masking", "param_groups", "patchify", "unpatchify"]
