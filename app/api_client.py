"""DistilleryClient: the HTTP calls the CLI and the demo make to a running Distillery service."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


class ApiCallError(RuntimeError):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class DistilleryClient:
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 600.0) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers)

    def __enter__(self) -> DistilleryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ApiCallError(response.status_code, detail)
        return response.json()

    def upload(self, path: Path, form: dict[str, Any]) -> dict[str, Any]:
        fields = {key: str(value) for key, value in form.items() if value is not None}
        with path.open("rb") as fh:
            response = self.http.post(
                "/v1/jobs/upload", data=fields, files={"file": (path.name, fh, "application/x-ndjson")}
            )
        return self._json(response)  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/jobs/{job_id}"))  # type: ignore[no-any-return]

    def jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        return self._json(self.http.get("/v1/jobs", params={"limit": limit}))["jobs"]  # type: ignore[no-any-return]

    def teachers(self) -> list[dict[str, Any]]:
        return self._json(self.http.get("/v1/teachers"))["teachers"]  # type: ignore[no-any-return]

    def wait(
        self, job_id: str, *, poll_s: float = 1.0, on_update: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Poll until the job reaches a final status, reporting each reading."""
        while True:
            job = self.job(job_id)
            if on_update:
                on_update(job)
            if job["status"] in FINAL_STATUSES:
                return job
            time.sleep(poll_s)

    def export(self, job_id: str, path: Path, fmt: str = "parquet") -> int:
        """Stream the export to path; returns the bytes written."""
        written = 0
        with self.http.stream("GET", f"/v1/jobs/{job_id}/export", params={"format": fmt}) as response:
            if response.status_code >= 400:
                response.read()
                self._json(response)
            with path.open("wb") as fh:
                for chunk in response.iter_bytes():
                    fh.write(chunk)
                    written += len(chunk)
        return written
