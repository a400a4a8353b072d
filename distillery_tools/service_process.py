"""ServiceProcess: `distillery serve` as a subprocess with its own settings, for the demo and the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Self

import httpx

from distillery_tools.tiny_teacher.serve import free_port


def stop_process(process: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `grace` seconds."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ServiceProcess:
    """Starts the service on a free port with the given DISTILLERY_* settings and waits until it is ready."""

    def __init__(
        self,
        *,
        data_dir: Path,
        teachers: list[dict[str, Any]],
        database_url: str = "",
        log_path: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        embedded_worker: bool = True,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or data_dir / "service.log"
        self.env = dict(os.environ)
        self.env.update(
            DISTILLERY_DATA_DIR=str(data_dir),
            DISTILLERY_DATABASE_URL=database_url,
            DISTILLERY_TEACHERS=json.dumps(teachers),
            **(extra_env or {}),
        )
        self.command = [sys.executable, "-m", "app", "serve", "--port", str(self.port)]
        if not embedded_worker:
            self.command.append("--no-worker")
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def create_key(self, project: str) -> str:
        """`distillery keys create` on this service's database; returns the new key."""
        out = subprocess.run(
            [sys.executable, "-m", "app", "keys", "create", "--project", project],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip().splitlines()[-1]

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, api_key: str, timeout: float = 120.0, *, teachers_healthy: bool = True) -> None:
        """Until /readyz answers 200 and, if asked, every teacher has been probed healthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    if not teachers_healthy:
                        return
                    auth = {"authorization": f"Bearer {api_key}"}
                    teachers = httpx.get(f"{self.url}/v1/teachers", headers=auth, timeout=5).json()["teachers"]
                    if all(t["healthy"] for t in teachers):
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"service at {self.url} not ready within {timeout:.0f} s; see {self.log_path}")

    def stop(self, grace: float = 20.0) -> None:
        stop_process(self.process, grace)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
