"""A small Llama student built on the teacher's vocabulary, so its logits index the teacher's token ids."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class TeacherVocab:
    """What the student must share with the teacher: the vocabulary size and the special token ids."""

    vocab_size: int
    pad_token_id: int = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None


@dataclass(frozen=True)
class StudentSpec:
    """Student size; the defaults (~0.9M parameters at vocab 4096) are a fraction of the 4.2M tiny teacher."""

    hidden_size: int = 128
    intermediate_size: int = 344
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True


def _first_id(value: Any) -> int | None:
    """A config's special id (which may be a list of ids) as one int."""
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def teacher_vocab(teacher_dir: str | Path) -> TeacherVocab:
    """Reads the vocabulary size and special ids of a Hugging Face model folder (config.json, else tokenizer.json)."""
    folder = Path(teacher_dir)
    config_path = folder / "config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config = config.get("text_config", config)
        pad = _first_id(config.get("pad_token_id"))
        return TeacherVocab(
            vocab_size=int(config["vocab_size"]),
            pad_token_id=0 if pad is None else pad,
            bos_token_id=_first_id(config.get("bos_token_id")),
            eos_token_id=_first_id(config.get("eos_token_id")),
        )
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return TeacherVocab(vocab_size=tokenizer.get_vocab_size())


def build_student(vocab: TeacherVocab, spec: StudentSpec | None = None, *, seed: int = 0) -> Any:
    """A randomly initialized `LlamaForCausalLM` over the teacher's vocabulary (float32, deterministic per seed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = spec or StudentSpec()
    config = LlamaConfig(
        vocab_size=vocab.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        hidden_act="silu",
        tie_word_embeddings=spec.tie_word_embeddings,
        pad_token_id=vocab.pad_token_id,
        bos_token_id=vocab.bos_token_id,
        eos_token_id=vocab.eos_token_id,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model_cls: Any = LlamaForCausalLM
        return model_cls(config).to(torch.float32)
    finally:
        torch.random.set_rng_state(state)


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())
