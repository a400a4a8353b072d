"""find_answer_start: the reasoning boundary is found from token ids, after the first end-of-reasoning token."""

from __future__ import annotations

import numpy as np
import pytest

from app.worker.store import find_answer_start

END = 8


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([5, 6, END, 9, 10], 3),  # the answer starts right after the marker
        ([END, 9], 1),
        ([5, 6, END], 3),  # thinking closed on the last token: an empty answer, at the length
        ([5, END, 9, END, 10], 2),  # the first marker counts; a later one belongs to the answer
        ([5, 6, 9], None),  # never closed (cut off while thinking, or thinking off): no boundary
        ([], None),
    ],
)
def test_boundary_follows_the_first_marker(ids: list[int], expected: int | None) -> None:
    assert find_answer_start(np.array(ids, dtype=np.int32), END) == expected


def test_no_marker_id_means_no_boundary() -> None:
    assert find_answer_start(np.array([5, END, 9], dtype=np.int32), None) is None
