"""Submission: upload of a JSONL prompt file (POST /v1/jobs/upload) on Postgres, time from sending to the
201 (job accepted, items stored), and the service's peak memory (RSS) above its idle size while it runs,
for the full file and a file `--small-ratio` times smaller (memory should not grow with the file).

Each upload runs in a freshly started service (no worker, the replay teacher answers its probe).

    .venv/bin/python -m bench.submission --runs 3        # 50,000 prompts against 5,000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

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

TARGET_SECONDS = 10.0


def upload_once(args: argparse.Namespace, teacher_url: str, workdir: Path, path: Path) -> dict[str, Any]:
    """One upload on a fresh database and service: seconds to 201, RSS before and at peak."""
    teachers = [{"name": "tiny", "base_url": teacher_url, "model": "tiny"}]
    with fresh_postgres() as db_url:
        service = ServiceProcess(
            data_dir=workdir / "svc", teachers=teachers, database_url=db_url, embedded_worker=False
        )
        with service:
            key = ready_service(service)
            assert service.process is not None
            form = {"teacher": "tiny", "max_tokens": 128, "top_logprobs": args.k}
            with service_client(service.url, key) as client, RssSampler(service.process.pid) as rss:
                started = time.perf_counter()
                job = client.upload(path, form)
                seconds = time.perf_counter() - started
    assert job["counts"]["total"] == sum(1 for _ in path.open("rb")), job
    return {
        "seconds": seconds,
        "prompts_per_s": job["counts"]["total"] / seconds,
        "file_bytes": path.stat().st_size,
        "rss_before": rss.baseline,
        "rss_peak": rss.peak,
        "rss_growth_mib": (rss.peak - rss.baseline) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=50_000)
    parser.add_argument("--small-ratio", type=int, default=10, help="the small file has prompts / this")
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--recording", type=Path, default=DEFAULT_RECORDING)
    parser.add_argument("--name", default="submission")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of bench/results/<name>.json")
    args = parser.parse_args()
    small_count = max(1, args.prompts // args.small_ratio)
    runs: dict[str, list[dict[str, Any]]] = {"full": [], "small": []}
    with tempfile.TemporaryDirectory() as tmp, ReplayTeacher(args.recording) as replay:
        workdir = Path(tmp)
        files = {
            "full": write_prompts(workdir / "full.jsonl", args.prompts),
            "small": write_prompts(workdir / "small.jsonl", small_count),
        }
        for run in range(args.runs):
            for size in ("full", "small"):
                r = upload_once(args, replay.base_url, workdir, files[size])
                runs[size].append(r)
                print(
                    f"run {run} {size}: {r['seconds']:.2f} s to accepted, RSS +{r['rss_growth_mib']:.0f} MiB "
                    f"(peak {r['rss_peak'] / 2**20:.0f} MiB)",
                    flush=True,
                )
    figures: dict[str, Any] = {
        "params": {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()},
        "targets": {"seconds": TARGET_SECONDS},
        "prompts": {"full": args.prompts, "small": small_count},
        **{
            size: {
                key: summary([r[key] for r in runs[size]])
                for key in ("seconds", "prompts_per_s", "rss_growth_mib", "rss_peak")
            }
            for size in ("full", "small")
        },
        "peak_rss_ratio_full_to_small": summary(
            [f["rss_peak"] / s["rss_peak"] for f, s in zip(runs["full"], runs["small"], strict=True)]
        ),
        "runs": runs,
    }
    path = write_result(args.name, figures, out=args.out)
    full, small = figures["full"], figures["small"]
    print(
        f"submission: {args.prompts:,} prompts accepted in {full['seconds']['median']:.2f} s "
        f"({full['seconds']['min']:.2f}-{full['seconds']['max']:.2f}; target < {TARGET_SECONDS:.0f}); RSS growth "
        f"{fmt(full['rss_growth_mib'], 'MiB')} vs {fmt(small['rss_growth_mib'], 'MiB')} at {small_count:,}; {path}"
    )


if __name__ == "__main__":
    main()
