"""Fleet bench: Distillery driving 1, 2, 4, 8 simulated GPU replicas of one teacher (bench.fleet_sim), on
Postgres, with the service's default dispatch settings. Each replica has the same capacity (generated
tok/s), a per-sequence rate so that --seqs-to-fill concurrent sequences are needed to reach it, and at most
256 sequences at once. A job sized for ~--seconds at full capacity goes from upload to completed; the
figures are achieved tok/s / (N x capacity), the service's CPU cores and tokens per service core. One more
configuration gives the replicas far more capacity than the service can ingest, so the service is the limit.

Every figure is the median (min-max) over --rounds rounds; the rounds interleave the configurations (each
round in a rotated order), each run on a fresh database, service and fleet.

    .venv/bin/python -m bench.fleet --rounds 5
    .venv/bin/python -m bench.fleet --rounds 1 --sizes 1,2 --prompts 20 --ceiling-replicas 1   # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    cpu_seconds,
    fmt,
    fresh_postgres,
    postgres_cpu_seconds,
    ready_service,
    service_client,
    summary,
    write_prompts,
    write_result,
)
from bench.fleet_sim import FleetSimulator, read_metrics
from bench.sim_replica import LengthSampler, ReplicaOptions
from distillery_tools.service_process import ServiceProcess

TEACHER = "sim"


@dataclass(frozen=True)
class Config:
    """One fleet shape: replicas, each replica's capacity, and the prompts of its job."""

    label: str
    replicas: int
    capacity: float
    prompts: int


@contextlib.contextmanager
def fleet_service(
    replicas: int, options: ReplicaOptions, data_dir: Path
) -> Iterator[tuple[FleetSimulator, ServiceProcess]]:
    """A fresh database, a fleet of simulated replicas, and the service (default dispatch) on both, started."""
    with fresh_postgres() as db_url, FleetSimulator(replicas, options, log_dir=data_dir / "replicas") as fleet:
        teachers = [{"name": TEACHER, "model": options.served_model_name, "replicas": fleet.urls}]
        # dispatch at its defaults; only the shutdown drain is short, so a run with work left ends promptly
        quick_exit = {"DISTILLERY_WORKER_SHUTDOWN_GRACE_S": "1"}
        with ServiceProcess(data_dir=data_dir, teachers=teachers, database_url=db_url, extra_env=quick_exit) as service:
            yield fleet, service


class LoadSampler:
    """Reads every replica's running and waiting sequences on a thread until stopped.

    `filled` gives the seconds until every replica first ran `at_least` sequences (the ramp) and the seconds
    from the last such reading to the end (the tail), or None when it never happened."""

    def __init__(self, urls: list[str], interval_s: float = 0.25) -> None:
        self.urls = urls
        self.interval_s = interval_s
        self.readings: list[tuple[float, list[float], list[float]]] = []  # (time, running, waiting)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            running, waiting = [], []
            for url in self.urls:
                try:
                    m = read_metrics(url, timeout=2)
                except Exception:
                    m = {}
                running.append(m.get("vllm:num_requests_running", 0.0))
                waiting.append(m.get("vllm:num_requests_waiting", 0.0))
            self.readings.append((time.perf_counter(), running, waiting))

    def mean(self, waiting: bool = False) -> float:
        """Mean per replica and reading of the running (or waiting) sequences."""
        values = [statistics.fmean(w if waiting else r) for _, r, w in self.readings]
        return statistics.fmean(values) if values else 0.0

    def filled(self, at_least: float, start: float, end: float) -> tuple[float | None, float | None]:
        """(ramp, tail) seconds around the readings where every replica ran at least `at_least` sequences."""
        full = [t for t, running, _ in self.readings if min(running) >= at_least]
        if not full:
            return None, None
        return full[0] - start, end - full[-1]

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _busy_seconds(times: Any) -> float:
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def one_run(args: argparse.Namespace, config: Config, workdir: Path, tag: str) -> dict[str, Any]:
    """Start fleet + service on a fresh database, push one job through, read throughput and CPU."""
    prompts = write_prompts(workdir / f"prompts-{config.prompts}.jsonl", config.prompts)
    options = replica_options(args, config.capacity)
    with fleet_service(config.replicas, options, workdir / tag) as (fleet, service):
        api_key = ready_service(service)
        assert service.process is not None
        pid = service.process.pid
        form = {"teacher": TEACHER, "max_tokens": args.max_tokens, "top_logprobs": args.k, "temperature": 1.0}
        with service_client(service.url, api_key) as client, LoadSampler(fleet.urls) as load:
            cpu0, fleet0, pg0, busy0 = cpu_seconds(pid), fleet.cpu_seconds(), postgres_cpu_seconds(), psutil.cpu_times()
            wall0 = time.perf_counter()
            job = client.upload(prompts, form)
            job = client.wait(job["id"], poll_s=0.1)
            wall = time.perf_counter() - wall0
            cpu, fleet_cpu = cpu_seconds(pid) - cpu0, fleet.cpu_seconds() - fleet0
            pg_cpu, busy = postgres_cpu_seconds() - pg0, _busy_seconds(psutil.cpu_times()) - _busy_seconds(busy0)
    assert job["status"] == "completed", job
    ramp, tail = load.filled(0.95 * args.seqs_to_fill, wall0, wall0 + wall)
    tokens = int(job["tokens_generated"])
    capacity = config.replicas * config.capacity
    return {
        "config": config.label,
        "replicas": config.replicas,
        "capacity_per_replica": config.capacity,
        "prompts": config.prompts,
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "of_capacity": tokens / wall / capacity,
        "service_cpu_s": cpu,
        "service_cores": cpu / wall,
        "tokens_per_service_core": tokens / cpu,
        "replicas_cores": fleet_cpu / wall,
        "postgres_cores": pg_cpu / wall,
        "machine_busy_cores": busy / wall,
        "mean_running_per_replica": load.mean(),
        "mean_waiting_per_replica": load.mean(waiting=True),
        "ramp_s": ramp,
        "tail_s": tail,
    }


def add_fleet_flags(parser: argparse.ArgumentParser, *, capacity: float) -> None:
    """The simulated replicas' shape and the jobs' sampling, shared by the fleet and fairness benches."""
    parser.add_argument("--capacity", type=float, default=capacity, help="generated tok/s of each replica")
    parser.add_argument("--seqs-to-fill", type=float, default=96, help="sequences needed to reach capacity")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--long-tail", action="store_true", help="lognormal lengths, not every one max_tokens")
    parser.add_argument("--mean-tokens", type=float, default=128, help="with --long-tail: the uncapped mean")
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)


def replica_options(args: argparse.Namespace, capacity: float) -> ReplicaOptions:
    """The replicas' options at this capacity: --seqs-to-fill sequences at seq-rate reach it."""
    return ReplicaOptions(
        capacity=capacity,
        seq_rate=capacity / args.seqs_to_fill,
        max_num_seqs=args.max_num_seqs,
        mean_tokens=args.mean_tokens,
        fixed_length=not args.long_tail,
        seed=args.seed,
    )


def mean_length(args: argparse.Namespace) -> float:
    """The expected generated length per prompt under the replicas' length distribution."""
    sampler = LengthSampler(replica_options(args, 1.0))
    return statistics.fmean(sampler.draw(args.max_tokens) for _ in range(20_000))


def configs(args: argparse.Namespace) -> list[Config]:
    """The fleet sizes, then the service-bound configuration (unless --ceiling-replicas 0)."""
    per_prompt = mean_length(args)

    def prompts(replicas: int, tokens_per_s: float) -> int:
        if args.prompts:
            return int(args.prompts) * replicas
        return max(1, int(tokens_per_s * args.seconds / per_prompt + 0.5))

    out = [Config(f"{n}x", n, args.capacity, prompts(n, n * args.capacity)) for n in args.sizes]
    if args.ceiling_replicas:
        n = args.ceiling_replicas
        expected = min(n * args.ceiling_capacity, args.service_rate)
        out.append(
            Config(f"service-bound {n}x{args.ceiling_capacity:,.0f}", n, args.ceiling_capacity, prompts(n, expected))
        )
    return out


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=5)
    add_fleet_flags(parser, capacity=3500)
    parser.add_argument("--seconds", type=float, default=25, help="each job's length at full capacity")
    parser.add_argument("--prompts", type=int, help="prompts per replica (instead of sizing by --seconds)")
    parser.add_argument("--ceiling-replicas", type=int, default=8, help="0: no service-bound configuration")
    parser.add_argument("--ceiling-capacity", type=float, default=20_000, help="each replica's, service-bound")
    parser.add_argument("--service-rate", type=float, default=70_000, help="assumed service tok/s, to size it")
    parser.add_argument("--name", default="fleet")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of bench/results/<name>.json")
    args = parser.parse_args()
    shapes = configs(args)
    runs: dict[str, list[dict[str, Any]]] = {c.label: [] for c in shapes}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            order = shapes[rnd % len(shapes) :] + shapes[: rnd % len(shapes)]
            for config in order:
                r = one_run(args, config, Path(tmp), f"r{rnd}-{config.replicas}-{config.capacity:.0f}")
                runs[config.label].append(r)
                print(
                    f"round {rnd} {config.label}: {r['tokens']:,} tokens in {r['wall_s']:.1f} s, "
                    f"{r['tokens_per_s']:,.0f} tok/s = {r['of_capacity']:.1%} of capacity; service "
                    f"{r['service_cores']:.2f} cores ({r['tokens_per_service_core']:,.0f} tok/s per core); "
                    f"per replica {r['mean_running_per_replica']:.0f} running, "
                    f"{r['mean_waiting_per_replica']:.0f} waiting; all full after {_secs(r['ramp_s'])}, "
                    f"tail {_secs(r['tail_s'])}",
                    flush=True,
                )
    keys = ["of_capacity", "tokens_per_s", "service_cores", "tokens_per_service_core", "replicas_cores"]
    keys += ["postgres_cores", "machine_busy_cores", "mean_running_per_replica", "mean_waiting_per_replica", "wall_s"]
    per_config: dict[str, dict[str, Any]] = {
        c.label: {**dataclasses.asdict(c), **{key: summary([r[key] for r in runs[c.label]]) for key in keys}}
        for c in shapes
    }
    figures = {
        "params": {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()},
        "configs": per_config,
        "runs": runs,
    }
    path = write_result(args.name, figures, out=args.out)
    parts = []
    for c in shapes:
        f = per_config[c.label]
        of = f["of_capacity"]
        parts.append(
            f"{c.label} {of['median']:.1%} ({of['min']:.1%}-{of['max']:.1%}) of capacity, "
            f"{fmt(f['tokens_per_s'], 'tok/s')}, {fmt(f['tokens_per_service_core'], 'tok/s per service core')}, "
            f"service {f['service_cores']['median']:.2f} cores"
        )
    print("fleet: " + "; ".join(parts) + f"; {path}")


if __name__ == "__main__":
    main()
