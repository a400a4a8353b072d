"""End to end: two real vLLM teachers whose tokenizers differ get different fingerprints, and a dataset
mixing their jobs is refused; jobs of one teacher build fine."""

from __future__ import annotations

from pathlib import Path

import httpx

from distillery_tools.service_process import ServiceProcess
from distillery_tools.tiny_teacher.build import TinyTeacherSpec, build_tiny_teacher
from distillery_tools.tiny_teacher.serve import VllmServer
from tests.conftest import Teacher
from tests.helpers import submit, wait_done


def test_teachers_with_other_tokenizers_cannot_be_mixed(teacher: Teacher, tmp_path: Path) -> None:
    # A second teacher with its own tokenizer: a smaller vocabulary trained on less text, two training steps.
    spec = TinyTeacherSpec(vocab_size=1024, corpus_max_bytes=1 << 20, batch_size=2, seq_len=32)
    other_dir = build_tiny_teacher(tmp_path / "other", seed=1, train_steps=2, spec=spec)
    with VllmServer(other_dir, log_path=tmp_path / "vllm-other.log", served_model_name="other") as other:
        other.wait_ready(timeout=300)
        teachers = [
            {"name": "tiny", "base_url": teacher.base_url, "model": "tiny"},
            {"name": "other", "base_url": other.base_url, "model": "other"},
        ]
        service = ServiceProcess(data_dir=tmp_path / "svc", teachers=teachers)
        key = service.create_key("mix")
        with service, httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as api:
            service.wait_ready(key)
            fingerprints = {t["name"]: t["tokenizer_fingerprint"] for t in api.get("/v1/teachers").json()["teachers"]}
            assert fingerprints["tiny"] != fingerprints["other"] and all(fingerprints.values())
            ours = wait_done(api, submit(api, [{"prompt": "def f():"}], max_tokens=4, top_logprobs=4)["id"])
            body = {"teacher": "other", "params": {"max_tokens": 4, "top_logprobs": 4}, "prompts": [{"prompt": "x"}]}
            theirs = wait_done(api, api.post("/v1/jobs", json=body).json()["id"])
            assert ours["status"] == theirs["status"] == "completed"
            mixed = api.post("/v1/datasets", json={"name": "mixed", "jobs": [ours["id"], theirs["id"]]})
            assert mixed.status_code == 422, mixed.text
            error = mixed.json()["detail"][0]
            assert error["loc"] == ["body", "jobs"] and "tokenizer" in error["msg"]
            assert fingerprints["other"] in error["msg"] and fingerprints["tiny"] in error["msg"]
            alone = api.post("/v1/datasets", json={"name": "alone", "jobs": [theirs["id"]]})
            assert alone.status_code == 201 and alone.json()["status"] == "ready", alone.text
