"""End to end: a job on the real tiny teacher, its Parquet export, and a student whose held-out KL drops."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.helpers import submit, wait_done

pytestmark = [pytest.mark.vllm, pytest.mark.parametrize("service", ["sqlite"], indirect=True)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_student.py"

VERBS = ["parse", "read", "write", "load", "save", "format", "split", "join"]
VERBS += ["encode", "decode", "check", "update", "build", "find", "get", "close"]
NOUNS = ["config", "file", "path", "line", "header", "value", "items", "token"]
NOUNS += ["name", "data", "args", "result", "buffer", "node", "key", "state"]
TEMPLATES = ["def {verb}_{noun}(", "class {Noun}{Verb}:\n    def ", "    {noun} = self.{verb}(", "import {noun}\n"]


def training_prompts() -> list[dict[str, Any]]:
    """256 deterministic raw prompts shaped like the stdlib code the tiny teacher learned."""
    prompts = []
    for i, (verb, noun) in enumerate(itertools.product(VERBS, NOUNS)):
        text = TEMPLATES[i % len(TEMPLATES)].format(verb=verb, noun=noun, Verb=verb.title(), Noun=noun.title())
        prompts.append({"custom_id": f"p{i:03d}", "prompt": text})
    return prompts


def load_example() -> ModuleType:
    """examples/train_student.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("train_student_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def export_parquet(api: httpx.Client, tmp_path: Path) -> Path:
    """Runs the data-generation job and downloads its Parquet export."""
    job = submit(api, training_prompts(), max_tokens=48, temperature=1.0, top_logprobs=20)
    done = wait_done(api, job["id"], timeout=240)
    assert done["status"] == "completed", done
    path = tmp_path / "train.parquet"
    with api.stream("GET", f"/v1/jobs/{job['id']}/export", params={"format": "parquet"}) as response:
        assert response.status_code == 200
        with path.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
    return path


def test_student_learns_the_teacher(api: httpx.Client, tiny_teacher_dir: Path, tmp_path: Path) -> None:
    path = export_parquet(api, tmp_path)
    example = load_example()
    # One thread: the vLLM server and the service share the 2 cores, and OpenMP oversubscription is slow.
    config = example.TrainConfig(
        data=[path], teacher_dir=tiny_teacher_dir, val_fraction=0.15, steps=150, time_limit=45.0, threads=1, seed=0
    )
    started = time.monotonic()
    report = example.train_student(config)
    elapsed = time.monotonic() - started
    print(json.dumps({**report, "elapsed": round(elapsed, 1)}))  # shown with -s: the measured numbers

    before, after = report["before"], report["after"]
    assert report["val_rows"] >= 10 and after["tokens"] >= 300, report
    assert after["kl"] <= 0.7 * before["kl"], report
    assert after["ce"] < before["ce"], report
    assert report["train_seconds"] < 120 and elapsed < 150, report
