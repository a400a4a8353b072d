"""The tiny teacher build is deterministic and produces a folder transformers can load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillery_tools.tiny_teacher.build import (
    BUILDER_VERSION,
    TinyTeacherSpec,
    build_tiny_teacher,
    ensure_tiny_teacher,
    tiny_teacher_dir,
)

STEPS = 3
SPEC = TinyTeacherSpec(corpus_max_bytes=1024 * 1024, batch_size=2, seq_len=32)
"""Small corpus and batches keep the two builds fast; the code path is the same as a full build."""


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two independent builds with the same seed and steps."""
    root = tmp_path_factory.mktemp("tiny")
    first = build_tiny_teacher(root / "a", seed=0, train_steps=STEPS, spec=SPEC)
    second = build_tiny_teacher(root / "b", seed=0, train_steps=STEPS, spec=SPEC)
    return first, second


def test_builds_are_byte_identical(two_builds: tuple[Path, Path]) -> None:
    first, second = two_builds
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert sorted(p.name for p in first.parent.iterdir()) == ["a", "b"], "no temp dirs left behind"


def test_build_record(two_builds: tuple[Path, Path]) -> None:
    record = json.loads((two_builds[0] / "distillery_build.json").read_text())
    assert record["builder_version"] == BUILDER_VERSION
    assert record["seed"] == 0
    assert record["train_steps"] == STEPS
    assert record["final_loss"] > 0


def test_config_and_tokenizer_load(two_builds: tuple[Path, Path]) -> None:
    from transformers import AutoConfig, AutoTokenizer

    folder = two_builds[0]
    config = AutoConfig.from_pretrained(folder)
    assert config.architectures == ["LlamaForCausalLM"]
    assert config.vocab_size == 4096
    assert config.max_position_embeddings == 2048

    tok = AutoTokenizer.from_pretrained(folder)
    text = "def foo(x):\n    return x * 2  # ünïcode ✓\n"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert max(ids) < config.vocab_size

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|bos|><|system|>\nBe brief.<|eos|>\n<|user|>\nHi<|eos|>\n<|assistant|>\n"
    bare = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert isinstance(bare, str) and not bare.endswith("<|assistant|>\n")
    role_ids = [tok.convert_tokens_to_ids(t) for t in ("<|system|>", "<|user|>", "<|assistant|>")]
    assert tok.unk_token_id not in role_ids and len(set(role_ids)) == 3


def test_model_loads_and_runs(two_builds: tuple[Path, Path]) -> None:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(two_builds[0])
    with torch.no_grad():
        logits = model(torch.tensor([[1, 50, 60, 70]])).logits
    assert logits.shape == (1, 4, 4096)
    assert torch.isfinite(logits).all()


def test_ensure_reuses_complete_folder(tmp_path: Path) -> None:
    target = tiny_teacher_dir(tmp_path, seed=7)
    assert target.name == f"tiny-v{BUILDER_VERSION}-seed7"
    target.mkdir(parents=True)
    (target / "distillery_build.json").write_text("{}")
    assert ensure_tiny_teacher(tmp_path, seed=7) == target


def test_existing_output_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        build_tiny_teacher(tmp_path / "taken", train_steps=1, spec=SPEC)
