"""Request bodies for a teacher's OpenAI-compatible endpoints: completions, chat, scoring, and seeds.

Every body asks for logprobs keyed by token id (`return_tokens_as_token_ids`), never by decoded strings,
which collide, and for the token ids themselves (`return_token_ids`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from app.worker.schemas import JobSpec

ANSWER_BASE_BYTES = 16 << 20
ANSWER_BYTES_PER_ENTRY = 512


def item_seed(job_seed: int, seq: int) -> int:
    """Each prompt's own seed, derived from the job's seed and the prompt's position.

    vLLM applies one request's seed to every prompt in it, and equal seeds draw nearly the same random
    numbers, so unrelated prompts would be sampled in lockstep. A derived seed per prompt keeps them
    independent and still reproducible."""
    digest = hashlib.sha256(f"{job_seed}:{seq}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def completions_body(model: str, spec: JobSpec, prompts: Sequence[str], *, seed: int | None = None) -> dict[str, Any]:
    """A /v1/completions request for a list of prompts, asking for k logprobs keyed by token id."""
    return {
        "model": model,
        "prompt": list(prompts),
        **_sampling(spec, seed),
        "logprobs": spec.k,
        "return_tokens_as_token_ids": True,
        "return_token_ids": True,
    }


def score_body(model: str, spec: JobSpec, token_ids: list[int]) -> dict[str, Any]:
    """Teacher forcing through /v1/completions: the whole sequence as the prompt, one token generated."""
    return {
        "model": model,
        "prompt": token_ids,
        "max_tokens": 1,
        "temperature": 0.0,
        "prompt_logprobs": spec.k,
        "return_token_ids": True,
    }


def chat_top_logprobs(spec: JobSpec) -> int:
    """Chat drops the k-th best when the sampled token is outside the top-k, so ask for k+1 when allowed."""
    if spec.k == 0:
        return 0
    if spec.max_logprobs is None or spec.k + 1 <= spec.max_logprobs:
        return spec.k + 1
    return spec.k


def chat_body(model: str, spec: JobSpec, messages: list[dict[str, Any]], *, seed: int | None = None) -> dict[str, Any]:
    """A /v1/chat/completions request for one conversation."""
    return {
        "model": model,
        "messages": messages,
        **_sampling(spec, seed, chat=True),
        "logprobs": True,
        "top_logprobs": chat_top_logprobs(spec),
        "return_tokens_as_token_ids": True,
        "return_token_ids": True,
    }


def answer_byte_limit(entries: int) -> int:
    """The most bytes a sane answer carrying this many logprob entries can take (a measured answer takes
    ~36 bytes per entry; the margin covers long texts and token ids). Past it the answer is malformed."""
    return ANSWER_BASE_BYTES + entries * ANSWER_BYTES_PER_ENTRY


def logprob_entries_per_prompt(spec: JobSpec) -> int:
    """What one prompt of this job can cost a request at most: n x max_tokens x (k + 1) logprob entries."""
    max_tokens = 1 if spec.kind == "score" else int(spec.params.get("max_tokens") or 1)
    return spec.n * max_tokens * (spec.k + 1)


# vLLM's own sampling parameters a job may set, passed through under the same names when set.
PASSED_THROUGH = (
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "min_tokens",
    "stop_token_ids",
    "include_stop_str_in_output",
    "ignore_eos",
    "skip_special_tokens",
    "logit_bias",
    "allowed_token_ids",
    "bad_words",
    "structured_outputs",
    "truncate_prompt_tokens",
)
CHAT_ONLY = ("chat_template_kwargs", "add_generation_prompt", "continue_final_message")


def _sampling(spec: JobSpec, seed: int | None, *, chat: bool = False) -> dict[str, Any]:
    p = spec.params
    body: dict[str, Any] = {
        "max_tokens": p["max_tokens"],
        "temperature": p["temperature"],
        "top_p": p["top_p"],
        "n": spec.n,
    }
    if p.get("stop"):
        body["stop"] = p["stop"]
    if seed is not None:
        body["seed"] = seed
    for name in (*PASSED_THROUGH, *CHAT_ONLY) if chat else PASSED_THROUGH:
        if p.get(name) is not None:
            body[name] = p[name]
    return body
