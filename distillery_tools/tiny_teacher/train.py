"""The tiny teacher's training loop: AdamW with warmup and cosine decay on random windows of one token stream."""

from __future__ import annotations

import logging
from typing import Any

from distillery_tools.tiny_teacher.spec import ProgressCallback, TinyTeacherSpec

log = logging.getLogger("distillery_tools.tiny_teacher.build")


def train_model(
    model: Any,
    stream: Any,
    spec: TinyTeacherSpec,
    *,
    seed: int,
    train_steps: int,
    progress: ProgressCallback | None,
    log_every: int,
) -> tuple[float, float]:
    """Trains on random windows of the token stream (fixed generator order); returns (first, final) loss."""
    import math

    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": spec.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=spec.learning_rate,
        betas=(0.9, 0.95),
        foreach=False,
    )

    def lr_at(step: int) -> float:
        if step < spec.warmup_steps:
            return spec.learning_rate * (step + 1) / spec.warmup_steps
        span = max(1, train_steps - spec.warmup_steps)
        frac = (step - spec.warmup_steps) / span
        return spec.learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))

    max_start = stream.numel() - spec.seq_len - 1
    model.train()
    first_loss = float("nan")
    recent: list[float] = []
    for step in range(train_steps):
        starts = torch.randint(0, max_start, (spec.batch_size,), generator=generator)
        batch = torch.stack([stream[s : s + spec.seq_len] for s in starts.tolist()])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        out = model(input_ids=batch, labels=batch)
        loss = out.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        optimizer.step()
        value = float(loss.detach())
        if step == 0:
            first_loss = value
        recent = [*recent[-9:], value]
        if progress is not None:
            progress(step + 1, train_steps, value)
        if (step + 1) % log_every == 0 or step + 1 == train_steps:
            log.info("tiny teacher step %d/%d loss %.4f", step + 1, train_steps, value)
    model.eval()
    final = sum(recent) / len(recent) if recent else float("nan")
    return first_loss, final
