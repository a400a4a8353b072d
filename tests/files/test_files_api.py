"""The files API through the official openai client, on both databases: upload (streamed to disk), read
back byte for byte, list with pagination, delete; bad purposes refused."""

from __future__ import annotations

import io
import os

import openai
import pytest

from tests.batches.openai_helpers import openai_client
from tests.conftest import Service


def test_upload_read_list_and_delete(service: Service) -> None:
    client = openai_client(service)
    content = os.urandom(3 << 20) + b"\n\x00end"  # several upload chunks, any bytes at all
    made = client.files.create(file=("big.jsonl", io.BytesIO(content)), purpose="batch")
    assert made.id.startswith("file-") and made.object == "file"
    assert (made.bytes, made.filename, made.purpose, made.status) == (len(content), "big.jsonl", "batch", "processed")
    assert client.files.retrieve(made.id) == made
    assert client.files.content(made.id).content == content

    others = [client.files.create(file=(f"f{i}.jsonl", io.BytesIO(b"{}\n")), purpose="batch").id for i in range(3)]
    page = client.files.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    listed = [f.id for f in client.files.list(limit=2)]  # every page, newest first
    positions = [listed.index(i) for i in [made.id, *others]]
    assert positions == sorted(positions, reverse=True)
    oldest_first = [f.id for f in client.files.list(limit=2, order="asc")]
    assert oldest_first == list(reversed(listed))

    deleted = client.files.delete(made.id)
    assert (deleted.id, deleted.deleted) == (made.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(made.id)
    assert made.id not in {f.id for f in client.files.list()}


def test_bad_uploads_are_refused(service: Service) -> None:
    client = openai_client(service)
    before = {f.id for f in client.files.list()}
    with pytest.raises(openai.UnprocessableEntityError):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-not-a-real-id")
    with pytest.raises(openai.NotFoundError):
        client.files.content("nothing")
    assert {f.id for f in client.files.list()} == before
