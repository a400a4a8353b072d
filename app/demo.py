"""The main job end to end on one machine: tiny teacher, vLLM, the service on SQLite, a job, its export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
from rich.console import Console

from app.api_client import DistilleryClient
from app.tiny_teacher import default_cache_dir
from app.tiny_teacher.build import ensure_tiny_teacher
from app.tiny_teacher.serve import VllmServer, free_port

console = Console(stderr=True)


def start_service(data_dir: Path, teacher_url: str, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """`distillery serve` with an embedded worker on a SQLite file in data_dir."""
    env = dict(os.environ)
    env.update(
        DISTILLERY_DATA_DIR=str(data_dir),
        DISTILLERY_DATABASE_URL="",
        DISTILLERY_TEACHERS=json.dumps([{"name": "tiny", "base_url": teacher_url, "model": "tiny"}]),
    )
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_until_ready(url: str, timeout: float = 120.0) -> None:
    """Until /readyz answers and the teacher has been probed healthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(f"{url}/readyz", timeout=5).status_code == 200
            teachers = httpx.get(f"{url}/v1/teachers", timeout=5).json()["teachers"] if ready else []
            if teachers and all(t["healthy"] for t in teachers):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the service at {url} was not ready within {timeout:.0f} s")


def run_demo(*, prompts: Path, data_dir: Path, max_tokens: int, top_logprobs: int) -> int:
    from app.cli import follow_job

    data_dir.mkdir(parents=True, exist_ok=True)
    console.print("[bold]1/5[/bold] tiny teacher (built once, then cached)")
    model_dir = ensure_tiny_teacher(default_cache_dir())
    console.print(f"      {model_dir}")
    console.print("[bold]2/5[/bold] starting vLLM on the CPU (about 40 s)")
    with VllmServer(model_dir, log_path=data_dir / "vllm.log", served_model_name="tiny") as teacher:
        teacher.wait_ready(timeout=300)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        console.print(f"[bold]3/5[/bold] starting Distillery on {url} (SQLite in {data_dir})")
        service = start_service(data_dir, teacher.base_url, port, data_dir / "service.log")
        try:
            wait_until_ready(url)
            console.print(f"[bold]4/5[/bold] submitting {prompts}")
            with DistilleryClient(url) as client:
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
                job = follow_job(client, job["id"])
                elapsed = time.monotonic() - started
                out = data_dir / f"job-{job['id']}.parquet"
                console.print(f"[bold]5/5[/bold] exporting to {out}")
                size = client.export(job["id"], out)
        finally:
            service.terminate()
            service.wait(timeout=30)
    table = pq.read_table(out)
    tokens = sum(len(x) for x in table.column("token_ids").to_pylist())
    counts = job["counts"]
    console.print(
        f"job {job['id']}: {job['status']}, {counts['done']} done, {counts['failed']} failed, "
        f"{tokens} tokens in {elapsed:.1f} s ({tokens / elapsed:.0f} tok/s), k={top_logprobs}"
    )
    print(f"exported {out} rows={table.num_rows} bytes={size} ({size / max(tokens, 1):.1f} B/token)")
    return 0 if job["status"] == "completed" and table.num_rows == counts["done"] else 1
