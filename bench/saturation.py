"""Saturation: generated tokens/s of Distillery (default settings, upload to completed, on a fresh Postgres)
against the best bare client straight to the same vLLM server, and the bytes Postgres spends per stored token.

The bare client is the anchor at its best: every prompt in flight at once, as `/v1/completions` requests of
`--bare-batch` prompts each (logprobs = k, token ids, T = 1), reading and parsing each whole response.
Rounds interleave the two sides (alternating which goes first) on one vLLM server; each Distillery run gets
a freshly started service on a fresh database. `--mix long-tail` gives each prompt its own max_tokens, drawn
(seeded) from 8..512 with most short and a few long; Distillery then gets one job per distinct max_tokens,
all uploaded back to back, and its time runs until the last job completes.

    .venv/bin/python -m bench.saturation                   # 512 prompts x 64 tokens, k = 20, 5 rounds
    .venv/bin/python -m bench.saturation --mix long-tail   # writes bench/results/saturation_longtail.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from app.api_client import FINAL_STATUSES, DistilleryClient
from bench.common import (
    fmt,
    fresh_postgres,
    postgres_cpu_seconds,
    prompt_set,
    ready_service,
    relation_sizes,
    summary,
    tiny_teacher,
    write_result,
)
from distillery_tools.service_process import ServiceProcess

MODEL = "tiny"
LONG_TAIL_VALUES = (8, 16, 32, 64, 128, 256, 512)
LONG_TAIL_EXPONENT = 0.5  # P(v) ~ v^-0.5: 32 % of prompts get 8 tokens, 4 % get 512; mean ~64 tokens
POLL_S = 0.1

# max_tokens -> the prompts generated with it, longest first (both sides send in this order).
Groups = dict[int, list[str]]


def long_tail_max_tokens(count: int, seed: int) -> list[int]:
    """A seeded draw of `count` max_tokens from LONG_TAIL_VALUES with P(v) proportional to v^-0.5."""
    weights = [v**-LONG_TAIL_EXPONENT for v in LONG_TAIL_VALUES]
    return random.Random(seed).choices(LONG_TAIL_VALUES, weights=weights, k=count)


def workload(prompts: list[str], *, mix: str, max_tokens: int, seed: int) -> Groups:
    """The prompts grouped by their max_tokens: one group under the fixed mix, up to 7 under long-tail."""
    if mix == "fixed":
        return {max_tokens: prompts}
    groups: Groups = {}
    for prompt, tokens in zip(prompts, long_tail_max_tokens(len(prompts), seed), strict=True):
        groups.setdefault(tokens, []).append(prompt)
    return {tokens: groups[tokens] for tokens in sorted(groups, reverse=True)}


def completion_bodies(groups: Groups, *, batch: int, k: int) -> list[tuple[int, bytes]]:
    """The bare client's requests: each group cut into prompt lists of up to `batch`; (prompts, JSON body)."""
    bodies = []
    for max_tokens, prompts in groups.items():
        for i in range(0, len(prompts), batch):
            chunk = prompts[i : i + batch]
            body = {
                "model": MODEL,
                "prompt": chunk,
                "max_tokens": max_tokens,
                "temperature": 1.0,
                "logprobs": k,
                "return_tokens_as_token_ids": True,
                "return_token_ids": True,
            }
            bodies.append((len(chunk), orjson.dumps(body)))
    return bodies


async def bare_client(base_url: str, bodies: list[tuple[int, bytes]]) -> dict[str, Any]:
    """Send every request at once, read and parse each whole response; generated tokens and wall time."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=base_url, timeout=1800, limits=limits, headers=headers) as client:

        async def one(prompts: int, body: bytes) -> int:
            response = await client.post("/v1/completions", content=body)
            response.raise_for_status()
            answer = orjson.loads(response.content)
            assert len(answer["choices"]) == prompts, f"{len(answer['choices'])} choices for {prompts} prompts"
            return int(answer["usage"]["completion_tokens"])

        started = time.perf_counter()
        counts = await asyncio.gather(*(one(prompts, body) for prompts, body in bodies))
        elapsed = time.perf_counter() - started
    tokens = sum(counts)
    return {
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "requests_in_flight": len(bodies),
        "prompts_per_request": max(prompts for prompts, _ in bodies),
    }


def write_prompt_files(groups: Groups, workdir: Path) -> dict[int, Path]:
    """One JSONL upload per group."""
    files = {}
    for max_tokens, prompts in groups.items():
        path = workdir / f"prompts_{max_tokens}.jsonl"
        path.write_bytes(b"".join(orjson.dumps({"prompt": p}, option=orjson.OPT_APPEND_NEWLINE) for p in prompts))
        files[max_tokens] = path
    return files


def _job_span_s(jobs: list[dict[str, Any]]) -> float:
    """The jobs' own span: first created_at to last finished_at."""
    created = min(datetime.fromisoformat(j["created_at"]) for j in jobs)
    finished = max(datetime.fromisoformat(j["finished_at"]) for j in jobs)
    return (finished - created).total_seconds()


def through_service(url: str, api_key: str, files: dict[int, Path], *, k: int) -> dict[str, Any]:
    """Upload one job per file back to back, poll until all are final; timed from the first upload."""
    with DistilleryClient(url, api_key) as client:
        started = time.perf_counter()
        ids = [
            client.upload(path, {"teacher": MODEL, "max_tokens": tokens, "top_logprobs": k, "temperature": 1.0})["id"]
            for tokens, path in files.items()
        ]
        uploaded = time.perf_counter() - started
        final: dict[str, dict[str, Any]] = {}
        while True:
            for job_id in ids:
                if job_id not in final:
                    job = client.job(job_id)
                    if job["status"] in FINAL_STATUSES:
                        final[job_id] = job
            if len(final) == len(ids):
                break
            time.sleep(POLL_S)
        elapsed = time.perf_counter() - started
    jobs = [final[job_id] for job_id in ids]
    for job in jobs:
        assert job["status"] == "completed", job
    tokens = sum(j["tokens_generated"] for j in jobs)
    return {
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "upload_seconds": uploaded,
        "job_seconds": _job_span_s(jobs),
        "job_ids": ids,
    }


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its live children."""
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def distillery_round(teacher_url: str, files: dict[int, Path], *, k: int, workdir: Path) -> dict[str, Any]:
    """A fresh service with default dispatch settings on a fresh database: one timed run, CPU and storage."""
    teachers = [{"name": MODEL, "base_url": teacher_url, "model": MODEL}]
    with (
        fresh_postgres() as db_url,
        ServiceProcess(data_dir=workdir, teachers=teachers, database_url=db_url) as service,
    ):
        api_key = ready_service(service)
        assert service.process is not None
        service_cpu, pg_cpu = tree_cpu_seconds(service.process.pid), postgres_cpu_seconds()
        result = through_service(service.url, api_key, files, k=k)
        # On this 2-core machine the service and Postgres take CPU the CPU teacher would use.
        result["service_cores"] = (tree_cpu_seconds(service.process.pid) - service_cpu) / result["seconds"]
        result["postgres_cores"] = (postgres_cpu_seconds() - pg_cpu) / result["seconds"]
        stored = sum(r["total"] for r in relation_sizes(db_url).values())
    result["postgres_bytes_per_token"] = stored / result["tokens"]
    return result


@contextlib.contextmanager
def _teacher(url: str | None, log_dir: Path) -> Iterator[str]:
    """The given server's URL, or a tiny teacher started for the run."""
    if url:
        yield url
        return
    with tiny_teacher(log_dir) as started:
        yield started


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per prompt (fixed mix only)")
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--bare-batch", type=int, default=64, help="prompts per request of the bare client")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (bare and Distillery)")
    parser.add_argument("--mix", choices=("fixed", "long-tail"), default="fixed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the long-tail max_tokens draw")
    parser.add_argument("--teacher-url", help="use this running tiny-teacher vLLM server instead of starting one")
    parser.add_argument("--name", help="result name (default saturation, or saturation_longtail)")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of bench/results/<name>.json")
    args = parser.parse_args()
    if args.name is None:
        args.name = "saturation_longtail" if args.mix == "long-tail" else "saturation"
    return args


def run_rounds(args: argparse.Namespace, groups: Groups, workdir: Path) -> list[dict[str, Any]]:
    """Warm up, then `args.rounds` interleaved rounds against one vLLM server."""
    bodies = completion_bodies(groups, batch=args.bare_batch, k=args.k)
    files = write_prompt_files(groups, workdir)
    rounds: list[dict[str, Any]] = []
    with _teacher(args.teacher_url, workdir) as teacher_url:
        warm = completion_bodies({8: prompt_set(args.bare_batch)}, batch=args.bare_batch, k=args.k)
        asyncio.run(bare_client(teacher_url, warm))
        for number in range(args.rounds):
            order = ("bare", "distillery") if number % 2 == 0 else ("distillery", "bare")
            result: dict[str, Any] = {"round": number, "first": order[0]}
            for side in order:
                if side == "bare":
                    result["bare"] = asyncio.run(bare_client(teacher_url, bodies))
                else:
                    svc_dir = workdir / f"svc{number}"
                    result["distillery"] = distillery_round(teacher_url, files, k=args.k, workdir=svc_dir)
            bare, dist = result["bare"], result["distillery"]
            result["ratio"] = dist["tokens_per_s"] / bare["tokens_per_s"]
            rounds.append(result)
            print(
                f"round {number} ({order[0]} first): bare {bare['tokens_per_s']:,.0f} tok/s, "
                f"distillery {dist['tokens_per_s']:,.0f} tok/s, ratio {result['ratio']:.3f}; "
                f"{dist['postgres_bytes_per_token']:.1f} B/token, service {dist['service_cores']:.2f} cores, "
                f"postgres {dist['postgres_cores']:.2f} cores",
                flush=True,
            )
    return rounds


def main() -> None:
    args = parse_args()
    groups = workload(prompt_set(args.prompts), mix=args.mix, max_tokens=args.max_tokens, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        rounds = run_rounds(args, groups, Path(tmp))
    bare = [r["bare"] for r in rounds]
    dist = [r["distillery"] for r in rounds]
    figures: dict[str, Any] = {
        "params": {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()},
        "mix": {
            "kind": args.mix,
            "prompts_by_max_tokens": {str(t): len(p) for t, p in groups.items()},
            "order": "longest max_tokens first, on both sides",
        },
        "bare_client": {key: bare[0][key] for key in ("requests_in_flight", "prompts_per_request")},
        "distillery": {"settings": "defaults", "jobs": len(groups)},
        "bare_tokens_per_s": summary([b["tokens_per_s"] for b in bare]),
        "distillery_tokens_per_s": summary([d["tokens_per_s"] for d in dist]),
        "ratio": summary([r["ratio"] for r in rounds]),
        "distillery_job_seconds": summary([d["job_seconds"] for d in dist]),
        "postgres_bytes_per_token": summary([d["postgres_bytes_per_token"] for d in dist]),
        "service_cores": summary([d["service_cores"] for d in dist]),
        "postgres_cores": summary([d["postgres_cores"] for d in dist]),
        "rounds": rounds,
    }
    path = write_result(args.name, figures, out=args.out)
    r = figures["ratio"]
    print(
        f"saturation: ratio median {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f}); "
        f"bare {fmt(figures['bare_tokens_per_s'], 'tok/s')}, distillery {fmt(figures['distillery_tokens_per_s'])}; "
        f"{figures['postgres_bytes_per_token']['median']:.1f} B/token on Postgres; {path}"
    )


if __name__ == "__main__":
    main()
