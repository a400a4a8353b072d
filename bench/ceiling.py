"""Service ceiling and storage: generated tokens/s Distillery takes in and stores per CPU core, on Postgres,
fed by the replay teacher (recorded k=20 vLLM responses, served as fast as asked), and the bytes Postgres
then holds per stored token (every table, TOAST and index, after VACUUM ANALYZE).

Per core = tokens stored / CPU seconds of the service process between upload and completion (psutil).

    .venv/bin/python -m bench.ceiling --runs 3
    .venv/bin/python -m bench.ceiling --runs 1 --profile data/ceiling.pyspy.txt   # py-spy on the service
    .venv/bin/python -m bench.ceiling --runs 3 --chat --prompts 2048 --name ceiling_chat   # chat messages
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil

from app.codecs.topk import CODECS
from bench.common import (
    cpu_seconds,
    fmt,
    fresh_postgres,
    prompt_set,
    ready_service,
    relation_sizes,
    service_client,
    summary,
    write_prompts,
    write_result,
)
from bench.replay_teacher import DEFAULT_RECORDING, ReplayTeacher
from distillery_tools.service_process import ServiceProcess

TARGET_PER_CORE = 150_000
TARGET_BYTES_PER_TOKEN = 140


@contextlib.contextmanager
def py_spy(pid: int, out: Path | None, *, gil: bool = False) -> Iterator[None]:
    """py-spy record (collapsed stacks) on pid while the block runs, when out is given; `gil`: only the
    thread holding the GIL is sampled (what runs, not what waits for it, in a process with threads)."""
    if out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).with_name("py-spy")),
        "record",
        "--pid",
        str(pid),
        "--output",
        str(out),
        "--format",
        "raw",
        "--rate",
        "100",
        "--nonblocking",  # pausing the process to sample skews the stacks towards system calls
        *(["--gil"] if gil else []),
    ]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)


def write_chat_prompts(path: Path, count: int) -> Path:
    """The same prompt set as one-message chats (the service then calls /v1/chat/completions)."""
    with path.open("wb") as fh:
        for i, prompt in enumerate(prompt_set(count)):
            record = {"messages": [{"role": "user", "content": prompt}], "custom_id": f"p{i}"}
            fh.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
    return path


def one_run(args: argparse.Namespace, workdir: Path, run: int) -> dict[str, Any]:
    """Start replay + service on a fresh database, push one job through, read CPU and storage."""
    prompts = (write_chat_prompts if args.chat else write_prompts)(workdir / "prompts.jsonl", args.prompts)
    with (
        fresh_postgres() as db_url,
        ReplayTeacher(args.recording) as replay,
    ):
        teachers = [
            {
                "name": "tiny",
                "base_url": replay.base_url,
                "model": "tiny",
                "batch_size": args.batch,
                "max_inflight": args.inflight,
            }
        ]
        service = ServiceProcess(
            data_dir=workdir / f"svc{run}",
            teachers=teachers,
            database_url=db_url,
            extra_env={"DISTILLERY_WORKER_POLL_S": "0.02"},
        )
        with service:
            api_key = ready_service(service)
            assert service.process is not None
            pid = service.process.pid
            form = {"teacher": "tiny", "max_tokens": args.max_tokens, "top_logprobs": args.k, "temperature": 1.0}
            if args.codec is not None:
                form["codec"] = args.codec
            with (
                service_client(service.url, api_key) as client,
                py_spy(pid, args.profile if run == 0 else None, gil=args.profile_gil),
            ):
                cpu0, replay0, wall0 = cpu_seconds(pid), cpu_seconds(replay.pid), time.perf_counter()
                busy0 = psutil.cpu_times()
                job = client.upload(prompts, form)
                job = client.wait(job["id"], poll_s=0.1)
                wall = time.perf_counter() - wall0
                cpu, replay_cpu = cpu_seconds(pid) - cpu0, cpu_seconds(replay.pid) - replay0
                busy1 = psutil.cpu_times()
                fidelity = None
                if getattr(args, "fidelity", False):  # bench.storage: the job's own report, after the timing
                    fidelity = client.http.get(f"/v1/jobs/{job['id']}/fidelity").json()
        assert job["status"] == "completed", job
        tokens = int(job["tokens_generated"])
        sizes = relation_sizes(db_url)
    on_disk = sum(s["total"] for s in sizes.values())
    machine_busy = sum(busy1) - sum(busy0) - (busy1.idle - busy0.idle) - (busy1.iowait - busy0.iowait)
    return {
        "tokens": tokens,
        "wall_s": wall,
        "service_cpu_s": cpu,
        "replay_cpu_s": replay_cpu,
        "machine_busy_cpu_s": machine_busy,
        "tokens_per_s": tokens / wall,
        "tokens_per_cpu_s": tokens / cpu,
        "service_cores_used": cpu / wall,
        "bytes_on_disk": on_disk,
        "bytes_per_token": on_disk / tokens,
        "relations": sizes,
        "fidelity": fidelity,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8192)
    parser.add_argument(
        "--max-tokens", type=int, default=128, help="the recording holds 128-token completions; longer ones are joined"
    )
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64, help="the teacher's batch_size (prompts per request)")
    parser.add_argument("--inflight", type=int, default=8, help="the teacher's max_inflight")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chat", action="store_true", help="chat messages (one request per conversation)")
    parser.add_argument(
        "--codec", type=int, choices=sorted(CODECS), help="the job's top-k codec (default: the service's)"
    )
    parser.add_argument("--recording", type=Path, default=DEFAULT_RECORDING)
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks of the first run's service here")
    parser.add_argument("--profile-gil", action="store_true", help="profile only the thread holding the GIL")
    parser.add_argument("--name", default="ceiling")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of bench/results/<name>.json")
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            runs.append(one_run(args, Path(tmp), run))
            r = runs[-1]
            print(
                f"run {run}: {r['tokens']:,} tokens in {r['wall_s']:.1f} s, {r['tokens_per_s']:,.0f} tok/s wall, "
                f"{r['tokens_per_cpu_s']:,.0f} tok/s per core ({r['service_cores_used']:.2f} cores), "
                f"{r['bytes_per_token']:.1f} B/token",
                flush=True,
            )
    figures = {
        "params": {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()},
        "targets": {"tokens_per_cpu_s": TARGET_PER_CORE, "bytes_per_token": TARGET_BYTES_PER_TOKEN},
        **{
            key: summary([r[key] for r in runs])
            for key in ("tokens_per_cpu_s", "tokens_per_s", "service_cores_used", "bytes_per_token")
        },
        "runs": runs,
    }
    path = write_result(args.name, figures, out=args.out)
    print(
        f"ceiling: {fmt(figures['tokens_per_cpu_s'], 'tok/s per core')} (target >= {TARGET_PER_CORE:,}); "
        f"{fmt(figures['tokens_per_s'], 'tok/s wall')}; storage {figures['bytes_per_token']['median']:.1f} "
        f"B/token (target <= {TARGET_BYTES_PER_TOKEN}); {path}"
    )


if __name__ == "__main__":
    main()
