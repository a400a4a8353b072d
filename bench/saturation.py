"""Saturation: generated tokens/s of a bare batched client straight to vLLM vs the same prompts through
Distillery (submit to completed, on Postgres), and the bytes Postgres spends per stored token.

    .venv/bin/python -m bench.saturation --prompts 512 --max-tokens 96 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from app.api_client import DistilleryClient
from app.service_process import ServiceProcess
from bench.common import (
    cpu_seconds,
    fresh_postgres,
    postgres_cpu_seconds,
    prompt_set,
    ready_service,
    relation_sizes,
    summary,
    tiny_teacher,
    write_result,
)


async def direct(
    base_url: str, prompts: list[str], *, max_tokens: int, k: int, batch: int, inflight: int
) -> dict[str, Any]:
    """A bare async client: prompt lists of `batch`, `inflight` requests at once, responses discarded."""
    sem = asyncio.Semaphore(inflight)
    tokens = 0

    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:

        async def one(chunk: list[str]) -> None:
            nonlocal tokens
            async with sem:
                body = {
                    "model": "tiny",
                    "prompt": chunk,
                    "max_tokens": max_tokens,
                    "temperature": 1.0,
                    "logprobs": k,
                    "return_tokens_as_token_ids": True,
                    "return_token_ids": True,
                }
                response = await client.post("/v1/completions", json=body)
                response.raise_for_status()
                tokens += response.json()["usage"]["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(one(prompts[i : i + batch]) for i in range(0, len(prompts), batch)))
        elapsed = time.perf_counter() - started
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


def through_service(
    url: str, api_key: str, prompts: list[str], *, max_tokens: int, k: int, workdir: Path
) -> dict[str, Any]:
    path = workdir / "prompts.jsonl"
    path.write_text("".join(f'{{"prompt": {__import__("json").dumps(p)}}}\n' for p in prompts))
    with DistilleryClient(url, api_key) as client:
        started = time.perf_counter()
        job = client.upload(path, {"teacher": "tiny", "max_tokens": max_tokens, "top_logprobs": k, "temperature": 1.0})
        job = client.wait(job["id"], poll_s=0.1)
        elapsed = time.perf_counter() - started
    assert job["status"] == "completed", job
    tokens = job["tokens_generated"]
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed, "job_id": job["id"]}


@contextlib.contextmanager
def _teacher(url: str | None, log_dir: Path) -> Iterator[str]:
    """The given server's URL, or a tiny teacher started for the run."""
    if url:
        yield url
        return
    with tiny_teacher(log_dir) as started:
        yield started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--inflight", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--teacher-url", help="use this running tiny-teacher vLLM server instead of starting one")
    parser.add_argument("--name", default="saturation")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of bench/results/<name>.json")
    args = parser.parse_args()
    prompts = prompt_set(args.prompts)
    direct_runs: list[dict[str, Any]] = []
    service_runs: list[dict[str, Any]] = []
    storage: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, _teacher(args.teacher_url, Path(tmp)) as teacher_url:
        teachers = [
            {
                "name": "tiny",
                "base_url": teacher_url,
                "model": "tiny",
                "batch_size": args.batch,
                "max_inflight": args.inflight,
            }
        ]
        asyncio.run(direct(teacher_url, prompts[: args.batch], max_tokens=8, k=args.k, batch=args.batch, inflight=1))
        for run in range(args.runs):
            direct_runs.append(
                asyncio.run(
                    direct(
                        teacher_url,
                        prompts,
                        max_tokens=args.max_tokens,
                        k=args.k,
                        batch=args.batch,
                        inflight=args.inflight,
                    )
                )
            )
            with (
                fresh_postgres() as db_url,
                ServiceProcess(
                    data_dir=Path(tmp) / f"svc{run}",
                    teachers=teachers,
                    database_url=db_url,
                    extra_env={"DISTILLERY_WORKER_POLL_S": "0.05"},
                ) as service,
            ):
                api_key = ready_service(service)
                assert service.process is not None
                service_cpu, pg_cpu = cpu_seconds(service.process.pid), postgres_cpu_seconds()
                result = through_service(
                    service.url, api_key, prompts, max_tokens=args.max_tokens, k=args.k, workdir=Path(tmp)
                )
                # On this 2-core machine the service and Postgres take CPU the CPU teacher would use.
                result["service_cores"] = (cpu_seconds(service.process.pid) - service_cpu) / result["seconds"]
                result["postgres_cores"] = (postgres_cpu_seconds() - pg_cpu) / result["seconds"]
                service_runs.append(result)
                storage.append(sum(r["total"] for r in relation_sizes(db_url).values()) / result["tokens"])
            print(
                f"run {run}: direct {direct_runs[-1]['tokens_per_s']:.0f} tok/s, "
                f"distillery {result['tokens_per_s']:.0f} tok/s, {storage[-1]:.1f} B/token, service "
                f"{result['service_cores']:.2f} cores, postgres {result['postgres_cores']:.2f} cores",
                flush=True,
            )
    ratios = [s["tokens_per_s"] / d["tokens_per_s"] for s, d in zip(service_runs, direct_runs, strict=True)]
    figures = {
        "params": {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()},
        "direct_tokens_per_s": summary([d["tokens_per_s"] for d in direct_runs]),
        "distillery_tokens_per_s": summary([s["tokens_per_s"] for s in service_runs]),
        "ratio": summary(ratios),
        "postgres_bytes_per_token": summary(storage),
        "service_cores": summary([s["service_cores"] for s in service_runs]),
        "postgres_cores": summary([s["postgres_cores"] for s in service_runs]),
        "runs": {"direct": direct_runs, "distillery": service_runs},
    }
    path = write_result(args.name, figures, out=args.out)
    r, b = figures["ratio"], figures["postgres_bytes_per_token"]
    print(
        f"saturation: ratio median {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f}); "
        f"{b['median']:.1f} B/token on Postgres; {path}"
    )


if __name__ == "__main__":
    main()
