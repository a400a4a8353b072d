"""Smoke runs of every bench script at tiny sizes: each finishes, prints its one-line summary, and writes its
JSON (into tmp, never over bench/results) with sane fields. The figures themselves come from full-size runs.

The replay-teacher benches run on the committed recording and need only Postgres; recording and saturation
talk to the session's real vLLM server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Teacher

ROOT = Path(__file__).resolve().parents[2]


def run_bench(module: str, out: Path, *args: str, timeout: float = 300) -> dict[str, Any]:
    """Run `python -m bench.<module> ... --out out`; check the summary line; return the JSON written."""
    before = {p: p.stat().st_mtime for p in (ROOT / "bench" / "results").glob("*.json")}
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{module}:") and str(out) in last, last
    after = {p: p.stat().st_mtime for p in (ROOT / "bench" / "results").glob("*.json")}
    assert after == before, "a smoke run touched bench/results"
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["bench"] and data["machine"]["cpus"] >= 1
    return data


def positive_summary(figure: dict[str, float]) -> None:
    assert figure["runs"] >= 1 and 0 < figure["min"] <= figure["median"] <= figure["max"], figure


def test_parse_speed(tmp_path: Path) -> None:
    data = run_bench("parse_speed", tmp_path / "p.json", "--runs", "1", "--seconds", "0.05")
    for key in ("completions_tokens_per_s", "chat_tokens_per_s", "orjson_loads_tokens_per_s"):
        positive_summary(data[key])


def test_ceiling_and_storage(tmp_path: Path, postgres: None) -> None:
    data = run_bench("ceiling", tmp_path / "c.json", "--prompts", "64", "--max-tokens", "16", "--runs", "1")
    (run,) = data["runs"]
    assert run["tokens"] == 64 * 16
    positive_summary(data["tokens_per_cpu_s"])
    assert run["service_cpu_s"] > 0 and 0 < run["service_cores_used"] <= 2.5
    # Blobs alone are 126 B/token at k=20; at 16 tokens per row, row and table overhead weigh a lot more.
    assert 126 < data["bytes_per_token"]["median"] < 5000
    assert run["relations"]["results"]["total"] > 0


def test_storage(tmp_path: Path, postgres: None) -> None:
    data = run_bench(
        "storage", tmp_path / "s.json", "--prompts", "16", "--lengths", "16", "--codecs", "3", "4", "--runs", "1"
    )
    for codec in (3, 4):
        figures = data[f"16_tokens_v{codec}"]
        assert figures["tokens"] == 16 * 16
        positive_summary(figures["bytes_per_token"])
        positive_summary(figures["added_bytes_per_token"])
        assert figures["relations"]["results"] > 0 and figures["added_relations"]["results"] > 0
        assert figures["fidelity"]["stored"]["codec_versions"] == {str(codec): 16}


def test_export(tmp_path: Path, postgres: None) -> None:
    data = run_bench(
        "export", tmp_path / "e.json", "--prompts", "8", "--scale", "2", "--max-tokens", "8", "--runs", "1", "--dataset"
    )
    assert data["jobs"]["1x"]["tokens"] == 64 and data["jobs"]["2x"]["tokens"] == 128
    for fmt in ("parquet", "jsonl"):
        for size in ("1x", "2x"):
            positive_summary(data[fmt][size]["tokens_per_s"])
            assert data[fmt][size]["rss_peak_mib"]["median"] > 10
        assert 0.5 < data[fmt]["peak_memory_ratio"]["median"] < 2
    positive_summary(data["dataset_build"]["tokens_per_s"])


def test_submission(tmp_path: Path, postgres: None) -> None:
    data = run_bench("submission", tmp_path / "s.json", "--prompts", "300", "--runs", "1")
    assert data["prompts"] == {"full": 300, "small": 30}
    positive_summary(data["full"]["seconds"])
    assert data["full"]["rss_growth_mib"]["median"] >= 0


@pytest.mark.vllm
def test_giant(tmp_path: Path, postgres: None) -> None:
    data = run_bench("giant", tmp_path / "g.json", "--prompts", "3000", "--idle-s", "0.3")
    for phase in ("load", "cancel", "delete"):
        figures = data["phases"][phase]
        assert figures["seconds"] > 0 and figures["errors"] == 0
        if figures["polls"]:
            assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]


def test_record_then_replay(tmp_path: Path, teacher: Teacher, postgres: None) -> None:
    recording = tmp_path / "rec.json.gz"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.replay_teacher", "record", "--teacher-url", teacher.base_url),
            *("--prompts", "2", "--max-tokens", "8", "--chats", "1", "--out", str(recording)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert recording.stat().st_size > 0
    data = run_bench(
        "ceiling", tmp_path / "c.json", "--recording", str(recording), "--prompts", "5", "--max-tokens", "8"
    )
    assert data["runs"][0]["tokens"] == 5 * 8


@pytest.mark.vllm
def test_saturation(tmp_path: Path, teacher: Teacher, postgres: None) -> None:
    data = run_bench(
        "saturation",
        tmp_path / "sat.json",
        *("--teacher-url", teacher.base_url, "--prompts", "8", "--max-tokens", "8"),
        *("--bare-batch", "4", "--rounds", "1"),
    )
    assert data["bare_client"] == {"requests_in_flight": 2, "prompts_per_request": 4}
    assert data["distillery"] == {"settings": "defaults", "jobs": 1}
    (round_,) = data["rounds"]
    assert round_["bare"]["tokens"] > 0 and round_["distillery"]["tokens"] > 0
    for key in ("bare_tokens_per_s", "distillery_tokens_per_s", "ratio"):
        positive_summary(data[key])
    assert data["postgres_bytes_per_token"]["median"] > 126
