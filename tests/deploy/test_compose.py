"""docker-compose.yml and deploy/ read as a deployment would use them (no Docker engine runs here): every
command is one the CLI accepts, every DISTILLERY_ variable is a setting, healthchecks only where HTTP is
served, the workers' stop period covers their drain, Prometheus scrapes real services on their real ports,
no secret is written in, and the alert rules pass promtool's check and its unit tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from app.cli import app as cli_app
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DISTILLERY_SERVICES = {"migrate", "api", "worker"}
VLLM_DEFAULT_PORT = 8000
DISTILLERY_IMAGE_PORT = 8000  # the Dockerfile's DISTILLERY_PORT


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def option(command: list[str], name: str) -> str | None:
    for i, arg in enumerate(command):
        if arg == name:
            return command[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


def listening_port(name: str, service: dict[str, Any]) -> int:
    """The port a compose service serves HTTP on, from its command (or the image's default)."""
    command = service.get("command", [])
    if name == "worker":
        return int(option(command, "--metrics-port") or 0)
    if name in DISTILLERY_SERVICES:
        return int(option(command, "--port") or service["environment"].get("DISTILLERY_PORT", DISTILLERY_IMAGE_PORT))
    if "vllm" in service.get("image", ""):
        return int(option(command, "--port") or VLLM_DEFAULT_PORT)
    if "prometheus" in service.get("image", ""):
        return 9090
    raise AssertionError(f"unknown port for {name}")


def test_every_command_is_one_the_cli_accepts(services: dict[str, dict[str, Any]]) -> None:
    root = typer.main.get_command(cli_app)
    for name in DISTILLERY_SERVICES:
        command = services[name]["command"]
        assert command[0] == "distillery", name
        sub, args = root, command[1:]
        while hasattr(sub, "commands"):  # a group (`db upgrade`): descend by name
            assert args and args[0] in sub.commands, f"{name}: no command {args[:1]} in {sorted(sub.commands)}"
            sub, args = sub.commands[args[0]], args[1:]
        sub.make_context(command[1], list(args))  # raises on an unknown option or a bad value


def test_every_distillery_variable_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    fields = {f"DISTILLERY_{name.upper()}" for name in Settings.model_fields}
    seen = set()
    for name, service in services.items():
        for variable in service.get("environment", {}):
            if variable.startswith("DISTILLERY_"):
                seen.add(variable)
                assert variable in fields, f"{name}: {variable} is not a setting"
    for line in (ROOT / ".env.example").read_text().splitlines():
        variable = line.lstrip("# ").split("=", 1)[0]
        if variable.startswith("DISTILLERY_"):
            assert variable in fields, f".env.example: {variable} is not a setting"
    assert "DISTILLERY_DATABASE_URL" in seen and "DISTILLERY_TEACHERS" in seen


def test_healthchecks_only_where_http_is_served(services: dict[str, dict[str, Any]]) -> None:
    assert "HEALTHCHECK" not in (ROOT / "Dockerfile").read_text().replace("No HEALTHCHECK", "")
    assert "healthcheck" not in services["worker"] and "healthcheck" not in services["migrate"]
    api_check = " ".join(services["api"]["healthcheck"]["test"])
    assert f"127.0.0.1:{listening_port('api', services['api'])}/readyz" in api_check
    for name in ("teacher-0", "teacher-1"):
        check = services[name]["healthcheck"]
        assert f"127.0.0.1:{listening_port(name, services[name])}/health" in " ".join(check["test"])
        assert seconds(check["start_period"]) >= 600, "a first model download needs a long start period"


def test_workers_drain_within_their_stop_period(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    grace = float(worker["environment"].get("DISTILLERY_WORKER_SHUTDOWN_GRACE_S", 30))
    assert seconds(worker["stop_grace_period"]) > grace + 5
    assert worker["deploy"]["replicas"] >= 2 and "--metrics-port" in worker["command"]
    assert "--no-worker" in services["api"]["command"], "the API must leave dispatch to the workers"


def test_startup_order_and_one_image(services: dict[str, dict[str, Any]]) -> None:
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["environment"]["DISTILLERY_MIGRATE_ON_START"] == "false"
    for name in ("teacher-0", "teacher-1"):
        assert services["api"]["depends_on"][name]["condition"] == "service_started"
    images = {services[n]["image"] for n in DISTILLERY_SERVICES}
    assert len(images) == 1 and [n for n in DISTILLERY_SERVICES if "build" in services[n]] == ["api"]
    assert "data:/data" in services["api"]["volumes"]
    for service in services.values():
        assert service.get("restart") in {"unless-stopped", "always", "no"}


def test_teachers_are_replicas_one_gpu_each(services: dict[str, dict[str, Any]]) -> None:
    teachers = yaml.safe_load(services["api"]["environment"]["DISTILLERY_TEACHERS"])
    assert len(teachers) == 1
    replicas = {url.split("//")[1].split(":")[0] for url in teachers[0]["replicas"]}
    assert replicas == {"teacher-0", "teacher-1"}
    devices = []
    for name in sorted(replicas):
        service = services[name]
        assert service["ipc"] == "host" and any("/root/.cache/huggingface" in v for v in service["volumes"])
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert "count" not in device, "a teacher must not take every GPU"
        devices.append(tuple(device["device_ids"]))
    assert len(set(devices)) == len(devices), "two replicas on the same GPU"


def test_no_secret_is_written_in(services: dict[str, dict[str, Any]]) -> None:
    url = services["api"]["environment"]["DISTILLERY_DATABASE_URL"]
    assert "${POSTGRES_PASSWORD" in url
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line)
    assert example["POSTGRES_PASSWORD"] == ""


def test_prometheus_scrapes_real_services_on_their_ports(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    mounts = [v.split(":")[0] for v in services["prometheus"]["volumes"] if v.startswith("./")]
    for mount in mounts:
        assert (ROOT / mount).is_file(), mount
    for rule_file in config["rule_files"]:
        assert any(m.endswith(rule_file) for m in mounts), f"{rule_file} is not mounted"
    targets = []
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets += static["targets"]
        for sd in job.get("dns_sd_configs", []):
            targets += [f"{name}:{sd['port']}" for name in sd["names"]]
    assert targets
    scraped = set()
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host in services, f"{target}: no service {host}"
        assert int(port) == listening_port(host, services[host]), f"{target}: {host} does not listen there"
        scraped.add(host)
    assert {"api", "worker", "teacher-0", "teacher-1"} <= scraped


def test_alert_rules_check_and_pass_their_unit_tests() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    for args in (["check", "rules", "deploy/alerts.yml"], ["test", "rules", "deploy/alerts.test.yml"]):
        done = subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_lock_pins_what_the_tests_ran_against() -> None:
    from deploy.lock import LOCK, render

    assert LOCK.read_text() == render(), "deploy/requirements.lock is stale: run `python deploy/lock.py`"
