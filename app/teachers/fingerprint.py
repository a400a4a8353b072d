"""Fingerprints of a teacher's tokenizer and chat template, read through its server's own endpoints.

Datasets from teachers whose tokenizers differ must never be mixed (their ids mean different tokens), so
each job records these. The tokenizer fingerprint hashes how the server tokenizes a fixed multilingual
probe and the surface forms of its first 1,024 ids; the chat template fingerprint hashes the ids a fixed
conversation renders to. Both need only /tokenize and /detokenize, so they work for any vLLM teacher.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from app.teachers.client import TeacherClient, TeacherError

TOKENIZER_PROBE = (
    "def main(argv: list[str]) -> int:\n\treturn 0  # 1234567890 0.5e-3\n"
    "The quick brown fox jumps over the lazy dog. Ünïcödé façade, naïve café; Ελληνικά; русский; "
    "中文分词测试; 日本語のテキスト; 한국어; हिन्दी; عربى; emoji 🤖🚀; tabs\t\tand   spaces\n\n"
)
CHAT_PROBE = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U"},
    {"role": "assistant", "content": "A"},
    {"role": "user", "content": "V"},
]
SURFACE_IDS = 1024
SURFACE_CHUNK = 256


def _digest(parts: list[object]) -> str:
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:32]


async def tokenizer_fingerprint(client: TeacherClient) -> str:
    model = client.config.model
    probe = await client.post_json("/tokenize", {"model": model, "prompt": TOKENIZER_PROBE})
    surfaces: list[str] = []
    for start in range(0, SURFACE_IDS, SURFACE_CHUNK):
        ids = list(range(start, start + SURFACE_CHUNK))
        surfaces.append((await client.post_json("/detokenize", {"model": model, "tokens": ids}))["prompt"])
    return "tok-" + _digest([probe["tokens"], surfaces])


async def chat_template_fingerprint(client: TeacherClient, kwargs: dict[str, Any] | None = None) -> str | None:
    """None when the server has no chat template (its /tokenize refuses messages). With `kwargs` the probe
    is rendered with those chat_template_kwargs (a job's own), so it shows what they change; a refusal of
    them raises the TeacherError."""
    body: dict[str, Any] = {"model": client.config.model, "messages": CHAT_PROBE, "add_generation_prompt": True}
    if kwargs is not None:
        body["chat_template_kwargs"] = kwargs
    try:
        rendered = await client.post_json("/tokenize", body)
    except TeacherError:
        if kwargs is not None:
            raise
        return None
    return "chat-" + _digest([rendered["tokens"]])


async def single_token_id(client: TeacherClient, text: str | None) -> int | None:
    """The id `text` tokenizes to, when it is exactly one token (no bos added); else None. Finds a reasoning
    teacher's end-of-thinking marker (`</think>`, a special token) in its own vocabulary."""
    if not text:
        return None
    body = {"model": client.config.model, "prompt": text, "add_special_tokens": False}
    tokens = (await client.post_json("/tokenize", body))["tokens"]
    return int(tokens[0]) if len(tokens) == 1 else None
