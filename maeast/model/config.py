"""ModelConfig: every size, rate and choice of the MAE-AST model in one typed dataclass.

Defaults are the official MAE-AST patch model (AlanBaade/MAE-AST-Public, config/pretrain/mae_ast.yaml
plus the fairseq model and criterion defaults). `make_config(name, **overrides)` picks a preset;
`to_dict` / `from_dict` round-trip the architecture through JSON so that an exported encoder can be
rebuilt (run choices such as `compile` stay out of it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

from maeast.errors import MaeastError
from maeast.model.masking import MASKS
from maeast.model.norm import INPUT_NORMS

INITS = ("official", "mae")
RUN_CHOICES = ("compile", "views")
"""Fields of how a run trains the model, not of the model: to_dict leaves them out, from_dict defaults them."""


@dataclass
class ModelConfig:
    # Input and tokens
    n_mels: int = 128
    """Mel bins F of the input fbank [B, T, F]."""
    patch_time: int = 16
    """Frames per token. 2 for frame tokens."""
    patch_freq: int = 16
    """Mel bins per token. n_mels for frame tokens; a size not dividing n_mels pads F up, with a warning."""
    stride_time: int | None = None
    """Frames between the starts of time-adjacent tokens, 1..patch_time; None: patch_time (tokens never
    overlap, as MAE-AST). SSAST fine-tunes with overlap: 10 for 16x16 patches, 1 for 2-frame tokens."""
    stride_freq: int | None = None
    """Mel bins between the starts of frequency-adjacent tokens, 1..patch_freq; None: patch_freq (SSAST: 10
    for 16x16 patches; frame tokens span every bin)."""
    input_norm: str = "batchnorm"
    """'batchnorm': BatchNorm over all real frames and bins, no affine, times input_scale (official);
    'none': the features are already normalized (e.g. the ssast feature preset); 'batchnorm_padded': as
    batchnorm, but training statistics count padded frames (zeros), as s3prl's trainable upstream does."""
    input_scale: float = 0.5
    """Multiplier after the batchnorm (the official 0.5 mimics AST's dataset normalization)."""

    # Encoder
    dim: int = 768
    """Encoder width."""
    depth: int = 12
    """Encoder layers (12 official; the paper's ablations use 6)."""
    heads: int = 12
    """Encoder attention heads."""
    ffn_dim: int = 3072
    """Encoder feed-forward width."""
    pre_norm: bool = False
    """LayerNorm before attention/FFN (pre-LN). False = post-LN, as the official code."""
    dropout: float = 0.1
    """Dropout on residual branches and on the transformer input."""
    attn_dropout: float = 0.1
    """Dropout on attention weights."""
    act_dropout: float = 0.0
    """Dropout after the FFN activation."""
    input_dropout: float = 0.1
    """Dropout on the projected tokens before masking (official dropout_input), pretraining only."""
    layerdrop: float = 0.05
    """Probability of skipping each encoder layer in training."""

    stored_positions: int = 0
    """Rows of a stored position table in the encoder and decoder (buffers `positions.table`): 0, every
    model maeast trains, adds exact sinusoids for any length; convert-official sets it when a
    checkpoint's own tables differ from them (fairseq fp16 training rounded them), so that the converted
    model adds the numbers the official one was trained with. Tokens past the table get exact sinusoids."""

    # Decoder
    decoder_dim: int = 768
    """Decoder width; a width other than dim adds a linear projection after the encoder."""
    decoder_depth: int = 2
    """Decoder layers."""
    decoder_heads: int = 12
    """Decoder attention heads."""
    decoder_ffn_dim: int = 3072
    """Decoder feed-forward width."""
    decoder_layerdrop: float = 0.0
    """Probability of skipping each decoder layer in training."""

    # Masking
    mask_type: str = "random"
    """A name in maeast.model.masking.MASKS. Ours: 'random' (the official random_mask), 'chunk' (a mask
    per clip of square blocks; spans on frames), 'tf' (time and frequency lines). The official
    variants by name: 'chunk_official' (one chunk side and one mask per batch, blocks in token-index
    space) and 'retain_spans' (wav2vec 2.0 spans, which are the tokens kept, as the official code does);
    'mask_spans' masks those spans instead, as the official README and the paper describe it."""
    mask_ratio: float = 0.75
    """Fraction of each clip's real tokens that are masked; visible = max(1, floor((1 - ratio) * n)),
    as the official int(). Not used by retain_spans or mask_spans (span_prob sets their coverage)."""
    chunk_min: int = 3
    """Smallest chunk side in tokens (square blocks on patches, spans on frames)."""
    chunk_max: int = 5
    """Largest chunk side in tokens."""
    span_length: int = 10
    """retain_spans and mask_spans: tokens per span (the official mask_length)."""
    span_prob: float = 1.45
    """retain_spans and mask_spans: expected span starts per token x span_length (fairseq's mask_prob; the
    official random_mask_prob 1.45 of the README's retain_spans command). Spans overlap and cover about 74% of
    each clip at 1.45, 23% at 0.29: kept by retain_spans, masked by mask_spans."""

    # Losses
    mse_weight: float = 10.0
    """Weight of the reconstruction (MSE) loss."""
    infonce_weight: float = 1.0
    """Weight of the InfoNCE (classification) loss."""
    norm_targets: bool = False
    """Normalize each target patch to zero mean, unit variance (MAE's norm_pix_loss). Official: off."""

    # Views
    views: int = 1
    """Masked views of each clip per step (EAT's clones, video MAE's repeated sampling): the clip's fbank and
    tokens are made once and `views` independent masks drawn, each from its own generator seeded by a draw of
    the micro-batch's (so by step, place and view); encoder and decoder run on the views as one batch,
    view-major, and the loss is their mean. In pretraining the batch sizes count views: the loader reads
    data.batch_size / views clips per micro-batch, optim.global_batch / views per step. 1: one mask per clip
    (the paper; every preset). A run choice, not architecture: the model's records leave it out."""

    # Runtime
    init: str = "official"
    """'official': normal(0, 0.02) in the transformers (fairseq init_bert_params), PyTorch defaults
    for the token projection and heads, uniform mask token; 'mae': xavier-uniform linears and a
    normal(0, 0.02) mask token (facebookresearch/mae)."""
    compile: bool = False
    """torch.compile each transformer block (MAEAST.compile_blocks) before training; the first steps
    then wait for the compilation. A run choice, not architecture: the records of the model (to_dict:
    encoder.json, model.json, checkpoints) leave it out."""

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise MaeastError(f"model config: {what}")

        for name in ("n_mels", "patch_time", "patch_freq", "dim", "depth", "heads", "ffn_dim",
                     "decoder_dim", "decoder_depth", "decoder_heads", "decoder_ffn_dim",
                     "chunk_min", "chunk_max", "span_length"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                 f"{name} must be a positive integer, got {getattr(self, name)!r}")
        need(self.patch_freq <= self.n_mels, f"patch_freq {self.patch_freq} is larger than n_mels "
             f"{self.n_mels}; use patch_freq = n_mels for frame tokens")
        for name, size in (("stride_time", self.patch_time), ("stride_freq", self.patch_freq)):
            value = getattr(self, name)
            need(value is None or (isinstance(value, int) and 1 <= value <= size),
                 f"{name} must be an integer in [1, {size}] (or null: no overlap), got {value!r}")
        need(self.dim % 2 == 0 and self.decoder_dim % 2 == 0, "dim and decoder_dim must be even (sinusoid positions)")
        need(self.dim % self.heads == 0, f"dim {self.dim} must be a multiple of heads {self.heads}")
        need(self.decoder_dim % self.decoder_heads == 0,
             f"decoder_dim {self.decoder_dim} must be a multiple of decoder_heads {self.decoder_heads}")
        need(0.0 < self.mask_ratio < 1.0, f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        need(isinstance(self.stored_positions, int) and self.stored_positions >= 0,
             f"stored_positions must be an integer >= 0, got {self.stored_positions!r}")
        need(isinstance(self.span_prob, (int, float)) and self.span_prob > 0,
             f"span_prob must be a positive number, got {self.span_prob!r}")
        need(self.chunk_min <= self.chunk_max,
             f"chunk_min {self.chunk_min} is larger than chunk_max {self.chunk_max}")
        for name in ("dropout", "attn_dropout", "act_dropout", "input_dropout", "layerdrop",
                     "decoder_layerdrop"):
            need(0.0 <= getattr(self, name) < 1.0, f"{name} must be in [0, 1), got {getattr(self, name)}")
        need(self.mse_weight >= 0 and self.infonce_weight >= 0 and self.mse_weight + self.infonce_weight > 0,
             "mse_weight and infonce_weight must be >= 0 and not both 0")
        need(self.input_norm in INPUT_NORMS, f"input_norm {self.input_norm!r} is not one of {tuple(INPUT_NORMS)}")
        need(self.init in INITS, f"init {self.init!r} is not one of {INITS}")
        need(self.mask_type in MASKS, f"mask_type {self.mask_type!r} is not one of {tuple(MASKS)}")
        need(isinstance(self.compile, bool), f"compile must be true or false, got {self.compile!r}")
        need(isinstance(self.views, int) and not isinstance(self.views, bool) and self.views >= 1,
             f"views must be an integer >= 1 (masked views of each clip; 1: one), got {self.views!r}")

    @property
    def time_stride(self) -> int:
        """Frames between token rows (stride_time, else patch_time)."""
        return self.stride_time or self.patch_time

    @property
    def freq_stride(self) -> int:
        """Mel bins between token columns (stride_freq, else patch_freq)."""
        return self.stride_freq or self.patch_freq

    @property
    def freq_cols(self) -> int:
        """Tokens per time step (F padded up to a multiple of patch_freq, columns freq_stride apart)."""
        padded = math.ceil(self.n_mels / self.patch_freq) * self.patch_freq
        return (padded - self.patch_freq) // self.freq_stride + 1

    @property
    def patch_dim(self) -> int:
        """Values in one flattened token."""
        return self.patch_time * self.patch_freq

    def tokens_for(self, frames: int) -> int:
        """Tokens from an unpadded clip of `frames` frames (trailing frames short of a patch are dropped)."""
        if self.time_stride == self.patch_time:
            return (frames // self.patch_time) * self.freq_cols
        rows = (frames - self.patch_time) // self.time_stride + 1  # tokens whose frames all fit
        return (rows.clamp(min=0) if hasattr(rows, "clamp") else max(rows, 0)) * self.freq_cols

    def to_dict(self) -> dict[str, Any]:
        """The architecture, as the model's records hold it: every field but the run choices (RUN_CHOICES)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUN_CHOICES}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k != "autocast"}  # older exports: precision is maeast.precision's now
        unknown = sorted(set(d) - known)
        if unknown:
            raise MaeastError(f"model config: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        return cls(**d)


PRESETS: dict[str, dict[str, Any]] = {
    # The official patch model: 12 + 2 layers at 768, 16x16 patches.
    "base": {},
    # The official frame model: 2 frames x 128 bins per token.
    "base_frame": {"patch_time": 2, "patch_freq": 128},
    # CPU demos: a training step on 8 x 10 s in about a second on 2 cores.
    "small": {"dim": 256, "depth": 4, "heads": 4, "ffn_dim": 1024,
              "decoder_dim": 256, "decoder_depth": 1, "decoder_heads": 4, "decoder_ffn_dim": 1024},
    "small_frame": {"dim": 256, "depth": 4, "heads": 4, "ffn_dim": 1024, "patch_time": 2, "patch_freq": 128,
                    "decoder_dim": 256, "decoder_depth": 1, "decoder_heads": 4, "decoder_ffn_dim": 1024},
    # Tests: a forward and backward on short clips in milliseconds.
    "tiny": {"dim": 64, "depth": 2, "heads": 4, "ffn_dim": 128, "layerdrop": 0.0,
             "decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 4, "decoder_ffn_dim": 128},
}


def make_config(name: str = "base", **overrides: Any) -> ModelConfig:
    """The preset `name` with `overrides` applied (unknown keys are an error that names the key)."""
    if name not in PRESETS:
        raise MaeastError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[name], **overrides})
