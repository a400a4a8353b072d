"""The tiny teacher's hyperparameters and the progress callback its training reports to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from distillery_tools.tiny_teacher.corpus import DEFAULT_MAX_BYTES

ProgressCallback = Callable[[int, int, float], None]
"""Called as (step, total_steps, loss) while training."""


@dataclass(frozen=True)
class TinyTeacherSpec:
    """Tokenizer, model and training hyperparameters of a build."""

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    seq_len: int = 128
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    corpus_max_bytes: int = DEFAULT_MAX_BYTES
