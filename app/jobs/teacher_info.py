"""What a job records about its teacher: the identity its server reported, and how its chats render."""

from __future__ import annotations

from typing import Any

from app.errors import ApiError
from app.jobs.schemas import GenerationParams
from app.teachers.client import TeacherError
from app.teachers.service import TeacherRegistry

LINEAGE_FIELDS = (
    "served_model",
    "model_root",
    "max_model_len",
    "max_logprobs",
    "vllm_version",
    "logprobs_mode",
    "tokenizer_fingerprint",
    "chat_template_fingerprint",
    "reasoning_end_token_id",
)


async def teacher_info_for(registry: TeacherRegistry, teacher: str, params: GenerationParams) -> dict[str, Any]:
    """Check the teacher exists and accepts k; return its identity to record on the job."""
    if registry.configured(teacher) is None:
        known = ", ".join(s.name for s in registry.states())
        raise ApiError(422, f"unknown teacher {teacher!r}; configured: {known}", loc=["body", "teacher"])
    state = registry.state(teacher)
    if state is None or state.served_model is None:
        await registry.refresh(teacher)
        state = registry.state(teacher)
    if state is None or state.served_model is None:
        raise ApiError(
            503,
            f"teacher {teacher!r} has not answered yet, so its limits are unknown; try again shortly",
            loc=["body", "teacher"],
            type="teacher_unavailable",
            headers={"Retry-After": "10"},
        )
    if state.max_logprobs is not None and params.top_logprobs > state.max_logprobs:
        raise ApiError(
            422,
            f"top_logprobs {params.top_logprobs} exceeds teacher {teacher!r}'s max_logprobs {state.max_logprobs}",
            loc=["body", "params", "top_logprobs"],
        )
    info = state.model_dump(include=set(LINEAGE_FIELDS), mode="json")
    info["name"] = teacher
    info.update(await _rendered_chat_template(registry, teacher, params, state.chat_template_fingerprint))
    return info


async def _rendered_chat_template(
    registry: TeacherRegistry, teacher: str, params: GenerationParams, plain: str | None
) -> dict[str, Any]:
    """What the job's chats render with: its chat_template_kwargs and the fingerprint of the probe conversation
    rendered with them (the teacher's own fingerprint when there are none). Kwargs the template refuses: 422."""
    kwargs = params.chat_template_kwargs
    if not kwargs:
        return {"chat_template_kwargs": None, "rendered_chat_template_fingerprint": plain}
    try:
        rendered = await registry.chat_template_fingerprint(teacher, kwargs)
    except TeacherError as exc:
        if exc.transient or exc.teacher_fault:
            raise ApiError(
                503,
                f"teacher {teacher!r} could not render the chat template: {exc.message}",
                loc=["body", "teacher"],
                type="teacher_unavailable",
                headers={"Retry-After": "10"},
            ) from exc
        raise ApiError(
            422,
            f"teacher {teacher!r} refused these chat_template_kwargs: {exc.message}",
            loc=["body", "params", "chat_template_kwargs"],
        ) from exc
    return {"chat_template_kwargs": kwargs, "rendered_chat_template_fingerprint": rendered}
