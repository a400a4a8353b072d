"""API keys: every request needs one; a project sees only its own jobs (others' answer 404); revoked keys 401."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.conftest import Service
from tests.helpers import submit, wait_done

PROMPTS = [{"custom_id": "a", "prompt": "def parse("}]


def test_requests_without_a_valid_key_get_401(service: Service) -> None:
    job_id = "00000000-0000-4000-8000-000000000000"
    paths = [
        ("GET", "/v1/jobs"),
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", "/v1/teachers"),
        ("POST", "/v1/jobs"),
        ("GET", f"/v1/jobs/{job_id}/export"),
        ("DELETE", f"/v1/datasets/{job_id}"),
    ]
    for header in (None, "Bearer nope", "Bearer dk_000000000000_wrong", "Basic abc"):
        headers = {"authorization": header} if header else {}
        for method, path in paths:
            response = httpx.request(method, service.url + path, headers=headers, json={}, timeout=30)
            assert response.status_code == 401, (header, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["detail"][0]["loc"] == ["header", "authorization"]
    assert httpx.get(service.url + "/healthz").status_code == 200


def test_another_projects_job_is_404_everywhere(service: Service, api: httpx.Client) -> None:
    job = wait_done(api, submit(api, PROMPTS, max_tokens=4, top_logprobs=2)["id"])
    assert job["status"] == "completed"
    with service.client(service.other_key) as other:
        jid = job["id"]
        for method, path in [
            ("GET", f"/v1/jobs/{jid}"),
            ("GET", f"/v1/jobs/{jid}/records"),
            ("GET", f"/v1/jobs/{jid}/export"),
            ("POST", f"/v1/jobs/{jid}/cancel"),
            ("POST", f"/v1/jobs/{jid}/retry"),
        ]:
            response = other.request(method, path)
            assert response.status_code == 404, (path, response.text)
        assert jid not in [j["id"] for j in other.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]]
        own = submit(other, PROMPTS, max_tokens=2, top_logprobs=0)
        assert api.get(f"/v1/jobs/{own['id']}").status_code == 404
    assert api.get(f"/v1/jobs/{jid}").status_code == 200


def test_revoked_key_gets_401(service: Service) -> None:
    key = service.process.create_key("gamma")
    with service.client(key) as client:
        assert client.get("/v1/jobs").status_code == 200
        key_id = key.split("_")[1]
        subprocess.run(
            [sys.executable, "-m", "app", "keys", "revoke", key_id],
            env=service.process.env,
            check=True,
            capture_output=True,
        )
        assert client.get("/v1/jobs").status_code == 401
    listed = subprocess.run(
        [sys.executable, "-m", "app", "keys", "list"],
        env=service.process.env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert key_id in listed and "revoked" in listed and key not in listed


def test_first_start_creates_one_key_in_a_file_not_the_log(tmp_path: object, teacher: object) -> None:
    """A fresh database: the service creates project "default" and writes its key to a file only this
    user reads (the log names the file, never the key); a second start creates no other key."""
    import re
    import time
    from pathlib import Path

    from app.main import FIRST_KEY_FILE
    from distillery_tools.service_process import ServiceProcess
    from tests.conftest import teacher_settings

    data_dir = Path(str(tmp_path))
    key_file = data_dir / FIRST_KEY_FILE
    process = ServiceProcess(data_dir=data_dir, teachers=teacher_settings(teacher))  # type: ignore[arg-type]
    with process:
        deadline = time.monotonic() + 60
        while not key_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        key = key_file.read_text().strip()
        process.wait_ready(key)
        with httpx.Client(base_url=process.url, headers={"authorization": f"Bearer {key}"}) as client:
            assert client.get("/v1/jobs").status_code == 200
    with ServiceProcess(data_dir=data_dir, teachers=teacher_settings(teacher)) as again:  # type: ignore[arg-type]
        again.wait_ready(key)
    log = process.log_path.read_text()
    assert re.findall(r"dk_[0-9a-f]{12}_", log) == [] and log.count(str(key_file.resolve())) == 1
    assert key_file.read_text().strip() == key
