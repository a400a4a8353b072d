"""Batches: the OpenAI Batch path against the jobs API on the same prompts, and the output file's rendering
speed (streamed from the results, decoded top-k and all) against the JSONL export of the same job, on
Postgres with the replay teacher (so the figures are Distillery's, not the model's).

Each run: the prompts as a JSONL upload to /v1/jobs/upload (upload to completed), then as batch lines
through the official openai client (file upload + batch create to completed), then the batch's output file
downloaded and the batch's job exported as JSONL, both streamed to disk.

    .venv/bin/python -m bench.batch_files --runs 3     # 1,600 completions lines, k = 20
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from openai import OpenAI

from bench.common import (
    fmt,
    fresh_postgres,
    prompt_set,
    ready_service,
    service_client,
    summary,
    write_prompts,
    write_result,
)
from bench.replay_teacher import DEFAULT_RECORDING, ReplayTeacher
from distillery_tools.service_process import ServiceProcess

FINAL = ("completed", "failed", "cancelled", "expired")


def batch_file(count: int, max_tokens: int, k: int) -> bytes:
    lines = (
        {
            "custom_id": f"p{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "logprobs": k, "temperature": 1.0},
        }
        for i, prompt in enumerate(prompt_set(count))
    )
    return b"".join(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE) for line in lines)


def one_run(url: str, key: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with service_client(url, key) as client:
        path = write_prompts(workdir / "prompts.jsonl", args.prompts)
        form = {"teacher": "tiny", "max_tokens": args.max_tokens, "top_logprobs": args.k, "temperature": 1.0}
        started = time.perf_counter()
        job = client.wait(client.upload(path, form)["id"], poll_s=0.1)
        job_s = time.perf_counter() - started
        assert job["status"] == "completed", job

        openai = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)
        content = batch_file(args.prompts, args.max_tokens, args.k)
        started = time.perf_counter()
        uploaded = openai.files.create(file=("batch.jsonl", io.BytesIO(content)), purpose="batch")
        batch = openai.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h")
        while batch.status not in FINAL:
            time.sleep(0.1)
            batch = openai.batches.retrieve(batch.id)
        batch_s = time.perf_counter() - started
        assert batch.status == "completed" and batch.output_file_id, batch
        batch_job = client.job((batch.model_extra or {})["job_id"])
        tokens = int(batch_job["tokens_generated"])

        out = workdir / "output.jsonl"
        started = time.perf_counter()
        openai.files.content(batch.output_file_id).write_to_file(out)
        output_s = time.perf_counter() - started
        output_bytes = out.stat().st_size
        started = time.perf_counter()
        export_bytes = client.export(batch_job["id"], workdir / "export.jsonl", "jsonl")
        export_s = time.perf_counter() - started
    return {
        "job_seconds": job_s,
        "batch_seconds": batch_s,
        "batch_over_job": batch_s / job_s,
        "tokens": tokens,
        "output_tokens_per_s": tokens / output_s,
        "output_bytes_per_token": output_bytes / tokens,
        "export_jsonl_tokens_per_s": tokens / export_s,
        "export_jsonl_bytes_per_token": export_bytes / tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=1600)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--recording", type=Path, default=DEFAULT_RECORDING)
    parser.add_argument("--name", default="batch_files")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp, fresh_postgres() as db_url, ReplayTeacher(args.recording) as replay:
        workdir = Path(tmp)
        teachers = [{"name": "tiny", "base_url": replay.base_url, "model": "tiny", "batch_size": 64, "max_inflight": 8}]
        service = ServiceProcess(
            data_dir=workdir / "svc",
            teachers=teachers,
            database_url=db_url,
            extra_env={"DISTILLERY_WORKER_POLL_S": "0.02"},
        )
        with service:
            key = ready_service(service)
            for run in range(args.runs):
                r = one_run(service.url, key, args, workdir)
                runs.append(r)
                print(
                    f"run {run}: job {r['job_seconds']:.2f} s, batch {r['batch_seconds']:.2f} s "
                    f"({r['batch_over_job']:.2f}x); output file {r['output_tokens_per_s']:,.0f} tok/s "
                    f"({r['output_bytes_per_token']:.0f} B/token), "
                    f"JSONL export {r['export_jsonl_tokens_per_s']:,.0f} tok/s",
                    flush=True,
                )
    keys = [k for k in runs[0] if k != "tokens"]
    figures: dict[str, Any] = {
        "params": {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()},
        **{name: summary([r[name] for r in runs]) for name in keys},
        "runs": runs,
    }
    path = write_result(args.name, figures)
    print(
        f"batch/job time {figures['batch_over_job']['median']:.2f} "
        f"({figures['batch_over_job']['min']:.2f}-{figures['batch_over_job']['max']:.2f}); output file "
        f"{fmt(figures['output_tokens_per_s'], 'tok/s')}; "
        f"JSONL export {fmt(figures['export_jsonl_tokens_per_s'], 'tok/s')}; {path}"
    )


if __name__ == "__main__":
    main()
