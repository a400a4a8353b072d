"""Validating a batch's input file: every line read once, each problem named by its line, and the plan of
the job to make (its teacher and the distinct parameter sets with the logprobs their lines asked for)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from app.batches.lines import BatchLine, LineError, parse_line
from app.batches.schemas import BatchError
from app.errors import ApiError
from app.jobs import service as jobs_service
from app.jobs.lines import iter_lines
from app.jobs.loading import LINES_PER_YIELD
from app.jobs.schemas import GenerationParams
from app.settings import Settings
from app.teachers.service import TeacherRegistry

MAX_REPORTED_ERRORS = 100
# Distinct sampling-parameter sets one batch may hold: every set is a separate stream of teacher requests,
# and the job's row (read at each claim) carries them all.
MAX_VARIANTS = 256
TOO_MANY_VARIANTS = (
    f"more than {MAX_VARIANTS} distinct sets of sampling parameters in one batch (a per-line seed makes each "
    "line a set of its own: give one seed, or none)"
)


class FileReader:
    """A stored file read in chunks off the event loop (what iter_lines reads from)."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("rb")

    async def read(self, size: int = -1) -> bytes:
        return await asyncio.to_thread(self.file.read, size)

    def close(self) -> None:
        self.file.close()


@dataclass
class Plan:
    """What the validating pass learned: the teacher, the distinct parameter sets with the logprobs their
    lines asked for, and the lines' count."""

    teacher: str | None = None
    teacher_line: int = 0
    variants: dict[bytes, int] | None = None
    params: list[GenerationParams] | None = None
    asked: list[int | None] | None = None
    lines: int = 0

    def variant_of(self, line: BatchLine) -> int:
        assert self.variants is not None and self.params is not None and self.asked is not None
        key = orjson.dumps([line.params.lineage(), line.logprobs], option=orjson.OPT_SORT_KEYS)
        if key not in self.variants:
            self.variants[key] = len(self.params)
            self.params.append(line.params)
            self.asked.append(line.logprobs)
        return self.variants[key]


async def request_lines(path: Path, settings: Settings) -> AsyncIterator[tuple[int, bytes]]:
    reader = FileReader(path)
    try:
        async for lineno, line in iter_lines(reader, max_line_bytes=settings.max_upload_line_bytes):
            if lineno % LINES_PER_YIELD == 0:
                await asyncio.sleep(0)
            if line.strip():
                yield lineno, line
    finally:
        reader.close()


async def validate(path: Path, registry: TeacherRegistry, settings: Settings) -> tuple[Plan, list[BatchError]]:
    """Read every line once: the plan, and the errors (each naming its line; the first MAX_REPORTED_ERRORS)."""
    plan = Plan(variants={}, params=[], asked=[])
    errors: list[BatchError] = []
    checker = jobs_service.RecordChecker(settings, "generate")

    def report(lineno: int | None, error: LineError) -> None:
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append(BatchError(code=error.code, message=error.message, param=error.param, line=lineno))

    try:
        async for lineno, raw in request_lines(path, settings):
            plan.lines += 1
            try:
                line = parse_line(raw)
                _check_teacher(plan, line, lineno, registry)
                problem = checker.check(line.record, f"line {lineno}")
                if problem is not None:
                    field = ".".join(str(p) for p in problem[0])
                    code = "duplicate_custom_id" if field == "custom_id" else "invalid_request"
                    raise LineError(code, problem[1], field or None)
            except LineError as error:
                report(lineno, error)
                continue
            if plan.variant_of(line) >= MAX_VARIANTS:
                report(lineno, LineError("too_many_parameter_sets", TOO_MANY_VARIANTS, "body"))
                break
    except ApiError as exc:  # a line longer than any valid record
        detail = first_detail(exc)
        report(int(detail["loc"][-1]), LineError("line_too_long", str(detail["msg"])))
    if plan.lines == 0 and not errors:
        report(None, LineError("empty_file", "the input file holds no request lines"))
    return plan, errors


def first_detail(exc: ApiError) -> dict[str, Any]:
    detail: list[dict[str, Any]] = exc.detail  # type: ignore[assignment]  # ApiError always sets a list
    return detail[0]


def _check_teacher(plan: Plan, line: BatchLine, lineno: int, registry: TeacherRegistry) -> None:
    if registry.configured(line.teacher) is None:
        known = ", ".join(s.name for s in registry.states())
        raise LineError("model_not_found", f"unknown teacher {line.teacher!r}; configured: {known}", "body.model")
    if plan.teacher is None:
        plan.teacher, plan.teacher_line = line.teacher, lineno
    elif line.teacher != plan.teacher:
        raise LineError(
            "invalid_request",
            f"a batch runs on one teacher: line {plan.teacher_line} names {plan.teacher!r}, this one {line.teacher!r}",
            "body.model",
        )
