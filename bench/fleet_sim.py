"""Fleet simulator: processes that answer like vLLM GPU servers, with a GPU's shape and a replay's CPU cost.

One replica is one process serving one port (bench.sim_replica: the replay teacher's bare asyncio HTTP,
uvloop when installed). A completions request of P prompts and n samples is P*n sequences with lengths drawn
from a long-tailed distribution (or exactly max_tokens with --fixed-length); at most --max-num-seqs run at
once, each at min(--seq-rate, --capacity / running) tokens/s, the rest queue FIFO; the reply goes out when
all of a request's sequences have finished. /metrics has vLLM's running / waiting gauges and generated-token
counter. `FleetSimulator` runs N replicas as subprocesses and can kill and restart one.

    .venv/bin/python -m bench.fleet_sim serve --port 8300 --capacity 4000 --seq-rate 40
    .venv/bin/python -m bench.fleet_sim fleet --replicas 4 --capacity 4000     # prints the URLs; Ctrl-C stops
    .venv/bin/python -m bench.fleet_sim load --replicas 8 --capacity 5000      # drives a fleet, reports its CPU
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Self

import httpx
import psutil

from bench.replay_teacher import run_until_interrupted
from bench.sim_replica import ReplicaOptions, add_replica_flags, options_from, serve
from distillery_tools.service_process import stop_process
from distillery_tools.tiny_teacher.serve import free_port

ROOT = Path(__file__).resolve().parents[1]
_METRIC = re.compile(r"^(vllm:[a-z_]+)\{[^}]*\}\s+(\S+)$", re.MULTILINE)


def read_metrics(url: str, timeout: float = 5.0) -> dict[str, float]:
    """A replica's vllm:* metrics by name (/metrics is open; the key is not needed)."""
    text = httpx.get(f"{url}/metrics", timeout=timeout).text
    return {name: float(value) for name, value in _METRIC.findall(text)}


class FleetSimulator:
    """N simulated replicas as subprocesses on free ports; a context manager yielding itself.

    `urls` and `pids` are per replica (a killed replica keeps its old pid until restarted); replica i gets
    seed options.seed + i, so the replicas draw different but reproducible lengths."""

    def __init__(self, replicas: int, options: ReplicaOptions | None = None, *, log_dir: Path | None = None) -> None:
        self.options = options or ReplicaOptions()
        self.ports = [free_port() for _ in range(replicas)]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * replicas
        self._logs: list[IO[bytes] | None] = [None] * replicas

    @property
    def pids(self) -> list[int]:
        """Each replica's process id (the last one started)."""
        return [p.pid if p is not None else -1 for p in self.processes]

    def _spawn(self, i: int) -> None:
        options = dataclasses.replace(self.options, seed=self.options.seed + i)
        command = [sys.executable, "-m", "bench.fleet_sim", "serve", "--port", str(self.ports[i]), *options.argv()]
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._logs[i] = (self.log_dir / f"replica{i}.log").open("ab")
        out = self._logs[i] or subprocess.DEVNULL
        self.processes[i] = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=out)

    def _wait_healthy(self, indices: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(indices)
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulated replicas {pending} did not come up")
            for i in list(pending):
                process = self.processes[i]
                assert process is not None
                if process.poll() is not None:
                    raise RuntimeError(f"simulated replica {i} exited with {process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.urls[i]}/health", timeout=2).status_code == 200:
                        pending.remove(i)
            time.sleep(0.05)

    def start(self, timeout: float = 30.0, tries: int = 3) -> None:
        """Start every replica and wait until each answers /health. A replica that exits at start (its free
        port was taken meanwhile by another process) is started again on another port."""
        for i in range(len(self.ports)):
            self._spawn(i)
        try:
            for attempt in range(tries):
                try:
                    self._wait_healthy(list(range(len(self.ports))), timeout)
                    return
                except RuntimeError:
                    if attempt == tries - 1:
                        raise
                for i, process in enumerate(self.processes):
                    if process is not None and process.poll() is not None:
                        self._close_log(i)
                        self.ports[i] = free_port()
                        self.urls[i] = f"http://127.0.0.1:{self.ports[i]}"
                        self._spawn(i)
        except Exception:
            self.stop()
            raise

    def start_replica(self, i: int, timeout: float = 30.0) -> None:
        """(Re)start replica i on its port and wait for its /health."""
        process = self.processes[i]
        if process is not None and process.poll() is None:
            raise RuntimeError(f"replica {i} is running")
        self._close_log(i)
        self._spawn(i)
        self._wait_healthy([i], timeout)

    def stop_replica(self, i: int) -> None:
        """SIGKILL replica i (a replica dying: its connections drop, its work is lost)."""
        process = self.processes[i]
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the running replicas so far."""
        total = 0.0
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                if process is not None and process.poll() is None:
                    times = psutil.Process(process.pid).cpu_times()
                    total += times.user + times.system
        return total

    def metrics(self) -> list[dict[str, float]]:
        """Every replica's vllm:* metrics (an empty dict for one that does not answer)."""
        out = []
        for url in self.urls:
            try:
                out.append(read_metrics(url))
            except httpx.HTTPError:
                out.append({})
        return out

    def _close_log(self, i: int) -> None:
        log = self._logs[i]
        if log is not None:
            log.close()
            self._logs[i] = None

    def stop(self) -> None:
        """Stop every replica (SIGTERM, then SIGKILL)."""
        for i, process in enumerate(self.processes):
            stop_process(process, grace=5)
            self._close_log(i)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------- load (self-check)


async def _drive(fleet: FleetSimulator, args: argparse.Namespace) -> dict[str, Any]:
    """Keep `concurrency` completions requests in flight per replica; after a warm-up, measure a window of
    `seconds` (tokens from the replicas' counters, so partly generated sequences count too)."""
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    body = {
        "model": args.served_model_name,
        "prompt": [f"def f_{i}():" for i in range(args.batch)],
        "max_tokens": args.max_tokens,
        "logprobs": args.k,
        "temperature": 1.0,
    }
    stop = asyncio.Event()

    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            response = await client.post("/v1/completions", json=body, headers=headers)
            response.raise_for_status()

    async def reading() -> tuple[float, float, float, float]:
        metrics = await asyncio.to_thread(fleet.metrics)
        tokens = sum(m.get("vllm:generation_tokens_total", 0) for m in metrics)
        return tokens, fleet.cpu_seconds(), sum(me.cpu_times()[:2]), time.perf_counter()

    me = psutil.Process()
    clients = [httpx.AsyncClient(base_url=url, timeout=600) for url in fleet.urls]
    workers = [asyncio.create_task(worker(c)) for c in clients for _ in range(args.concurrency)]
    try:
        await asyncio.sleep(args.warmup)
        tokens0, cpu0, mine0, wall0 = await reading()
        await asyncio.sleep(args.seconds)
        tokens1, cpu1, mine1, wall1 = await reading()
        stop.set()
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        for client in clients:
            await client.aclose()
    wall, tokens, cpu = wall1 - wall0, tokens1 - tokens0, cpu1 - cpu0
    capacity = len(fleet.urls) * args.capacity
    return {
        "replicas": len(fleet.urls),
        "capacity_total": capacity,
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "of_capacity": tokens / wall / capacity,
        "replicas_cores": cpu / wall,
        "replicas_cpu_us_per_token": cpu / max(tokens, 1) * 1e6,
        "client_cores": (mine1 - mine0) / wall,
    }


def load(args: argparse.Namespace) -> dict[str, Any]:
    """Drive a fresh fleet with a plain client; tok/s and the replicas' and client's CPU over a window."""
    with FleetSimulator(args.replicas, options_from(args)) as fleet:
        return asyncio.run(_drive(fleet, args))


def main() -> None:
    """The serve / fleet / load commands."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="one replica on one port")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8300)
    fleet = sub.add_parser("fleet", help="N replicas on free ports until Ctrl-C")
    fleet.add_argument("--replicas", type=int, default=4)
    drive = sub.add_parser("load", help="drive a fleet with a plain client; report tok/s and CPU")
    drive.add_argument("--replicas", type=int, default=8)
    drive.add_argument("--seconds", type=float, default=20, help="the measured window")
    drive.add_argument("--warmup", type=float, default=3, help="seconds of load before the window")
    drive.add_argument("--concurrency", type=int, default=4, help="requests in flight per replica")
    drive.add_argument("--batch", type=int, default=64, help="prompts per request")
    drive.add_argument("--max-tokens", type=int, default=128)
    drive.add_argument("-k", type=int, default=20)
    for p in (srv, fleet, drive):
        add_replica_flags(p)
    args = parser.parse_args()
    if args.command == "serve":
        run_until_interrupted(serve(options_from(args), args.host, args.port))
    elif args.command == "fleet":
        with FleetSimulator(args.replicas, options_from(args)) as sim:
            for url, pid in zip(sim.urls, sim.pids, strict=True):
                print(f"{url}  pid {pid}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    else:
        r = load(args)
        print(
            f"fleet_sim load: {r['replicas']} replicas, {r['tokens_per_s']:,.0f} tok/s "
            f"({r['of_capacity']:.1%} of {r['capacity_total']:,.0f}); replicas {r['replicas_cores']:.3f} cores "
            f"({r['replicas_cpu_us_per_token']:.2f} CPU us/token), client {r['client_cores']:.3f} cores"
        )


if __name__ == "__main__":
    main()
