"""Export: Parquet and JSONL export throughput (tokens/s, streamed over HTTP to a file) and the service's peak
memory (RSS) while exporting, for a job of 1x and one of `--scale`x size, on Postgres.

The database is filled once through the replay teacher; each export then runs in a freshly started service
(no worker), so each peak is that export's own.

    .venv/bin/python -m bench.export --runs 3        # 1x = 1,600 prompts x 128 tokens (~205k), 10x ~2.05M
    .venv/bin/python -m bench.export --runs 3 --dataset --name export_dataset   # and a dataset build of 10x
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    RssSampler,
    fmt,
    fresh_postgres,
    ready_service,
    service_client,
    summary,
    write_prompts,
    write_result,
)
from bench.replay_teacher import DEFAULT_RECORDING, ReplayTeacher
from distillery_tools.service_process import ServiceProcess

TARGET_PARQUET = 500_000
TARGET_MEMORY_RATIO = 1.2
FORMATS = ("parquet", "jsonl")


def fill(args: argparse.Namespace, db_url: str, teacher_url: str, workdir: Path) -> dict[str, dict[str, Any]]:
    """Two jobs, 1x and scale-x, generated through the replay teacher; their ids and token counts."""
    teachers = [{"name": "tiny", "base_url": teacher_url, "model": "tiny", "batch_size": 64, "max_inflight": 8}]
    jobs: dict[str, dict[str, Any]] = {}
    service = ServiceProcess(
        data_dir=workdir / "fill",
        teachers=teachers,
        database_url=db_url,
        extra_env={"DISTILLERY_WORKER_POLL_S": "0.02"},
    )
    with service:
        key = ready_service(service)
        with service_client(service.url, key) as client:
            for size, count in (("1x", args.prompts), (f"{args.scale}x", args.prompts * args.scale)):
                path = write_prompts(workdir / f"{size}.jsonl", count)
                form = {"teacher": "tiny", "max_tokens": args.max_tokens, "top_logprobs": args.k, "temperature": 1.0}
                job = client.wait(client.upload(path, form)["id"], poll_s=0.2)
                assert job["status"] == "completed", job
                jobs[size] = {"id": job["id"], "tokens": int(job["tokens_generated"]), "prompts": count}
    return jobs


def export_once(
    teachers: list[dict[str, Any]], db_url: str, workdir: Path, job: dict[str, Any], fmt_name: str
) -> dict[str, Any]:
    """One export in a fresh service: seconds, tokens/s, file bytes, RSS before and at peak."""
    service = ServiceProcess(data_dir=workdir / "export", teachers=teachers, database_url=db_url, embedded_worker=False)
    out = workdir / f"export.{fmt_name}"
    with service:
        key = ready_service(service, teachers_healthy=False)
        assert service.process is not None
        with service_client(service.url, key) as client, RssSampler(service.process.pid) as rss:
            started = time.perf_counter()
            size = client.export(job["id"], out, fmt_name)
            seconds = time.perf_counter() - started
    out.unlink()
    return {
        "seconds": seconds,
        "tokens_per_s": job["tokens"] / seconds,
        "bytes": size,
        "bytes_per_token": size / job["tokens"],
        "rss_before": rss.baseline,
        "rss_peak": rss.peak,
    }


def build_once(teachers: list[dict[str, Any]], db_url: str, workdir: Path, job: dict[str, Any]) -> dict[str, Any]:
    """One dataset build of the job (train only, no filters) in a fresh service: seconds, tokens/s, RSS."""
    service = ServiceProcess(data_dir=workdir / "build", teachers=teachers, database_url=db_url, embedded_worker=False)
    with service:
        key = ready_service(service, teachers_healthy=False)
        assert service.process is not None
        headers = {"authorization": f"Bearer {key}"}
        with (
            httpx.Client(base_url=service.url, headers=headers, timeout=3600) as http,
            RssSampler(service.process.pid) as rss,
        ):
            started = time.perf_counter()
            built = http.post("/v1/datasets", json={"name": f"bench-{time.time_ns()}", "jobs": [job["id"]]})
            seconds = time.perf_counter() - started
    assert built.status_code == 201 and built.json()["status"] == "ready", built.text
    return {"seconds": seconds, "tokens_per_s": job["tokens"] / seconds, "rss_peak": rss.peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=1600, help="prompts of the 1x job")
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--recording", type=Path, default=DEFAULT_RECORDING)
    parser.add_argument("--dataset", action="store_true", help="also time a dataset build of the big job")
    parser.add_argument("--name", default="export")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of bench/results/<name>.json")
    args = parser.parse_args()
    big = f"{args.scale}x"
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {f: {"1x": [], big: []} for f in FORMATS}
    builds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, fresh_postgres() as db_url, ReplayTeacher(args.recording) as replay:
        workdir = Path(tmp)
        jobs = fill(args, db_url, replay.base_url, workdir)
        filled = ", ".join(f"{size} {job['tokens']:,} tokens" for size, job in jobs.items())
        print(f"filled: {filled}", flush=True)
        teachers = [{"name": "tiny", "base_url": replay.base_url, "model": "tiny"}]
        for run in range(args.runs):
            for fmt_name in FORMATS:
                for size in ("1x", big):
                    r = export_once(teachers, db_url, workdir, jobs[size], fmt_name)
                    runs[fmt_name][size].append(r)
                    print(
                        f"run {run} {fmt_name} {size}: {r['tokens_per_s']:,.0f} tok/s, {r['bytes_per_token']:.1f} "
                        f"B/token, peak RSS {r['rss_peak'] / 2**20:.0f} MiB",
                        flush=True,
                    )
            if args.dataset:
                b = build_once(teachers, db_url, workdir, jobs[big])
                builds.append(b)
                print(
                    f"run {run} dataset build {big}: {b['tokens_per_s']:,.0f} tok/s in {b['seconds']:.1f} s", flush=True
                )
    figures: dict[str, Any] = {
        "params": {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()},
        "targets": {"parquet_tokens_per_s": TARGET_PARQUET, "peak_memory_ratio": TARGET_MEMORY_RATIO},
        "jobs": jobs,
    }
    for fmt_name in FORMATS:
        per = runs[fmt_name]
        figures[fmt_name] = {
            size: {
                "tokens_per_s": summary([r["tokens_per_s"] for r in per[size]]),
                "bytes_per_token": summary([r["bytes_per_token"] for r in per[size]]),
                "rss_peak_mib": summary([r["rss_peak"] / 2**20 for r in per[size]]),
            }
            for size in ("1x", big)
        }
        figures[fmt_name]["peak_memory_ratio"] = summary(
            [b["rss_peak"] / s["rss_peak"] for s, b in zip(per["1x"], per[big], strict=True)]
        )
        figures[fmt_name]["runs"] = per
    if builds:
        figures["dataset_build"] = {
            "tokens_per_s": summary([b["tokens_per_s"] for b in builds]),
            "rss_peak_mib": summary([b["rss_peak"] / 2**20 for b in builds]),
            "runs": builds,
        }
        print(f"dataset build {big}: {fmt(figures['dataset_build']['tokens_per_s'], 'tok/s')}", flush=True)
    path = write_result(args.name, figures, out=args.out)
    p, j = figures["parquet"], figures["jsonl"]
    print(
        f"export: parquet {big} {fmt(p[big]['tokens_per_s'], 'tok/s')} (target >= {TARGET_PARQUET:,}), peak RSS "
        f"{big}/1x {p['peak_memory_ratio']['median']:.2f}; jsonl {big} {fmt(j[big]['tokens_per_s'], 'tok/s')}, "
        f"peak RSS {big}/1x {j['peak_memory_ratio']['median']:.2f} (target <= {TARGET_MEMORY_RATIO}); {path}"
    )


if __name__ == "__main__":
    main()
