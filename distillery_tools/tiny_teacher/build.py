"""Builds the tiny teacher: a byte-level BPE tokenizer and a small Llama trained briefly on stdlib code.

The result is a HuggingFace model folder that vLLM loads offline; the build is deterministic for a seed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distillery_tools.tiny_teacher.corpus import collect_corpus, corpus_digest
from distillery_tools.tiny_teacher.files import save_model_files, save_tokenizer_files, write_json
from distillery_tools.tiny_teacher.spec import ProgressCallback, TinyTeacherSpec
from distillery_tools.tiny_teacher.train import train_model

log = logging.getLogger(__name__)

BUILDER_VERSION = 1
"""Bump when anything changes what a build produces; it names the cache folder."""

DEFAULT_TRAIN_STEPS = 200
"""About 80 s of training on 2 CPU cores; enough that the top-k logprobs are clearly separated."""

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS)
"""Special tokens take the first ids in this order: pad=0, bos=1, eos=2, then the chat roles."""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unsupported role: ' + message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""One turn per message: role token, newline, content, eos; the generation prompt opens an assistant turn."""


@dataclass(frozen=True)
class TeacherRecipe:
    """What differs between kinds of tiny teacher: training text, extra special tokens (ids after the
    defaults' own), chat template, and the name and version of their cache folders."""

    builder_version: int
    cache_prefix: str
    corpus: Callable[[int], list[str]]
    extra_special_tokens: tuple[str, ...] = ()
    chat_template: str = CHAT_TEMPLATE
    spec: TinyTeacherSpec | None = None
    train_steps: int = DEFAULT_TRAIN_STEPS

    @property
    def special_tokens(self) -> tuple[str, ...]:
        return (*SPECIAL_TOKENS, *self.extra_special_tokens)

    @property
    def additional_special_tokens(self) -> tuple[str, ...]:
        return (*ROLE_TOKENS, *self.extra_special_tokens)


DEFAULT_RECIPE = TeacherRecipe(builder_version=BUILDER_VERSION, cache_prefix="tiny", corpus=collect_corpus)
"""The stdlib-code teacher the demo and tests use."""


@dataclass(frozen=True)
class BuildResult:
    """What a build recorded in distillery_build.json."""

    builder_version: int
    seed: int
    train_steps: int
    num_threads: int
    final_loss: float
    initial_loss: float
    corpus_sha256: str
    corpus_documents: int
    train_tokens: int
    parameters: int
    torch_version: str
    tokenizers_version: str
    transformers_version: str
    python_version: str
    spec: dict[str, Any]


def _train_tokenizer(docs: list[str], vocab_size: int, special_tokens: tuple[str, ...]) -> Any:
    """Trains a byte-level BPE with the special tokens first; adds bos to single sequences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(docs, trainer=trainer, length=len(docs))
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return tokenizer


def _token_stream(tokenizer: Any, docs: list[str]) -> Any:
    """All documents as one int64 tensor of ids, each wrapped as bos + text + eos."""
    import torch

    bos = tokenizer.token_to_id(BOS_TOKEN)
    eos = tokenizer.token_to_id(EOS_TOKEN)
    ids: list[int] = []
    for enc in tokenizer.encode_batch(docs, add_special_tokens=False):
        ids.append(bos)
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def _llama_config(spec: TinyTeacherSpec, tokenizer: Any) -> Any:
    """The LlamaConfig of the tiny teacher, with the tokenizer's special ids."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
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
        bos_token_id=tokenizer.token_to_id(BOS_TOKEN),
        eos_token_id=tokenizer.token_to_id(EOS_TOKEN),
        pad_token_id=tokenizer.token_to_id(PAD_TOKEN),
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
    )


@contextlib.contextmanager
def _torch_threads(num_threads: int) -> Iterator[None]:
    """Pins torch's intra-op thread count (results depend on it) and restores it afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_tiny_teacher(
    output_dir: Path,
    *,
    seed: int = 0,
    train_steps: int = DEFAULT_TRAIN_STEPS,
    num_threads: int = 2,
    spec: TinyTeacherSpec | None = None,
    progress: ProgressCallback | None = None,
    log_every: int = 10,
    overwrite: bool = False,
    recipe: TeacherRecipe = DEFAULT_RECIPE,
) -> Path:
    """Trains the tokenizer and the model and saves a vLLM-loadable folder at output_dir, atomically.

    Same seed, steps, thread count and machine give byte-identical model.safetensors and tokenizer.json.
    """
    import tokenizers
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    spec = spec or TinyTeacherSpec()
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} already exists")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    docs = recipe.corpus(spec.corpus_max_bytes)
    tokenizer = _train_tokenizer(docs, spec.vocab_size, recipe.special_tokens)
    stream = _token_stream(tokenizer, docs)
    log.info(
        "tiny teacher: %d documents, %d tokens, vocab %d, tokenizer in %.1f s",
        len(docs),
        stream.numel(),
        tokenizer.get_vocab_size(),
        time.monotonic() - started,
    )

    config = _llama_config(spec, tokenizer)
    with _torch_threads(num_threads):
        torch.manual_seed(seed)
        model_cls: Any = LlamaForCausalLM
        model = model_cls(config).to(torch.float32)
        parameters = sum(p.numel() for p in model.parameters())
        first_loss, final_loss = train_model(
            model,
            stream,
            spec,
            seed=seed,
            train_steps=train_steps,
            progress=progress,
            log_every=log_every,
        )

    result = BuildResult(
        builder_version=recipe.builder_version,
        seed=seed,
        train_steps=train_steps,
        num_threads=num_threads,
        final_loss=round(final_loss, 6),
        initial_loss=round(first_loss, 6),
        corpus_sha256=corpus_digest(docs),
        corpus_documents=len(docs),
        train_tokens=train_steps * spec.batch_size * spec.seq_len,
        parameters=parameters,
        torch_version=torch.__version__,
        tokenizers_version=tokenizers.__version__,
        transformers_version=transformers.__version__,
        python_version=platform.python_version(),
        spec=asdict(spec),
    )

    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        tmp.chmod(0o755)
        save_tokenizer_files(
            tmp,
            tokenizer,
            spec.max_position_embeddings,
            special_tokens=recipe.special_tokens,
            additional_special_tokens=recipe.additional_special_tokens,
            bos=BOS_TOKEN,
            eos=EOS_TOKEN,
            pad=PAD_TOKEN,
            chat_template=recipe.chat_template,
        )
        save_model_files(tmp, model, config)
        # Written last: its presence marks a complete folder.
        write_json(tmp / "distillery_build.json", asdict(result))
        for path in tmp.iterdir():
            path.chmod(0o644)
        if output_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.rename(output_dir, trash / "old")
            os.rename(tmp, output_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "tiny teacher built in %.1f s: %d params, loss %.3f -> %.3f, at %s",
        time.monotonic() - started,
        parameters,
        first_loss,
        final_loss,
        output_dir,
    )
    return output_dir


def tiny_teacher_dir(cache_dir: Path, seed: int = 0, recipe: TeacherRecipe = DEFAULT_RECIPE) -> Path:
    """Where ensure_tiny_teacher keeps the build of this recipe, builder version and seed."""
    return Path(cache_dir) / f"{recipe.cache_prefix}-v{recipe.builder_version}-seed{seed}"


def is_complete(model_dir: Path) -> bool:
    """True when the folder holds a finished build (its build record is written last)."""
    return (Path(model_dir) / "distillery_build.json").is_file()


def ensure_tiny_teacher(
    cache_dir: Path,
    seed: int = 0,
    *,
    progress: ProgressCallback | None = None,
    recipe: TeacherRecipe = DEFAULT_RECIPE,
) -> Path:
    """Returns cache_dir/<prefix>-v<version>-seed<seed>, building it first if missing (one builder at a time)."""
    target = tiny_teacher_dir(cache_dir, seed, recipe)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if is_complete(target):
                return target
            # Leftovers of killed builds; safe to remove while holding the lock.
            for kind in ("tmp", "old"):
                for stale in target.parent.glob(f".{target.name}.{kind}-*"):
                    shutil.rmtree(stale, ignore_errors=True)
            build_tiny_teacher(
                target,
                seed=seed,
                train_steps=recipe.train_steps,
                spec=recipe.spec,
                progress=progress,
                overwrite=target.exists(),
                recipe=recipe,
            )
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return target
