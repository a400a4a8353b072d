"""The tiny *reasoning* teacher: trained on chats whose assistant turns think inside <think> ... </think>
before answering, with both markers as special tokens and a template honouring `enable_thinking`.

The generation prompt opens `<think>`, so the model writes its reasoning, then `</think>`, then the answer.
With `chat_template_kwargs: {"enable_thinking": false}` the prompt instead ends with an empty, closed
`<think></think>` (as Qwen3's template does), so the completion holds only an answer and no `</think>`.
Its cache folder (`tiny-reasoning-v<N>-seed<S>`) and version are its own: the default teacher is unchanged.
"""

from __future__ import annotations

import random
from pathlib import Path

from distillery_tools.tiny_teacher.build import (
    EOS_TOKEN,
    TeacherRecipe,
    ensure_tiny_teacher,
    tiny_teacher_dir,
)
from distillery_tools.tiny_teacher.spec import ProgressCallback, TinyTeacherSpec

THINK_START = "<think>"
THINK_END = "</think>"
REASONING_BUILDER_VERSION = 1
"""Bump when anything changes what a reasoning build produces; it names the cache folder."""

REASONING_CORPUS_BYTES = 1024 * 1024
REASONING_TRAIN_STEPS = 150
NO_THINKING_SHARE = 0.1
"""Share of training chats with an empty think block, so the model also answers when thinking is off."""

REASONING_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unsupported role: ' + message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if enable_thinking is defined and enable_thinking is not boolean %}"
    "{{ raise_exception('enable_thinking must be true or false') }}"
    "{% endif %}"
    "{% if add_generation_prompt %}<|assistant|>\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% else %}<think>{% endif %}"
    "{% endif %}"
)
"""The default template, whose generation prompt also opens the think block (or closes it at once); an
enable_thinking that is not a boolean is refused, as a template error."""

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "tiger",
    "lemon",
    "piano",
    "rocket",
    "garden",
    "window",
    "silver",
    "planet",
    "candle",
    "forest",
    "marble",
    "dragon",
    "pencil",
    "orange",
    "bridge",
    "castle",
]


def _addition(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    tens, ones = (a // 10 + b // 10) * 10, a % 10 + b % 10
    thought = f"I add {a} and {b}. The tens make {tens}, the ones make {ones}, so {tens} plus {ones} is {a + b}."
    return f"What is {a} + {b}?", thought, f"{a} + {b} = {a + b}."


def _reverse(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    letters, backwards = " ".join(word), " ".join(reversed(word))
    thought = f"The letters of {word} are {letters}. Read from the end they are {backwards}."
    return f"Reverse the word {word}.", thought, f"The word reversed is {word[::-1]}."


def _larger(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.sample(range(1, 200), 2)
    big, small = max(a, b), min(a, b)
    thought = f"I compare {a} and {b}. {big} minus {small} is {big - small}, more than zero, so {big} is larger."
    return f"Which is larger, {a} or {b}?", thought, f"{big} is larger."


def _count(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    letter = rng.choice(sorted(set(word)))
    hits = word.count(letter)
    thought = f"I spell {word}: {' '.join(word)}. The letter {letter} appears {hits} times."
    return f"How many times does {letter} appear in {word}?", thought, f"{hits}."


TASKS = (_addition, _reverse, _larger, _count)


def reasoning_chat(rng: random.Random, *, thinking: bool) -> str:
    """One training chat as the template renders it (the token stream adds bos and the final eos)."""
    question, thought, answer = rng.choice(TASKS)(rng)
    reasoning = thought if thinking else ""
    return f"<|user|>\n{question}{EOS_TOKEN}\n<|assistant|>\n{THINK_START}{reasoning}{THINK_END}{answer}"


def reasoning_corpus(max_bytes: int, seed: int = 0) -> list[str]:
    """Generated chats (a fixed generator, so the corpus is identical from run to run) up to max_bytes."""
    rng = random.Random(seed)
    docs: list[str] = []
    total = 0
    while True:
        doc = reasoning_chat(rng, thinking=rng.random() >= NO_THINKING_SHARE)
        total += len(doc.encode())
        if total > max_bytes:
            return docs
        docs.append(doc)


REASONING_RECIPE = TeacherRecipe(
    builder_version=REASONING_BUILDER_VERSION,
    cache_prefix="tiny-reasoning",
    corpus=reasoning_corpus,
    extra_special_tokens=(THINK_START, THINK_END),
    chat_template=REASONING_CHAT_TEMPLATE,
    spec=TinyTeacherSpec(
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=2,
        seq_len=96,
        corpus_max_bytes=REASONING_CORPUS_BYTES,
    ),
    train_steps=REASONING_TRAIN_STEPS,
)
"""The generated text is regular: a small vocabulary and a smaller model learn it within a short build."""


def reasoning_teacher_dir(cache_dir: Path, seed: int = 0) -> Path:
    """Where ensure_reasoning_teacher keeps the build for this builder version and seed."""
    return tiny_teacher_dir(cache_dir, seed, REASONING_RECIPE)


def ensure_reasoning_teacher(cache_dir: Path, seed: int = 0, *, progress: ProgressCallback | None = None) -> Path:
    """The reasoning teacher's folder in the cache, built first if missing (one builder at a time)."""
    return ensure_tiny_teacher(cache_dir, seed, progress=progress, recipe=REASONING_RECIPE)
