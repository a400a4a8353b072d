"""The main job end to end on one machine: tiny teacher, vLLM, the service on SQLite, a job, its export."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console

from app.api_client import DistilleryClient
from app.main import write_secret
from app.progress import follow_job
from distillery_tools.service_process import ServiceProcess
from distillery_tools.tiny_teacher import default_cache_dir
from distillery_tools.tiny_teacher.build import ensure_tiny_teacher
from distillery_tools.tiny_teacher.serve import VllmServer

console = Console(stderr=True)


def run_demo(*, prompts: Path, data_dir: Path, max_tokens: int, top_logprobs: int, serve: bool = False) -> int:
    """The demo; with `serve`, it then keeps everything up and prints the console's URL for the job."""
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
            ok = _summary(job, out, size, elapsed, top_logprobs)
            if serve:
                _serve_console(service.url, job["id"], api_key, data_dir)
    return 0 if ok else 1


def _summary(job: dict[str, Any], out: Path, size: int, elapsed: float, top_logprobs: int) -> bool:
    table = pq.read_table(out)
    tokens = sum(len(x) for x in table.column("token_ids").to_pylist())
    counts = job["counts"]
    console.print(
        f"job {job['id']}: {job['status']}, {counts['done']} done, {counts['failed']} failed, "
        f"{tokens} tokens in {elapsed:.1f} s ({tokens / elapsed:.0f} tok/s), k={top_logprobs}"
    )
    print(f"exported {out} rows={table.num_rows} bytes={size} ({size / max(tokens, 1):.1f} B/token)")
    return bool(job["status"] == "completed" and table.num_rows == counts["done"])


def _serve_console(url: str, job_id: str, api_key: str, data_dir: Path) -> None:
    """Keep the teacher and the service up, with the console's URL for the demo job, until Ctrl-C."""
    key_file = write_secret(data_dir / "demo-api-key", api_key + "\n")
    print(f"console: {url}/ui/jobs/{job_id}  (sign in with the key in {key_file}; Ctrl-C stops the demo)", flush=True)
    # Ctrl-C or a plain kill ends it cleanly (the service and the teacher stop on the way out), even when
    # started in the background, where the shell leaves SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping")
