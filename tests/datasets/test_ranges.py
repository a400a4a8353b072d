"""Byte ranges as RFC 9110 reads them, and storage keys that cannot leave the datasets directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.datasets.api import byte_range
from app.datasets.storage import LocalStorage
from app.errors import ApiError


@pytest.mark.parametrize(
    ("header", "size", "want"),
    [
        ("bytes=0-9", 100, (0, 10)),
        ("bytes=90-", 100, (90, 100)),
        ("bytes=90-500", 100, (90, 100)),
        ("bytes=-10", 100, (90, 100)),
        ("bytes=-500", 100, (0, 100)),
        ("BYTES = 5-5", 100, (5, 6)),
        ("bytes=9-2", 100, None),
        ("bytes=0-1,5-6", 100, None),
        ("items=0-1", 100, None),
        ("bytes=-", 100, None),
        ("bytes=", 100, None),
        ("bytes=a-b", 100, None),
    ],
)
def test_byte_range(header: str, size: int, want: tuple[int, int] | None) -> None:
    assert byte_range(header, size) == want


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0), ("bytes=-5", 0)])
def test_unsatisfiable_range_is_416(header: str, size: int) -> None:
    with pytest.raises(ApiError) as caught:
        byte_range(header, size)
    assert caught.value.status_code == 416
    assert caught.value.headers == {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"}


def test_local_storage_round_trip_and_key_checks(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    writer = storage.create("p/d/a.bin")
    writer.write(b"0123456789")
    assert not (tmp_path / "p/d/a.bin").exists(), "invisible until committed"
    writer.commit()
    assert storage.size("p/d/a.bin") == 10
    assert b"".join(storage.open("p/d/a.bin", 3, 7)) == b"3456"
    aborted = storage.create("p/d/b.bin")
    aborted.write(b"x")
    aborted.abort()
    assert sorted(p.name for p in (tmp_path / "p/d").iterdir()) == ["a.bin"]
    for bad in ("../x", "p/../../x", "/etc/passwd", "p//x", ""):
        with pytest.raises(ValueError):
            storage.path(bad)
    storage.delete_prefix("p/d")
    assert not (tmp_path / "p/d").exists()
