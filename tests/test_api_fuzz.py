"""API fuzzing: schemathesis against the service's own OpenAPI schema (issue 3).

Every operation of `{service.url}/openapi.json` is fuzzed with positive and negative data by a Hypothesis
test with a fixed seed and a bounded number of examples, one pytest subtest per operation and mode. Every
response must be no 5xx, carry a documented status code, content type and headers, and match the documented
body schema; invalid input must get a 4xx. A second test sends no, malformed and unknown API keys and expects
a documented 401 (in the one error shape) from every secured operation.

Schemathesis' own pytest integration (`schemathesis.pytest.from_fixture`) cannot be used: schemathesis
4.32.5 reads and writes `Function._nodeid`, which pytest 9.2 no longer has. So this module drives its
documented Python API instead: `operation.as_strategy(mode)` under `hypothesis.given`, and
`case.validate_response(response, checks=...)` with schemathesis' own checks.

Real jobs are kept cheap: generated `max_tokens`/`n` are lowered to values that stay valid (so a negative
case stays negative), valid prompt lists are cut to a few prompts, and every job the fuzzer creates is
cancelled at once (and again when the module ends), so the teacher is never busy for long.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Service
from tests.helpers import wait_done

pytestmark = pytest.mark.vllm

Case = schemathesis.Case[Any]
Operation = schemathesis.APIOperation[Any, Any, Any, Any]

SEED = 20_260_311
MAX_EXAMPLES = 30  # per operation and generation mode
NOAUTH_EXAMPLES = 4  # per operation
REQUEST_TIMEOUT_S = 30.0

CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CHECKS = [*CONFORMANCE, negative_data_rejection]

CREATE_PATHS = {"/v1/jobs", "/v1/jobs/upload"}
# Valid generated values above these are lowered to them (never raised): a real job stays a few tokens long.
CAPS = {"max_tokens": (4, 32768), "n": (2, 64)}
MAX_PROMPTS = 3
UPLOAD = ("/v1/jobs/upload", "post")
MULTIPART = "multipart/form-data"
BAD_KEYS = [None, "Bearer", "Bearer dk_", "Bearer dk_000000000000_nope", "Basic dXNlcjpwYXNz", "Token dk_x_y"]


def _raw_schema(service: Service) -> dict[str, Any]:
    response = httpx.get(f"{service.url}/openapi.json", timeout=30)
    response.raise_for_status()
    raw: dict[str, Any] = response.json()
    return raw


def _declare_upload_as_multipart(raw: dict[str, Any]) -> None:
    """The upload endpoint reads multipart/form-data, but FastAPI declares a `Form()` model as
    application/x-www-form-urlencoded (with which the endpoint can only answer 422): fuzz what the endpoint
    reads. A no-op once the served schema declares multipart/form-data."""
    body = raw["paths"][UPLOAD[0]][UPLOAD[1]]["requestBody"]
    if MULTIPART not in body["content"]:
        body["content"] = {MULTIPART: next(iter(body["content"].values()))}


def _load(service: Service, headers: dict[str, str]) -> schemathesis.BaseSchema:
    raw = _raw_schema(service)
    _declare_upload_as_multipart(raw)
    config = schemathesis.Config.from_dict({"seed": SEED, "base-url": service.url, "headers": headers})
    return schemathesis.openapi.from_dict(raw, config=config)


def _operations(schema: schemathesis.BaseSchema) -> list[Operation]:
    operations = []
    for result in schema.get_all_operations():
        operations.append(result.ok())  # type: ignore[union-attr]  # an invalid operation raises here
    assert operations, "the schema has no operations"
    return operations


class FuzzState:
    """Known jobs (and a dataset, when the API has datasets) to aim ids at, and every job the fuzzer created
    (to cancel)."""

    def __init__(self, service: Service, completed: str, cancelled: str) -> None:
        self.service = service
        self.completed = completed
        self.cancelled = cancelled
        self.dataset: str | None = None
        self.dataset_files: list[str] = []
        self.created: list[str] = []
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {service.api_key}"

    def cancel(self, job_id: str) -> None:
        self.session.post(f"{self.service.url}/v1/jobs/{job_id}/cancel", timeout=REQUEST_TIMEOUT_S)


@pytest.fixture(scope="module")
def fuzz_state(service: Service) -> Iterator[FuzzState]:
    """A small completed job and a cancelled one of project alpha (and a dataset of the first), so positive
    cases on an id reach real objects, not only 404."""
    with service.client() as api:
        body = {"teacher": "tiny", "params": {"max_tokens": 2, "top_logprobs": 3}, "prompts": [{"prompt": "hi"}]}
        done = api.post("/v1/jobs", json=body)
        assert done.status_code == 201, done.text
        stopped = api.post("/v1/jobs", json=body)
        assert stopped.status_code == 201, stopped.text
        assert api.post(f"/v1/jobs/{stopped.json()['id']}/cancel").status_code == 200
        wait_done(api, done.json()["id"])
        state = FuzzState(service, done.json()["id"], stopped.json()["id"])
        if "/v1/datasets" in _raw_schema(service)["paths"]:
            dataset = api.post("/v1/datasets", json={"name": "fuzz", "jobs": [state.completed]})
            assert dataset.status_code == 201, dataset.text
            state.dataset = dataset.json()["id"]
            manifest = dataset.json()["manifest"] or {}
            state.dataset_files = ["manifest.json", *(f["name"] for f in manifest.get("files", []))]
    yield state
    for job_id in state.created:
        state.cancel(job_id)
    state.session.close()


def _is_positive(case: Case) -> bool:
    return case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE


def _clamp(params: Any) -> None:
    """Lower valid max_tokens/n in place; out-of-range or mistyped values are left for the API to reject."""
    if not isinstance(params, dict):
        return
    for name, (cap, maximum) in CAPS.items():
        value = params.get(name)
        if type(value) is int and cap < value <= maximum:
            params[name] = cap


def _one_of_prompt_or_messages(record: Any, *, scoring: bool) -> None:
    """The schema cannot say that a prompt record needs exactly one of `prompt` and `messages` (and a
    `response` only in a scoring job): without this, nearly every generated record is rejected and a
    positive case never reaches 201."""
    if not isinstance(record, dict):
        return
    if not scoring:
        record.pop("response", None)
    if record.get("prompt") is None and record.get("messages") is None:
        record["prompt"] = "fuzz"
    elif record.get("prompt") is not None and record.get("messages") is not None:
        del record["messages"]


def _valid_jsonl(seed: int) -> bytes:
    lines = [f'{{"prompt": "fuzz {seed} {i}", "custom_id": "u{i}"}}' for i in range(1 + seed % MAX_PROMPTS)]
    return "\n".join(lines).encode()


def _pick(value: Any, choices: list[str]) -> str | None:
    """One of `choices` for about two thirds of the generated values (deterministically), else None."""
    index = zlib.crc32(str(value).encode()) % (len(choices) + len(choices) // 2 + 1)
    return choices[index] if index < len(choices) else None


def _aim(case: Case, state: FuzzState) -> None:
    """Keep generated jobs cheap, and point some valid ids at jobs and datasets that exist. Only valid values
    are replaced, and only by valid values, so a positive case stays positive and a negative one negative."""
    positive = _is_positive(case)
    body: Any = case.body
    if case.path == "/v1/jobs" and isinstance(body, dict):
        _clamp(body.get("params"))
        if positive:
            body["teacher"] = "tiny"
            if isinstance(body.get("prompts"), list):
                del body["prompts"][MAX_PROMPTS:]
                for record in body["prompts"]:
                    _one_of_prompt_or_messages(record, scoring=body.get("kind") == "score")
    elif case.path == "/v1/jobs/upload" and isinstance(body, dict):
        _clamp(body)
        if positive:
            body["teacher"] = "tiny"
            # A form field cannot be null: a generated null goes out as the string "null" (422), so omit it.
            for name in [name for name, value in body.items() if value is None]:
                del body[name]
            # Generated file content is never JSONL: every other valid form gets a valid file, to reach 201.
            content = body.get("file")
            digest = zlib.crc32(content if isinstance(content, bytes) else str(content).encode())
            if digest % 2 == 0:
                body["file"] = _valid_jsonl(digest)
    elif case.path == "/v1/datasets" and positive and isinstance(body, dict) and isinstance(body.get("jobs"), list):
        body["jobs"] = [_pick(job, [state.completed]) or job for job in body["jobs"]]
    if not positive or not case.path_parameters:
        return
    targets = {"job_id": [state.completed, state.cancelled]}
    if state.dataset is not None:
        targets["dataset_id"] = [state.dataset]
        targets["name"] = state.dataset_files
    for name, choices in targets.items():
        if name in case.path_parameters and choices:
            case.path_parameters[name] = _pick(case.path_parameters[name], choices) or case.path_parameters[name]


def _record_created(case: Case, response: Any, state: FuzzState) -> None:
    """Cancel a job the fuzzer created, at once."""
    if case.method.upper() != "POST" or case.path not in CREATE_PATHS or response.status_code not in (200, 201):
        return
    try:
        job_id = response.json()["id"]
    except (ValueError, KeyError, TypeError):
        return  # the schema checks report the body
    state.created.append(job_id)
    state.cancel(job_id)


def _fuzz(operation: Operation, mode: GenerationMode, examples: int, body: Callable[[Case], None]) -> None:
    """Run `body` on `examples` cases of the operation, seeded per operation and mode. No shrinking (each
    shrink step is another request), so a failure shows the first failing case."""

    @hypothesis.seed(SEED ^ zlib.crc32(f"{operation.label} {mode.value}".encode()))
    @hypothesis.settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Case) -> None:
        body(case)

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # Hypothesis tried every input: an operation without parameters or body has no negative case.
        if mode is GenerationMode.POSITIVE:
            raise


def test_api_conforms_to_its_schema(service: Service, fuzz_state: FuzzState, subtests: pytest.Subtests) -> None:
    """Positive and negative cases for every operation: no 5xx, everything as documented, invalid input 4xx."""
    schema = _load(service, {"Authorization": f"Bearer {service.api_key}"})

    def check(case: Case) -> None:
        _aim(case, fuzz_state)
        response = case.call(session=fuzz_state.session, timeout=REQUEST_TIMEOUT_S)
        try:
            case.validate_response(response, checks=CHECKS)
        finally:
            _record_created(case, response, fuzz_state)

    for operation in _operations(schema):
        for mode in GenerationMode:
            with subtests.test(msg=f"{operation.label} ({mode.value})"):
                _fuzz(operation, mode, MAX_EXAMPLES, check)


def test_requests_without_a_valid_key_get_401(
    service: Service, fuzz_state: FuzzState, subtests: pytest.Subtests
) -> None:
    """No, malformed or unknown keys: a documented 401 in the one error shape from every secured operation."""
    schema = _load(service, {})

    def check(case: Case) -> None:
        secured = bool(case.operation.definition.raw.get("security"))
        bad = BAD_KEYS[zlib.crc32(repr((case.path, case.query, case.path_parameters)).encode()) % len(BAD_KEYS)]
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        if bad is not None:
            headers["Authorization"] = bad
        case.headers = headers  # type: ignore[assignment]
        _aim(case, fuzz_state)
        with requests.Session() as session:
            response = case.call(session=session, timeout=REQUEST_TIMEOUT_S)
        try:
            case.validate_response(response, checks=CONFORMANCE)
            if secured:
                assert response.status_code == 401, (case.method, case.path, bad, response.status_code, response.text)
                assert response.json()["detail"][0]["type"] == "unauthorized"
                assert response.headers.get("www-authenticate") == ["Bearer"]
        finally:
            _record_created(case, response, fuzz_state)

    for operation in _operations(schema):
        with subtests.test(msg=operation.label):
            _fuzz(operation, GenerationMode.POSITIVE, NOAUTH_EXAMPLES, check)
