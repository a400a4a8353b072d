"""Fairness bench: does a small job get through while a big one fills the teacher? Through the service
(default settings, Postgres) on a capacity-limited fleet of simulated replicas (bench.fleet_sim):

(a) alone: project B submits --small prompts to an idle teacher; its completion time.
(b) contended: project A submits --big prompts, --delay seconds later B submits --small; B's completion time,
    and the ratio (b) / (a) (target <= 2). A's job is cancelled once B's is done.
(c) priority: project A submits --big prompts at priority 0, --delay seconds later --small at priority 5;
    when the later job started (its started_at) against the older job's finish, and its completion time.

Completion time is from sending the job to seeing it completed (polled every 0.1 s); the server's
created_at / started_at / finished_at are recorded too. Each phase runs on a fresh database, service and
fleet; every figure is the median (min-max) over --rounds rounds of the three phases.

    .venv/bin/python -m bench.fairness --rounds 5
    .venv/bin/python -m bench.fairness --rounds 1 --big 400 --small 5 --delay 1    # smoke
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from app.api_client import DistilleryClient
from bench.common import prompt_set, ready_service, service_client, summary, write_prompts, write_result
from bench.fleet import TEACHER, add_fleet_flags, fleet_service, replica_options

TARGET_RATIO = 2.0
HIGH_PRIORITY = 5


def _at(job: dict[str, Any], key: str) -> float | None:
    value = job.get(key)
    return datetime.fromisoformat(value).timestamp() if value else None


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_tokens": args.max_tokens, "top_logprobs": args.k, "temperature": 1.0}


def upload(client: DistilleryClient, path: Path, args: argparse.Namespace, priority: int = 0) -> dict[str, Any]:
    """Upload a JSONL prompt file as a job (priority as a form field)."""
    return client.upload(path, {"teacher": TEACHER, **_params(args), "priority": priority})


def create(client: DistilleryClient, count: int, args: argparse.Namespace, priority: int) -> dict[str, Any]:
    """Create a job from a JSON body (priority as a top-level field)."""
    prompts = [{"prompt": p, "custom_id": f"hi{i}"} for i, p in enumerate(prompt_set(count))]
    body = {"teacher": TEACHER, "params": _params(args), "prompts": prompts, "priority": priority}
    response = client.http.post("/v1/jobs", json=body)
    response.raise_for_status()
    job: dict[str, Any] = response.json()
    return job


def wait(client: DistilleryClient, job_id: str) -> tuple[dict[str, Any], float]:
    """Poll until the job is final; (the job, perf_counter when seen final)."""
    job = client.wait(job_id, poll_s=0.1)
    assert job["status"] == "completed", job
    return job, time.perf_counter()


def cancel(client: DistilleryClient, job_id: str) -> dict[str, Any]:
    """Cancel a job; the job as the service returns it."""
    response = client.http.post(f"/v1/jobs/{job_id}/cancel")
    response.raise_for_status()
    job: dict[str, Any] = response.json()
    return job


def phase(args: argparse.Namespace, workdir: Path, name: str, rnd: int) -> dict[str, Any]:
    """One phase ('alone', 'contended' or 'priority') on a fresh fleet and service."""
    small = write_prompts(workdir / f"small-{args.small}.jsonl", args.small)
    big = write_prompts(workdir / f"big-{args.big}.jsonl", args.big)
    options = replica_options(args, args.capacity)
    with fleet_service(args.replicas, options, workdir / f"{name}-{rnd}") as (_fleet, service):
        ready_service(service)
        key_a, key_b = service.create_key("A"), service.create_key("B")
        with service_client(service.url, key_a) as a, service_client(service.url, key_b) as b:
            if name == "alone":
                t0 = time.perf_counter()
                job, t1 = wait(b, upload(b, small, args)["id"])
                return {"seconds": t1 - t0, **_server_times(job)}
            older = upload(a, big, args)
            time.sleep(args.delay)
            t0 = time.perf_counter()
            if name == "contended":
                job, t1 = wait(b, upload(b, small, args)["id"])
            else:
                job, t1 = wait(a, create(a, args.small, args, HIGH_PRIORITY)["id"])
            older = a.job(older["id"])
            out = {"seconds": t1 - t0, **_server_times(job), "older_status": older["status"]}
            out["older_tokens_by_then"] = older["tokens_generated"]
            started, older_done = _at(job, "started_at"), _at(older, "finished_at")
            out["older_finished_minus_started"] = (
                None if older_done is None or started is None else older_done - started
            )
            out["started_before_older_finished"] = started is not None and (older_done is None or started < older_done)
            if older["status"] not in ("completed", "failed", "cancelled"):
                cancel(a, older["id"])
            return out


def _server_times(job: dict[str, Any]) -> dict[str, Any]:
    created, started, finished = (_at(job, k) for k in ("created_at", "started_at", "finished_at"))
    assert created is not None and finished is not None, job
    return {
        "tokens": job["tokens_generated"],
        "start_delay_s": None if started is None else started - created,
        "server_seconds": finished - created,
    }


def _secs(figure: dict[str, float]) -> str:
    return f"{figure['median']:.1f} ({figure['min']:.1f}-{figure['max']:.1f}) s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=2)
    add_fleet_flags(parser, capacity=3000)
    parser.add_argument("--small", type=int, default=50, help="prompts of the small (late) job")
    parser.add_argument("--big", type=int, default=20_000, help="prompts of the big (early) job")
    parser.add_argument("--delay", type=float, default=5.0, help="seconds between the big and the small job")
    parser.add_argument("--name", default="fairness")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of bench/results/<name>.json")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"alone": [], "contended": [], "priority": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for name in runs:
                r = phase(args, Path(tmp), name, rnd)
                runs[name].append(r)
                extra = f"; older job {r['older_status']}" if "older_status" in r else ""
                delay = "-" if r["start_delay_s"] is None else f"{r['start_delay_s']:.1f} s"
                print(
                    f"round {rnd} {name}: {r['seconds']:.1f} s (started after {delay}){extra}",
                    flush=True,
                )
    ratios = [c["seconds"] / a["seconds"] for a, c in zip(runs["alone"], runs["contended"], strict=True)]
    figures: dict[str, Any] = {
        "params": {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()},
        "target_ratio": TARGET_RATIO,
        "ratio": summary(ratios),
        "ratio_of_medians": statistics.median(c["seconds"] for c in runs["contended"])
        / statistics.median(a["seconds"] for a in runs["alone"]),
    }
    for name, rs in runs.items():
        figures[name] = {"seconds": summary([r["seconds"] for r in rs])}
        delays = [r["start_delay_s"] for r in rs if r["start_delay_s"] is not None]
        figures[name]["start_delay_s"] = summary(delays) if delays else None
    prio = runs["priority"]
    figures["priority"]["started_before_older_finished"] = sum(r["started_before_older_finished"] for r in prio)
    figures["priority"]["older_still_running_at_finish"] = sum(r["older_status"] == "running" for r in prio)
    figures["runs"] = runs
    path = write_result(args.name, figures, out=args.out)
    ratio, p = figures["ratio"], figures["priority"]
    print(
        f"fairness: small job alone {_secs(figures['alone']['seconds'])}, behind a {args.big:,}-prompt job "
        f"{_secs(figures['contended']['seconds'])}: ratio {ratio['median']:.2f} "
        f"({ratio['min']:.2f}-{ratio['max']:.2f}) (target <= {TARGET_RATIO:g}); priority {HIGH_PRIORITY} job "
        f"{_secs(p['seconds'])}, started before the older job finished in "
        f"{p['started_before_older_finished']}/{len(prio)} rounds; {path}"
    )


if __name__ == "__main__":
    main()
