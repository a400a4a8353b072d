"""Parse speed: tokens/s (per CPU second) of app.teachers.parsing on recorded k=20 responses: a 64-prompt
completions response and a chat response.

    .venv/bin/python -m bench.parse_speed --runs 3
    .venv/bin/python -m bench.parse_speed --runs 3 --reference --name parse_speed_reference   # the old path
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import orjson

from app.teachers import parsing
from app.teachers.parsing import parse_chat, parse_completions
from bench.common import summary, write_result
from bench.replay_teacher import DEFAULT_RECORDING, Responder, load_recording


def _rate(fn: Any, tokens: int, min_seconds: float) -> float:
    """Tokens/s of fn(), repeated for at least min_seconds (after one warm-up call)."""
    fn()
    count = 0
    started = time.process_time()
    while True:
        fn()
        count += 1
        elapsed = time.process_time() - started
        if elapsed >= min_seconds:
            return tokens * count / elapsed


def _reference_completions(body: bytes, *, num_prompts: int, n: int, k: int) -> Any:
    """The pre-numpy algorithm (per-candidate tuples, Python sort), as kept in parsing's reference path."""
    return parsing._reference_completions(parsing._load(body)["choices"], n=n, k=k)


def _reference_chat(body: bytes, *, n: int, k: int, requested_top: int) -> Any:
    data = parsing._load(body)
    return parsing._reference_chat(
        data["choices"], k=k, requested_top=requested_top, prompt_token_ids=data.get("prompt_token_ids")
    )


def measure(recording: Path, *, prompts: int, k: int, min_seconds: float, reference: bool) -> dict[str, float]:
    """One reading: completions and chat parse rates, and orjson.loads alone on the same bytes."""
    completions = _reference_completions if reference else parse_completions
    chat_parse = _reference_chat if reference else parse_chat
    responder = Responder(load_recording(recording))
    status, body = responder.handle(
        "POST",
        "/v1/completions",
        orjson.dumps({"model": responder.model, "prompt": ["x"] * prompts, "max_tokens": 10_000, "logprobs": k}),
    )
    assert status == 200, body[:200]
    tokens = int(orjson.loads(body)["usage"]["completion_tokens"])
    top = responder.rec["chat_top_logprobs"]
    chat_status, chat = responder.handle(
        "POST",
        "/v1/chat/completions",
        orjson.dumps(
            {"model": responder.model, "messages": [], "max_tokens": 10_000, "logprobs": True, "top_logprobs": top}
        ),
    )
    assert chat_status == 200
    chat_tokens = len(orjson.loads(chat)["choices"][0]["logprobs"]["content"])
    return {
        "completions_tokens_per_s": _rate(
            lambda: completions(body, num_prompts=prompts, n=1, k=k), tokens, min_seconds
        ),
        "chat_tokens_per_s": _rate(lambda: chat_parse(chat, n=1, k=k, requested_top=top), chat_tokens, min_seconds),
        "orjson_loads_tokens_per_s": _rate(lambda: orjson.loads(body), tokens, min_seconds),
        "response_bytes_per_token": len(body) / tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recording", type=Path, default=DEFAULT_RECORDING)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum time per reading")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="time the reference (pre-numpy) path instead")
    parser.add_argument("--name", default="parse_speed")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of bench/results/<name>.json")
    args = parser.parse_args()
    runs = [
        measure(args.recording, prompts=args.prompts, k=args.k, min_seconds=args.seconds, reference=args.reference)
        for _ in range(args.runs)
    ]
    figures = {
        "params": {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()},
        **{key: summary([r[key] for r in runs]) for key in runs[0]},
        "runs": runs,
    }
    path = write_result(args.name, figures, out=args.out)
    c, ch = figures["completions_tokens_per_s"], figures["chat_tokens_per_s"]
    print(
        f"parse_speed: completions median {c['median']:,.0f} tok/s (min {c['min']:,.0f}, max {c['max']:,.0f}); "
        f"chat median {ch['median']:,.0f} tok/s; {path}"
    )


if __name__ == "__main__":
    main()
