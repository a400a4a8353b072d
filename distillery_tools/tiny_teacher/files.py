"""Writing a built tiny teacher's HuggingFace files: tokenizer, config and weights, as vLLM loads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    """Writes stable, sorted, indented JSON (byte-identical for equal data)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_tokenizer_files(
    folder: Path,
    tokenizer: Any,
    max_len: int,
    *,
    special_tokens: tuple[str, ...],
    additional_special_tokens: tuple[str, ...],
    bos: str,
    eos: str,
    pad: str,
    chat_template: str,
) -> None:
    """Writes tokenizer.json, tokenizer_config.json (with chat template) and special_tokens_map.json."""
    tokenizer.save(str(folder / "tokenizer.json"), pretty=True)
    added = {
        str(tokenizer.token_to_id(tok)): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for tok in special_tokens
    }
    write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": added,
            "additional_special_tokens": list(additional_special_tokens),
            "bos_token": bos,
            "eos_token": eos,
            "pad_token": pad,
            "model_max_length": max_len,
            "clean_up_tokenization_spaces": False,
            "chat_template": chat_template,
        },
    )
    write_json(
        folder / "special_tokens_map.json",
        {
            "bos_token": bos,
            "eos_token": eos,
            "pad_token": pad,
            "additional_special_tokens": list(additional_special_tokens),
        },
    )


def save_model_files(folder: Path, model: Any, config: Any) -> None:
    """Writes config.json, generation_config.json and model.safetensors (tied lm_head left out)."""
    import torch
    from safetensors.torch import save_file

    cfg = config.to_dict()
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg["model_type"] = "llama"
    cfg["torch_dtype"] = "float32"
    cfg["dtype"] = "float32"
    write_json(folder / "config.json", cfg)
    # Token ids only: vLLM would take sampling fields here as request defaults.
    write_json(
        folder / "generation_config.json",
        {
            "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id,
        },
    )
    state = {
        name: tensor.detach().to(torch.float32).contiguous().clone()
        for name, tensor in model.state_dict().items()
        if not (config.tie_word_embeddings and name == "lm_head.weight")
    }
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
