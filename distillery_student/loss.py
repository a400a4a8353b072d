"""Knowledge-distillation loss on Distillery's sparse teacher targets (top-k ids and logprobs per position).

All tensors are indexed by logits position, as `distillery_student.data` builds them: `student_logits[b, i]` is the
student's prediction for `labels[b, i]`, and `topk_ids[b, i]` / `topk_logprobs[b, i]` are the teacher's top-k
for that same token. A slot with id < 0 or logprob -inf is missing and takes no part.

Tail methods (the teacher's mass outside its top-k is never observed as ids):

- "bucket" (default): compare the two distributions on k + 1 outcomes, the teacher's k ids plus one "tail"
  bucket for every other token. The teacher's tail mass is 1 - sum(exp(top-k logprobs)); the student's is
  its probability of every token outside those ids, computed exactly (log-sum-exp over the other logits, not
  1 - sum, which cancels badly). At T = 1 this is the exact KL between the teacher's and the student's
  distributions coarsened to that partition: a lower bound of the full-vocabulary KL that is zero only when
  the student matches each top-k probability *and* the total tail mass, so it penalizes a student that
  spreads mass outside the teacher's support. At T != 1 both (k + 1)-bucket distributions are tempered the
  same way, softmax(log b / T): the teacher's tempered tail cannot be recovered from top-k logprobs (it
  depends on how the tail mass is spread), and applying one transform to both sides keeps the minimum
  exactly where the T = 1 buckets match while softening the targets as Hinton et al. intend.
- "renormalize": compare the teacher renormalized over its top-k with the student renormalized over the
  same ids, softmax(logits[ids] / T). Exact at any T for the conditional distribution given the top-k, but
  blind to the tail: the student may put any mass elsewhere, and only the cross-entropy term stops it.

The teacher's logprobs are taken as the full-vocabulary distribution they came from (raw by default, i.e.
before the teacher's sampling temperature; see the job's `logprobs_mode` lineage).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from distillery_student.data import IGNORE_INDEX

Tail = Literal["bucket", "renormalize"]
Reduction = Literal["mean", "sum", "none"]
TAILS: tuple[Tail, ...] = ("bucket", "renormalize")


def _select(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """values[rows] for a boolean mask over the leading axes, via index_select (its backward is much cheaper)."""
    flat = values.reshape(rows.numel(), *values.shape[rows.dim() :])
    return flat.index_select(0, rows.reshape(-1).nonzero().squeeze(1))


def _safe_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """KL over the last axis; outcomes the teacher gives zero mass (-inf) add nothing and carry no gradient."""
    present = torch.isfinite(teacher_logp)
    t_logp = torch.where(present, teacher_logp, torch.zeros_like(teacher_logp))
    s_logp = torch.where(present, student_logp, torch.zeros_like(student_logp))
    t_p = torch.where(present, t_logp.exp(), torch.zeros_like(t_logp))
    return (t_p * (t_logp - s_logp)).sum(-1)


def _bucket_logprobs(
    logits: torch.Tensor, ids: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probabilities on the k + 1 buckets (top-k ids, then the tail), at T = 1."""
    neg_inf = float("-inf")
    safe_ids = ids.clamp(min=0)
    log_z = logits.logsumexp(-1, keepdim=True)
    student_top = (logits.gather(-1, safe_ids) - log_z).masked_fill(~valid, neg_inf)
    # Which vocabulary entries are among the present top-k ids (scatter_add: missing slots add 0, no races).
    counts = torch.zeros(logits.shape, dtype=torch.int64, device=logits.device).scatter_add_(
        -1, safe_ids, valid.to(torch.int64)
    )
    student_tail = logits.masked_fill(counts > 0, neg_inf).logsumexp(-1, keepdim=True) - log_z
    student = torch.cat([student_top, student_tail], -1)

    teacher_top = teacher.masked_fill(~valid, neg_inf)
    top_mass = teacher_top.logsumexp(-1, keepdim=True)  # log of the top-k probability mass
    # log(1 - exp(top_mass)); float16 rounding can push the mass to 1 or past it, which leaves no tail.
    teacher_tail = torch.log((-torch.expm1(top_mass)).clamp(min=0.0))
    # Renormalize so rounding in the stored logprobs never yields a distribution summing past 1.
    teacher_b = torch.cat([teacher_top, teacher_tail], -1).log_softmax(-1)
    return teacher_b, student


def _positionwise_kl(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    topk_mask: torch.Tensor,
    *,
    temperature: float,
    tail: Tail,
) -> torch.Tensor:
    """KL(teacher || student) at each position that has a teacher target and at least one present slot: [N]."""
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, not {tail!r}")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    teacher = topk_logprobs.to(student_logits.dtype)
    valid = (topk_ids >= 0) & torch.isfinite(teacher)
    rows = topk_mask.to(torch.bool) & valid.any(-1)
    logits, ids = _select(student_logits, rows), _select(topk_ids, rows)
    teacher, valid = _select(teacher, rows), _select(valid, rows)
    if tail == "bucket":
        teacher_b, student_b = _bucket_logprobs(logits, ids, teacher, valid)
        if temperature != 1.0:
            teacher_b = (teacher_b / temperature).log_softmax(-1)
            student_b = (student_b / temperature).log_softmax(-1)
        return _safe_kl(teacher_b, student_b)
    neg_inf = float("-inf")
    teacher_r = (teacher.masked_fill(~valid, neg_inf) / temperature).log_softmax(-1)
    student_r = (logits.gather(-1, ids.clamp(min=0)).masked_fill(~valid, neg_inf) / temperature).log_softmax(-1)
    return _safe_kl(teacher_r, student_r)


def _reduce(values: torch.Tensor, reduction: Reduction, anchor: torch.Tensor) -> torch.Tensor:
    """Mean, sum or identity; a mean over nothing is 0 (still attached to the graph through `anchor`)."""
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    if values.numel() == 0:
        return anchor.sum() * 0.0
    return values.mean()


def kl_to_teacher(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    topk_mask: torch.Tensor,
    *,
    tail: Tail = "bucket",
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """KL(teacher || student) at T = 1 per target position, for evaluation; "none" gives one value per position."""
    values = _positionwise_kl(student_logits, topk_ids, topk_logprobs, topk_mask, temperature=1.0, tail=tail)
    return _reduce(values, reduction, student_logits)


def cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor, *, reduction: Reduction = "mean") -> torch.Tensor:
    """Cross-entropy of the student on the (pre-shifted) labels, over positions whose label is not -100."""
    rows = labels != IGNORE_INDEX
    values = F.cross_entropy(_select(student_logits, rows), _select(labels, rows), reduction="none")
    return _reduce(values, reduction, student_logits)


def kd_loss(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    topk_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    tail: Tail = "bucket",
) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels), each a mean over its positions.

    Shapes: logits [..., V]; topk_ids / topk_logprobs [..., k]; topk_mask and labels [...] (labels already
    aligned with the logits). The KL term averages over positions with `topk_mask` set and at least one
    present slot; the tail mass outside the top-k is handled as the module docstring's `tail` method says.
    T^2 keeps the soft term's gradient scale independent of T (Hinton et al., 2015).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    total = student_logits.new_zeros(())
    if alpha > 0.0:
        kl = _positionwise_kl(student_logits, topk_ids, topk_logprobs, topk_mask, temperature=temperature, tail=tail)
        total = total + alpha * temperature**2 * _reduce(kl, "mean", student_logits)
    if alpha < 1.0:
        total = total + (1.0 - alpha) * cross_entropy(student_logits, labels)
    return total
