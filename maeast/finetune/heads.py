"""Temporary: fine-tuning's heads live in maeast.model.heads; delete this once finetune.fold imports them there."""

from maeast.model.heads import Classifier, Head, head_layers, pooled_layers  # noqa: F401
