"""The main job end to end on one machine: tiny teacher, vLLM, the service on SQLite, a job, its export."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console

from app.api_client import DistilleryClient
from app.progress import follow_job
from distillery_tools.service_process import ServiceProcess
from distillery_tools.tiny_teacher import default_cache_dir
from distillery_tools.tiny_teacher.build import ensure_tiny_teacher
from distillery_tools.tiny_teacher.serve import VllmServer

console = Console(stderr=True)


def run_demo(*, prompts: Path, data_dir: Path, max_tokens: int, top_logprobs: int) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    console.print("[bold]1/5[/bold] tiny teacher (built once, then cached)")
    model_dir = ensure_tiny_teacher(default_cache_dir())
    console.print(f"      {model_dir}")
    console.print("[bold]2/5[/bold] starting vLLM on the CPU (about 40 s)")
    with VllmServer(model_dir, log_path=data_dir / "vllm.log", served_model_name="tiny") as teacher:
        teacher.wait_ready(timeout=300)
        teachers = [{"name": "tiny", "base_url": teacher.base_url, "model": "tiny"}]
        service = ServiceProcess(data_dir=data_dir, teachers=teachers)
        api_key = service.create_key("demo")
        with service:
            console.print(f"[bold]3/5[/bold] starting Distillery on {service.url} (SQLite in {data_dir})")
            service.wait_ready(api_key)
            console.print(f"[bold]4/5[/bold] submitting {prompts}")
            with DistilleryClient(service.url, api_key) as client:
                job = client.upload(
                    prompts,
                    {
                        "teacher": "tiny",
                        "max_tokens": max_tokens,
                        "top_logprobs": top_logprobs,
                        "temperature": 1.0,
                        "seed": 0,
                    },
                )
                started = time.monotonic()
                job = follow_job(client, console, job["id"])
                elapsed = time.monotonic() - started
                out = data_dir / f"job-{job['id']}.parquet"
                console.print(f"[bold]5/5[/bold] exporting to {out}")
                size = client.export(job["id"], out)
    table = pq.read_table(out)
    tokens = sum(len(x) for x in table.column("token_ids").to_pylist())
    counts = job["counts"]
    console.print(
        f"job {job['id']}: {job['status']}, {counts['done']} done, {counts['failed']} failed, "
        f"{tokens} tokens in {elapsed:.1f} s ({tokens / elapsed:.0f} tok/s), k={top_logprobs}"
    )
    print(f"exported {out} rows={table.num_rows} bytes={size} ({size / max(tokens, 1):.1f} B/token)")
    return 0 if job["status"] == "completed" and table.num_rows == counts["done"] else 1
