"""Dataset builds on the real teacher and both databases: shards, manifest, filters, split, downloads, refusals."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from tests.conftest import Service
from tests.helpers import all_records, submit, wait_done

SNIPPETS = [
    "def parse(",
    "import os\n",
    "class Cache:\n    def ",
    "for line in ",
    "with open(path) as",
    "x = [",
    "try:\n",
]
PROMPTS_A = [
    {"custom_id": f"a{i}", "prompt": f"{SNIPPETS[i % len(SNIPPETS)]}{i}", "metadata": {"lang": ["py", "txt"][i % 2]}}
    for i in range(10)
]
# Three of B's prompts repeat A's, for drop_duplicate_prompts; one has no metadata at all.
PROMPTS_B = [
    {"custom_id": "b0", "prompt": "print("},
    *[{**p, "custom_id": f"b{p['custom_id']}"} for p in PROMPTS_A[:3]],
]
PROMPTS_B += [{"custom_id": f"b{i}", "prompt": f"while {i} ", "metadata": {"lang": "py"}} for i in range(4, 8)]


class Jobs:
    """Two completed jobs of the "alpha" project (k = 5 with 2 samples per prompt, and k = 4), their records
    and prompts by (job id, item id)."""

    def __init__(self, api: httpx.Client) -> None:
        a = submit(api, PROMPTS_A, max_tokens=6, top_logprobs=5, n=2, stop=["\n"], seed=1)
        b = submit(api, PROMPTS_B, max_tokens=6, top_logprobs=4, seed=2)
        self.a, self.b = wait_done(api, a["id"]), wait_done(api, b["id"])
        assert self.a["status"] == self.b["status"] == "completed"
        self.records = {job["id"]: all_records(api, job["id"], limit=100) for job in (self.a, self.b)}
        prompts = {self.a["id"]: PROMPTS_A, self.b["id"]: PROMPTS_B}
        self.prompt = {
            (jid, r["item_id"]): prompts[jid][r["seq"]]["prompt"] for jid, rs in self.records.items() for r in rs
        }

    def rows(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(job id, record) in build order: jobs as listed, then submission order."""
        for jid in (self.a["id"], self.b["id"]):
            for record in self.records[jid]:
                yield jid, record


@pytest.fixture(scope="module")
def jobs(service: Service) -> Jobs:
    with service.client() as api:
        return Jobs(api)


def build(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/v1/datasets", json=body)
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["status"] == "ready", dataset
    return dataset  # type: ignore[no-any-return]


def download(api: httpx.Client, dataset: dict[str, Any], to: Path) -> dict[str, list[str]]:
    """Every shard into `to`, checked against the manifest's size and sha256; paths by split."""
    paths: dict[str, list[str]] = {}
    for entry in dataset["manifest"]["files"]:
        response = api.get(f"/v1/datasets/{dataset['id']}/files/{entry['name']}")
        assert response.status_code == 200, response.text
        assert len(response.content) == entry["size"]
        assert hashlib.sha256(response.content).hexdigest() == entry["sha256"]
        assert response.headers["etag"] == f'"{entry["sha256"]}"'
        (to / entry["name"]).write_bytes(response.content)
        paths.setdefault(entry["split"], []).append(str(to / entry["name"]))
    return paths


def split_of(seed: str, job_id: str, item_id: int, fraction: float) -> str:
    """The documented split rule, written out independently of the service."""
    digest = hashlib.sha256(f"{seed}\0{job_id}\0{item_id}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < fraction else "train"


def shard_rows(paths: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    return {split: [row for p in files for row in pq.read_table(p).to_pylist()] for split, files in paths.items()}


def key(row: dict[str, Any]) -> tuple[str, int, int]:
    return row["job_id"], row["item_id"], row["sample_index"]


def test_two_jobs_build_loads_with_hf_datasets(
    api: httpx.Client, jobs: Jobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed, fraction = "s1", 0.3
    body = {
        "name": "both",
        "jobs": [jobs.a["id"], jobs.b["id"]],
        "split": {"validation_fraction": fraction, "seed": seed},
    }
    dataset = build(api, {**body, "shard_rows": 7})
    manifest = dataset["manifest"]
    assert manifest["top_k"] == 4, "default top_k is the smallest stored k"
    assert [j["job_id"] for j in manifest["jobs"]] == [jobs.a["id"], jobs.b["id"]]
    assert manifest["jobs"][0]["k"] == 5 and manifest["jobs"][0]["teacher_info"] == jobs.a["teacher_info"]
    assert manifest["codec_versions"] and "topk_ids: list<" in manifest["parquet_schema"]
    total = sum(len(rs) for rs in jobs.records.values())
    assert dataset["rows"] == total == 20 + len(PROMPTS_B)
    assert all(f["rows"] <= 7 for f in manifest["files"]) and len(manifest["files"]) >= 4

    # The manifest file itself is downloadable and is what GET returned.
    raw = api.get(f"/v1/datasets/{dataset['id']}/files/manifest.json")
    assert raw.status_code == 200 and raw.json() == manifest
    assert api.get(f"/v1/datasets/{dataset['id']}").json() == dataset
    assert dataset["id"] in [d["id"] for d in api.get("/v1/datasets").json()["datasets"]]

    paths = download(api, dataset, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    loaded = datasets.load_dataset("parquet", data_files=paths, cache_dir=str(tmp_path / "hf"))
    for split in ("train", "validation"):
        assert loaded[split].num_rows == manifest["splits"][split]["rows"] > 0
        assert manifest["splits"][split]["tokens"] == sum(len(r) for r in loaded[split]["token_ids"])
    assert len(loaded["train"][0]["topk_ids"][0]) == 4

    # Every row is on the side its (seed, job, item) hash says, with its top-k cut to the best 4.
    got = shard_rows(paths)
    expected = {(jid, r["item_id"], r["sample_index"]): (jid, r) for jid, r in jobs.rows()}
    for split, rows in got.items():
        for row in rows:
            jid, record = expected.pop(key(row))
            assert split == split_of(seed, jid, row["item_id"], fraction)
            assert row["topk_ids"] == [ids[:4] for ids in record["top_logprobs_ids"]]
            assert row["token_ids"] == record["token_ids"] and row["text"] == record["text"]
            assert row["teacher"] == "tiny" and row["custom_id"] == record["custom_id"]
            assert row["tokenizer_fingerprint"] == jobs.a["teacher_info"].get("tokenizer_fingerprint")
    assert expected == {}
    # Rows keep the build order (jobs as listed, then submission order) within each split.
    order = [(jid, r["item_id"], r["sample_index"]) for jid, r in jobs.rows()]
    for rows in got.values():
        keys = [key(r) for r in rows]
        assert keys == sorted(keys, key=order.index)


def test_filters_top_k_and_dedup_are_exact_and_deterministic(api: httpx.Client, jobs: Jobs, tmp_path: Path) -> None:
    reasons = sorted({r["finish_reason"] for _, r in jobs.rows()})
    keep_reason = max(reasons, key=lambda fr: sum(r["finish_reason"] == fr for _, r in jobs.rows()))
    filters = {
        "finish_reasons": [keep_reason],
        "min_tokens": 2,
        "max_tokens": 6,
        "metadata": {"lang": "py"},
        "drop_duplicate_prompts": True,
    }
    body = {"name": "filtered", "jobs": [jobs.a["id"], jobs.b["id"]], "filters": filters, "top_k": 3}
    first, second = build(api, body), build(api, {**body, "name": "again"})
    assert first["id"] != second["id"]
    assert [(f["name"], f["sha256"]) for f in first["manifest"]["files"]] == [
        (f["name"], f["sha256"]) for f in second["manifest"]["files"]
    ], "same settings, same shard bytes"

    owner: dict[str, tuple[str, int]] = {}
    want, duplicates = [], 0
    for jid, r in jobs.rows():
        t = len(r["token_ids"])
        if r["finish_reason"] != keep_reason or not 2 <= t <= 6 or (r["metadata"] or {}).get("lang") != "py":
            continue
        if owner.setdefault(jobs.prompt[(jid, r["item_id"])], (jid, r["item_id"])) != (jid, r["item_id"]):
            duplicates += 1
            continue
        want.append((jid, r["item_id"], r["sample_index"]))
    assert want and duplicates, "the data exercises both the filters and de-duplication"
    got = shard_rows(download(api, first, tmp_path))
    assert set(got) <= {"train"}, "no validation fraction, no validation shards"
    assert [key(r) for r in got.get("train", [])] == want
    assert first["rows"] == len(want) and first["manifest"]["splits"]["validation"]["rows"] == 0
    assert all(len(ids) == 3 for r in got.get("train", []) for ids in r["topk_ids"])
    assert first["manifest"]["filters"] == filters


def test_range_resume_etag_and_304(api: httpx.Client, jobs: Jobs) -> None:
    dataset = build(api, {"name": "ranges", "jobs": [jobs.a["id"]]})
    entry = dataset["manifest"]["files"][0]
    url = f"/v1/datasets/{dataset['id']}/files/{entry['name']}"
    whole = api.get(url)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    etag, size = whole.headers["etag"], len(whole.content)
    assert etag == f'"{entry["sha256"]}"' and size == entry["size"] == int(whole.headers["content-length"])

    half = size // 2
    first = api.get(url, headers={"range": f"bytes=0-{half - 1}"})
    assert first.status_code == 206 and first.headers["content-range"] == f"bytes 0-{half - 1}/{size}"
    rest = api.get(url, headers={"range": f"bytes={half}-", "if-range": etag})
    assert rest.status_code == 206 and rest.headers["content-range"] == f"bytes {half}-{size - 1}/{size}"
    assert first.content + rest.content == whole.content

    stale = api.get(url, headers={"range": f"bytes={half}-", "if-range": '"0000"'})
    assert stale.status_code == 200 and stale.content == whole.content
    suffix = api.get(url, headers={"range": "bytes=-10"})
    assert suffix.status_code == 206 and suffix.content == whole.content[-10:]
    past = api.get(url, headers={"range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert api.get(url, headers={"range": "bytes=0-1,4-5"}).status_code == 200, "several ranges: whole file"
    not_modified = api.get(url, headers={"if-none-match": f'"other", {etag}'})
    assert not_modified.status_code == 304 and not_modified.content == b"" and not_modified.headers["etag"] == etag
    head = api.head(url, headers={"range": "bytes=5-"})
    assert head.status_code == 206 and head.headers["content-length"] == str(size - 5) and head.content == b""
    assert api.get(f"/v1/datasets/{dataset['id']}/files/nope.parquet").status_code == 404


def test_another_projects_dataset_is_404(service: Service, api: httpx.Client, jobs: Jobs) -> None:
    dataset = build(api, {"name": "mine", "jobs": [jobs.b["id"]]})
    name = dataset["manifest"]["files"][0]["name"]
    with service.client(service.other_key) as other:
        assert other.get(f"/v1/datasets/{dataset['id']}").status_code == 404
        assert other.get(f"/v1/datasets/{dataset['id']}/files/{name}").status_code == 404
        assert dataset["id"] not in [d["id"] for d in other.get("/v1/datasets").json()["datasets"]]
        refused = other.post("/v1/datasets", json={"name": "theirs", "jobs": [jobs.b["id"]]})
        assert refused.status_code == 404 and refused.json()["detail"][0]["loc"] == ["body", "jobs", 0]


def _set_teacher_info(database_url: str, job_id: str, **changes: Any) -> None:
    """Edit a job's teacher_info in the database, to make a job from another tokenizer without a second
    teacher (test_mixed_tokenizers.py covers the same refusal end to end, with a second real teacher)."""
    from sqlalchemy import select, update

    from app.database import Database
    from app.models import Job

    async def edit() -> None:
        db = Database(database_url)
        try:
            async with db.transaction() as s:
                jid = uuid.UUID(job_id)
                info = (await s.execute(select(Job.teacher_info).where(Job.id == jid))).scalar_one()
                await s.execute(update(Job).where(Job.id == jid).values(teacher_info={**info, **changes}))
        finally:
            await db.dispose()

    asyncio.run(edit())


def test_refusals_name_the_field(service: Service, api: httpx.Client, jobs: Jobs) -> None:
    def refused(body: dict[str, Any], status: int) -> dict[str, Any]:
        response = api.post("/v1/datasets", json={"name": "bad", **body})
        assert response.status_code == status, response.text
        return response.json()["detail"][0]  # type: ignore[no-any-return]

    a, b = jobs.a["id"], jobs.b["id"]
    other_tokenizer = wait_done(api, submit(api, [{"prompt": "x = "}], max_tokens=2, top_logprobs=4)["id"])
    _set_teacher_info(service.database_url, other_tokenizer["id"], tokenizer_fingerprint="tok-another")
    error = refused({"jobs": [a, b, other_tokenizer["id"]]}, 422)
    assert error["loc"] == ["body", "jobs"] and "tokenizer" in error["msg"]
    assert f"jobs[2] {other_tokenizer['id']}" in error["msg"] and f"jobs[0] {a}" in error["msg"]

    error = refused({"jobs": [a, b], "top_k": 5}, 422)
    assert error["loc"] == ["body", "top_k"] and f"jobs[1] {b}" in error["msg"]
    assert refused({"jobs": [a, str(uuid.uuid4())]}, 404)["loc"] == ["body", "jobs", 1]
    assert refused({"jobs": [a, a]}, 422)["loc"] == ["body", "jobs", 1]
    assert refused({"jobs": [a], "shard_rows": 5, "shard_bytes": 1 << 20}, 422)["loc"] == ["body", "shard_bytes"]
    error = refused({"jobs": [a], "filters": {"min_tokens": 5, "max_tokens": 2}}, 422)
    assert error["loc"] == ["body", "filters", "max_tokens"]
    assert refused({"jobs": [a], "split": {"validation_fraction": 0.6}}, 422)["loc"] == [
        "body",
        "split",
        "validation_fraction",
    ]

    running = submit(api, [{"prompt": f"def f{i}("} for i in range(16)], max_tokens=32, top_logprobs=4)
    cancelled = api.post(f"/v1/jobs/{running['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    error = refused({"jobs": [a, running["id"]]}, 422)
    assert error["loc"] == ["body", "jobs", 1] and "cancelled" in error["msg"]
    wait_done(api, running["id"])
