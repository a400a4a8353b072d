"""Deleting datasets, retention, and builds left by a killed process, on both databases."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.datasets.build_locks import BuildLocks
from app.models import Dataset, DatasetFile, utcnow
from tests.conftest import Service
from tests.helpers import submit, wait_done
from tests.maintained import UPKEEP_S, datasets_dir, eventually, in_database, maintained, project_id

__all__ = ["maintained"]  # the fixture, imported for this module


@pytest.fixture(scope="module")
def job_id(service: Service) -> str:
    with service.client() as api:
        return _completed_job(api)


def _completed_job(api: httpx.Client) -> str:
    job = wait_done(api, submit(api, [{"prompt": f"def f{i}("} for i in range(4)], max_tokens=4, top_logprobs=2)["id"])
    assert job["status"] == "completed"
    return str(job["id"])


def build(api: httpx.Client, job: str, name: str = "d") -> dict[str, Any]:
    response = api.post("/v1/datasets", json={"name": name, "jobs": [job], "shard_rows": 2})
    assert response.status_code == 201 and response.json()["status"] == "ready", response.text
    return response.json()  # type: ignore[no-any-return]


def stored_files(service: Service, dataset_id: str) -> list[str]:
    return sorted(p.name for p in datasets_dir(service).glob(f"*/{dataset_id}/*"))


def file_rows(service: Service, dataset_id: str) -> int:
    async def count(session: AsyncSession) -> int:
        stmt = select(func.count()).select_from(DatasetFile).where(DatasetFile.dataset_id == uuid.UUID(dataset_id))
        return int((await session.execute(stmt)).scalar_one())

    return in_database(service.database_url, count)


def insert_building(service: Service, dataset_id: uuid.UUID) -> None:
    """A dataset row as a build records it before writing anything."""
    owner = project_id(service)

    async def insert(session: AsyncSession) -> None:
        session.add(
            Dataset(id=dataset_id, project_id=owner, name="held", status="building", spec={}, created_at=utcnow())
        )

    in_database(service.database_url, insert)


def test_delete_removes_the_dataset_its_rows_and_files(service: Service, api: httpx.Client, job_id: str) -> None:
    dataset = build(api, job_id)
    did = dataset["id"]
    names = sorted([*(f["name"] for f in dataset["manifest"]["files"]), "manifest.json"])
    assert len(names) >= 3 and stored_files(service, did) == names and file_rows(service, did) == len(names)

    assert api.delete(f"/v1/datasets/{did}").status_code == 204
    assert api.get(f"/v1/datasets/{did}").status_code == 404
    assert api.get(f"/v1/datasets/{did}/files/{names[0]}").status_code == 404
    assert did not in [d["id"] for d in api.get("/v1/datasets").json()["datasets"]]
    assert stored_files(service, did) == [] and file_rows(service, did) == 0
    again = api.delete(f"/v1/datasets/{did}")
    assert again.status_code == 404 and again.json()["detail"][0]["loc"] == ["path", "dataset_id"]
    assert api.delete(f"/v1/datasets/{uuid.uuid4()}").status_code == 404


def test_a_deleted_job_makes_no_dataset(api: httpx.Client) -> None:
    job = _completed_job(api)
    assert api.delete(f"/v1/jobs/{job}").status_code == 204
    refused = api.post("/v1/datasets", json={"name": "gone", "jobs": [job]})
    assert refused.status_code == 404, refused.text
    assert refused.json()["detail"][0]["loc"] == ["body", "jobs", 0]


def test_another_projects_dataset_cannot_be_deleted(service: Service, api: httpx.Client, job_id: str) -> None:
    dataset = build(api, job_id, "mine")
    with service.client(service.other_key) as other:
        assert other.delete(f"/v1/datasets/{dataset['id']}").status_code == 404
    assert api.get(f"/v1/datasets/{dataset['id']}").json()["status"] == "ready"
    assert len(stored_files(service, dataset["id"])) == len(dataset["manifest"]["files"]) + 1


def test_a_live_build_is_409_and_kept_until_its_builder_dies(maintained: Service) -> None:
    """A builder in another process (this test, holding the build lock) keeps its dataset building through
    many upkeep passes; once it is gone, the dataset is failed and can be deleted."""
    dataset_id = uuid.uuid4()
    with maintained.client() as api, BuildLocks(datasets_dir(maintained)).building(dataset_id):
        insert_building(maintained, dataset_id)
        refused = api.delete(f"/v1/datasets/{dataset_id}")
        assert refused.status_code == 409 and refused.json()["detail"][0]["type"] == "conflict", refused.text
        for _ in range(5):
            time.sleep(UPKEEP_S)
            assert api.get(f"/v1/datasets/{dataset_id}").json()["status"] == "building"
    with maintained.client() as api:
        eventually(lambda: api.get(f"/v1/datasets/{dataset_id}").json()["status"] == "failed")
        assert "interrupted" in api.get(f"/v1/datasets/{dataset_id}").json()["error"]
        assert api.delete(f"/v1/datasets/{dataset_id}").status_code == 204


def test_retention_purges_old_finished_datasets_only(maintained: Service) -> None:
    with maintained.client() as api:
        job = _completed_job(api)
        old, recent = build(api, job, "old"), build(api, job, "recent")
        two_days_ago = utcnow() - timedelta(days=2)

        async def age(session: AsyncSession) -> None:
            stmt = update(Dataset).where(Dataset.id == uuid.UUID(old["id"])).values(finished_at=two_days_ago)
            await session.execute(stmt)

        in_database(maintained.database_url, age)
        eventually(lambda: api.get(f"/v1/datasets/{old['id']}").status_code == 404)
        assert stored_files(maintained, old["id"]) == [] and file_rows(maintained, old["id"]) == 0
        assert api.get(f"/v1/datasets/{recent['id']}").json()["status"] == "ready"
        assert len(stored_files(maintained, recent["id"])) == len(recent["manifest"]["files"]) + 1


def test_a_build_left_by_a_killed_process_is_failed_at_start(maintained: Service) -> None:
    """Stop the service, leave a building dataset with a partly written shard (as a SIGKILL mid-build
    does), start it again: the dataset is failed with an error and its files are gone."""
    dataset_id = uuid.uuid4()
    maintained.process.stop()
    try:
        insert_building(maintained, dataset_id)
        shard = datasets_dir(maintained) / str(project_id(maintained)) / str(dataset_id) / "train-00000.parquet"
        shard.parent.mkdir(parents=True)
        shard.write_bytes(b"PAR1 half a shard")
    finally:
        maintained.process.start()
        maintained.process.wait_ready(maintained.api_key, timeout=120)
    with maintained.client() as api:
        eventually(lambda: api.get(f"/v1/datasets/{dataset_id}").json()["status"] == "failed", timeout=10)
        dataset = api.get(f"/v1/datasets/{dataset_id}").json()
        assert "interrupted" in dataset["error"] and dataset["finished_at"] is not None
        assert not shard.parent.exists()


def test_build_locks_tell_live_builds_from_orphans(tmp_path: Path) -> None:
    """flock conflicts between open files even in one process, so a sweep in the builder's own process also
    sees its build as live; the lock file goes with the lock."""
    locks, dataset_id = BuildLocks(tmp_path), uuid.uuid4()
    with locks.building(dataset_id):
        with locks.orphaned(dataset_id) as orphan:
            assert orphan is False
        with pytest.raises(RuntimeError):
            locks.building(dataset_id).__enter__()
    assert list(locks.directory.iterdir()) == []
    with locks.orphaned(dataset_id) as orphan:
        assert orphan is True
    assert list(locks.directory.iterdir()) == []
