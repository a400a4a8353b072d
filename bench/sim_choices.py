"""vLLM-shaped completions choices of any length, built from the recorded 128-token ones for the fleet simulator.

Track j is recorded completion j followed by j+1, j+2, ... (cyclically), so it is as long as a request
needs. For each (track, k) every position is serialized once (token id, token string, logprob, top-k
object, text offset) into one comma-joined blob per field with the byte offset after each element; a choice
of length L is then a few slices of those blobs, so building one costs a memcpy of its own size.
"""

from __future__ import annotations

from typing import Any

import orjson

from bench.replay_teacher import _cut_completion

_DYNAMIC = ("text", "logprobs", "finish_reason", "stop_reason", "token_ids")
_LP_FIELDS = ("text_offset", "token_logprobs", "tokens", "top_logprobs")


class _Blob:
    """A JSON array's elements serialized once; `prefix(n)` is the array of its first n elements."""

    def __init__(self, elements: list[bytes]) -> None:
        self.data = b",".join(elements)
        self.ends: list[int] = []
        end = -1
        for element in elements:
            end += len(element) + 1
            self.ends.append(end)

    def prefix(self, n: int) -> bytes:
        return b"[" + self.data[: self.ends[n - 1]] + b"]" if n else b"[]"


class _Track:
    """One track at one k: every field's blob, the text, and the recorded choice's static fields."""

    def __init__(self, choice: dict[str, Any], length: int) -> None:
        self.length = length
        self.text: str = choice["text"]
        self.token_ids = _Blob([orjson.dumps(t) for t in choice["token_ids"]])
        lp = choice.get("logprobs")
        self.logprobs = {f: _Blob([orjson.dumps(v) for v in lp[f]]) for f in _LP_FIELDS} if lp else None
        self.static = {key: orjson.dumps(v) for key, v in choice.items() if key not in _DYNAMIC}
        self.order = list(choice)


class ChoiceBuilder:
    """Serialized completions choices (index first, then the recorded fields) for any length, k and finish."""

    def __init__(self, recording: dict[str, Any]) -> None:
        self.completions: list[dict[str, Any]] = recording["completions"]
        self.recorded_k: int = recording["k"]
        self._tracks: dict[tuple[int, int | None], _Track] = {}

    @property
    def tracks(self) -> int:
        """How many distinct tracks there are (one per recorded completion)."""
        return len(self.completions)

    def _joined(self, track: int, length: int) -> dict[str, Any]:
        """Recorded completions track, track+1, ... concatenated to at least `length` positions."""
        parts: list[dict[str, Any]] = []
        total = 0
        i = track
        while total < length or not parts:
            parts.append(self.completions[i % len(self.completions)])
            total += len(parts[-1]["token_ids"])
            i += 1
        joined = dict(parts[0])
        joined["text"] = "".join(p["text"] for p in parts)
        joined["token_ids"] = [t for p in parts for t in p["token_ids"]]
        if parts[0].get("logprobs") is not None:
            lp: dict[str, list[Any]] = {f: [] for f in _LP_FIELDS}
            for p in parts:
                for f in ("token_logprobs", "tokens", "top_logprobs"):
                    lp[f].extend(p["logprobs"][f])
            offset = 0
            for token in lp["tokens"]:  # vLLM's offsets with token-id strings: the running length of the tokens
                lp["text_offset"].append(offset)
                offset += len(token)
            joined["logprobs"] = lp
        return joined

    def _track(self, track: int, length: int, k: int | None) -> _Track:
        key = (track, k)
        cached = self._tracks.get(key)
        if cached is None or cached.length < length:
            # grow by at least doubling, so a run of ever longer requests rebuilds each track only a few times
            want = max(length, 2 * cached.length if cached else length)
            joined = self._joined(track, want)
            size = len(joined["token_ids"])
            cached = _Track(_cut_completion(joined, size, k, self.recorded_k), size)
            self._tracks[key] = cached
        return cached

    def choice(self, index: int, length: int, k: int | None, finish_reason: str) -> bytes:
        """Choice `index` (its track is index mod the recorded count) cut to `length` tokens and k candidates."""
        t = self._track(index % len(self.completions), length, k)
        text = t.text[: max(1, len(t.text) * length // t.length)]
        out = [b'{"index":%d' % index]
        for key in t.order:
            if key == "text":
                value = orjson.dumps(text)
            elif key == "logprobs":
                lp = t.logprobs
                value = (
                    b"{" + b",".join(b'"%b":%b' % (f.encode(), lp[f].prefix(length)) for f in _LP_FIELDS) + b"}"
                    if lp is not None
                    else b"null"
                )
            elif key == "finish_reason":
                value = orjson.dumps(finish_reason)
            elif key == "stop_reason":
                value = b"null"
            elif key == "token_ids":
                value = t.token_ids.prefix(length)
            else:
                value = t.static[key]
            out.append(b',"%b":%b' % (key.encode(), value))
        out.append(b"}")
        return b"".join(out)
