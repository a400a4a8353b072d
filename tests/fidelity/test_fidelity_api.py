"""GET /v1/jobs/{id}/fidelity on the real teacher and both databases, for jobs stored with each codec; and
rows of the older codecs still read back through records and export."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import Service
from tests.helpers import all_records, submit, wait_done

pytestmark = pytest.mark.vllm
PROMPTS = [{"prompt": p} for p in ("def parse(", "import os\n", "class Cache:\n", "for line in ")]


def test_fidelity_per_codec(service: Service) -> None:
    with service.client() as api:
        jobs = {v: submit(api, PROMPTS, max_tokens=24, top_logprobs=8, codec=v)["id"] for v in (1, 2, 3, 4)}
        default = submit(api, PROMPTS[:1], max_tokens=4, top_logprobs=2)
        assert default["params"]["codec"] == 4  # the default, recorded with the job's params
        for version, job_id in jobs.items():
            job = wait_done(api, job_id)
            assert job["status"] == "completed"
            response = api.get(f"/v1/jobs/{job_id}/fidelity")
            assert response.status_code == 200, response.text
            report = response.json()
            assert report["codec"] == version
            assert report["stored"]["codec_versions"] == {str(version): 4}
            assert report["sample_rows"] == 4 and report["sample_positions"] == job["tokens_generated"]
            assert report["stored"]["tokens"] == job["tokens_generated"]
            assert 0 <= report["teacher_tail_mass_mean"] <= 1
            by_version = {c["version"]: c for c in report["codecs"]}
            # The stored rows, decoded as stored (v1/v2 rows through their own decoders), measure exactly
            # what re-encoding the teacher's values with that codec does.
            assert report["stored"]["fidelity"] == by_version[version]
            v3 = by_version[3]
            assert v3["max_abs_error"] <= 1 / 2048 + 1e-5 and v3["mean_kl"] < 1e-6 and v3["minus_inf_kept"]
            assert v3["sampled_max_abs_error"] == 0
            assert v3["bytes_per_token"] < by_version[2]["bytes_per_token"] < by_version[1]["bytes_per_token"]
            # v4 stores v3's values in fewer bytes, so every error figure is v3's
            v4 = dict(by_version[4])
            assert v4.pop("bytes_per_token") < v3["bytes_per_token"]
            assert {key: value for key, value in v3.items() if key not in ("version", "bytes_per_token")} == {
                key: value for key, value in v4.items() if key != "version"
            }
            records = all_records(api, job_id)
            assert sum(len(r["token_ids"]) for r in records) == job["tokens_generated"]
            export = api.get(f"/v1/jobs/{job_id}/export", params={"format": "jsonl"})
            assert export.status_code == 200
            lines = [orjson.loads(line) for line in export.content.splitlines()]
            assert [line["topk_ids"] for line in lines] == [r["top_logprobs_ids"] for r in records]
            assert [line["topk_logprobs"] for line in lines] == [r["top_logprobs"] for r in records]
            # A dataset's manifest carries the same codec comparison per job.
            built = api.post("/v1/datasets", json={"name": f"fidelity-v{version}", "jobs": [job_id]})
            assert built.status_code == 201, built.text
            lineage = built.json()["manifest"]["jobs"][0]
            assert lineage["fidelity"] == {"sample_positions": report["sample_positions"], "codecs": report["codecs"]}


def test_fidelity_of_an_unknown_job_is_404(service: Service) -> None:
    with service.client() as api:
        response = api.get("/v1/jobs/00000000-0000-4000-8000-000000000000/fidelity")
        assert response.status_code == 404


def test_codec_is_checked(service: Service) -> None:
    with service.client() as api:
        response = api.post("/v1/jobs", json={"teacher": "tiny", "params": {"codec": 5}, "prompts": PROMPTS})
        assert response.status_code == 422 and "codec" in response.text
