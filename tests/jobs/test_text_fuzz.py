"""Any text survives, on both databases: NUL, the escape character itself, RTL marks, combining marks and
astral characters in prompts, chat messages and metadata go from a JSON body and a JSONL upload to the
Parquet export exactly; lone surrogates and over-long prompts get a 422 naming the field, nothing stored;
a prompt the teacher refuses fails alone with the teacher's message stored."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from app.models import ESCAPE, escape_nul, unescape_nul
from tests.helpers import job_count, wait_done

MESSY = [
    "NUL\x00inside",
    "\x00",
    "escape " + ESCAPE + " alone, " + ESCAPE + "0 before a zero, " + ESCAPE + ESCAPE,
    "\x00" + ESCAPE + "0\x00",
    "rtl \u200f\u05e9\u05dc\u05d5\u05dd\u200e mark",
    "combining e\u0301\u0302\u0303 a\u0308",
    "astral \U0001f600 \U00010348 and a backslash \\0 \\u0000",
    "tab\tand\r\nnewlines\u2028sep",
]


def test_escape_round_trips_every_tricky_string() -> None:
    for text in [*MESSY, "", ESCAPE * 3 + "0", "0" + ESCAPE]:
        stored = escape_nul(text)
        assert "\x00" not in stored and unescape_nul(stored) == text


def exported(api: httpx.Client, job_id: str) -> dict[str, dict[str, Any]]:
    response = api.get(f"/v1/jobs/{job_id}/export")
    assert response.status_code == 200, response.text
    return {row["custom_id"]: row for row in pq.read_table(io.BytesIO(response.content)).to_pylist()}


@pytest.mark.parametrize("via", ["json", "upload"])
def test_messy_text_round_trips_to_the_parquet_export(api: httpx.Client, via: str) -> None:
    prompts: list[dict[str, Any]] = []
    for i, text in enumerate(MESSY):
        prompts.append({"custom_id": f"raw{i}", "prompt": text, "metadata": {text: [text, {"k\x00": i}]}})
    chat = [{"role": "system", "content": MESSY[0]}, {"role": "user", "content": MESSY[2]}]
    prompts.append({"custom_id": "chat", "messages": chat, "metadata": {"note": MESSY[3]}})
    prompts.append({"custom_id": "too-long-for-the-teacher", "prompt": "x \x00 " * 30_000})
    params = {"max_tokens": 4, "top_logprobs": 2}
    if via == "json":
        response = api.post("/v1/jobs", json={"teacher": "tiny", "params": params, "prompts": prompts})
    else:
        lines = b"\n".join(json.dumps(p).encode() for p in prompts)  # json.dumps writes NUL as \u0000
        form = {"teacher": "tiny", **{k: str(v) for k, v in params.items()}}
        response = api.post("/v1/jobs/upload", data=form, files={"file": ("p.jsonl", lines)})
    assert response.status_code == 201, response.text
    job = wait_done(api, response.json()["id"])
    assert (job["counts"]["done"], job["counts"]["failed"]) == (len(prompts) - 1, 1)

    rows = exported(api, job["id"])
    for i, text in enumerate(MESSY):
        assert rows[f"raw{i}"]["prompt"] == text
        assert json.loads(rows[f"raw{i}"]["metadata"]) == {text: [text, {"k\x00": i}]}
    assert json.loads(rows["chat"]["messages"]) == chat
    assert json.loads(rows["chat"]["metadata"]) == {"note": MESSY[3]}
    (failure,) = api.get(f"/v1/jobs/{job['id']}/failures").json()["failures"]
    assert failure["custom_id"] == "too-long-for-the-teacher" and "context" in failure["error"]


@pytest.mark.parametrize(
    ("record", "loc_tail"),
    [
        ({"prompt": "lone \ud800 surrogate"}, ["prompt"]),
        ({"prompt": "ok", "metadata": {"a": ["\udfff"]}}, ["metadata"]),
        ({"messages": [{"role": "user", "content": "x\udc00"}]}, ["messages", 0, "content"]),
        ({"prompt": "ok", "custom_id": "id\x00with-nul"}, ["custom_id"]),
        ({"prompt": "p" * 1_000_001}, ["prompt"]),
    ],
)
def test_unstorable_text_is_a_422_naming_the_field(api: httpx.Client, record: dict[str, Any], loc_tail: list) -> None:
    before = job_count(api)
    prompts = [{"prompt": "fine"}, record]
    # json.dumps (not httpx's encoder) so a lone surrogate goes out as the \ud800 escape a client would send
    body = json.dumps({"teacher": "tiny", "prompts": prompts}).encode()
    response = api.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    loc = response.json()["detail"][0]["loc"]
    assert loc[:3] == ["body", "prompts", 1] and loc[3 : 3 + len(loc_tail)] == loc_tail, loc
    if "prompt" in record and len(record["prompt"]) < 1000:
        upload = api.post(
            "/v1/jobs/upload",
            data={"teacher": "tiny"},
            files={"file": ("p.jsonl", b"\n".join(json.dumps(p).encode() for p in prompts))},
        )
        assert upload.status_code == 422, upload.text
        assert upload.json()["detail"][0]["loc"][:4] == ["body", "file", "line", 2], upload.text
    assert job_count(api) == before
