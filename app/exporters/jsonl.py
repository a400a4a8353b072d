"""JsonlExporter: one JSON object per (prompt, sample) per line. A logprob of -inf is written as null."""

from __future__ import annotations

from typing import Any

import orjson

from app.exporters.rows import ExportRow


class JsonlExporter:
    media_type = "application/x-ndjson"
    extension = "jsonl"

    def __init__(self, *, k: int, teacher: str, lineage: dict[str, Any], fingerprint: str | None = None) -> None:
        self.k = k
        self.teacher = teacher
        self.fingerprint = fingerprint
        self.lineage = lineage

    def row(self, r: ExportRow) -> dict[str, Any]:
        a = r.arrays
        return {
            "job_id": str(r.job_id),
            "teacher": self.teacher,
            "tokenizer_fingerprint": self.fingerprint,
            "item_id": r.item_id,
            "seq": r.seq,
            "custom_id": r.custom_id,
            "sample_index": r.sample_index,
            "prompt": r.prompt,
            "messages": r.messages,
            "metadata": r.metadata,
            "text": r.text,
            "finish_reason": r.finish_reason,
            "prompt_token_ids": None if r.prompt_token_ids is None else r.prompt_token_ids.tolist(),
            "token_ids": a.token_ids.tolist(),
            "answer_start": r.answer_start,
            "token_logprobs": a.token_logprobs.astype("float32").tolist(),
            "topk_ids": a.topk_ids.tolist(),
            "topk_logprobs": a.topk_logprobs.astype("float32").tolist(),
        }

    def write(self, rows: list[ExportRow]) -> bytes:
        return b"".join(orjson.dumps(self.row(r), option=orjson.OPT_APPEND_NEWLINE) for r in rows)

    def close(self) -> bytes:
        return b""
