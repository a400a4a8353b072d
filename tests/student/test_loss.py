"""kd_loss against numbers worked out by hand, gradcheck, missing slots, and the alpha and tail options."""

from __future__ import annotations

import math

import pytest
import torch

from distillery_student.loss import cross_entropy, kd_loss, kl_to_teacher

# One position, vocabulary 5, k = 2. Student logits log([1, 2, 3, 2, 2]): probabilities [.1, .2, .3, .2, .2].
# Teacher top-2: id 2 with p = 0.5, id 1 with p = 0.25, so a tail of 0.25 outside {2, 1}.
# Student on the buckets ({2}, {1}, tail {0, 3, 4}): [.3, .2, .5]. The label (sampled token) is 2.
LOGITS = [[math.log(1.0), math.log(2.0), math.log(3.0), math.log(2.0), math.log(2.0)]]
IDS = [[2, 1]]
LOGPROBS = [[math.log(0.5), math.log(0.25)]]

# KL at T = 1: .5 ln(.5/.3) + .25 ln(.25/.2) + .25 ln(.25/.5)
#            = .5 * 0.5108256 + .25 * 0.2231436 + .25 * (-0.6931472) = 0.1379119
KL_T1 = 0.1379119
# CE: -ln .3 = 1.2039728
CE = 1.2039728
# T = 2 tempers both bucket distributions, b ** (1/2) renormalized:
#   teacher sqrt([.5, .25, .25]) = [.7071068, .5, .5] / 1.7071068 = [.4142136, .2928932, .2928932]
#   student sqrt([.3, .2, .5])   = [.5477226, .4472136, .7071068] / 1.7020429 = [.3218030, .2627511, .4154459]
#   KL = .4142136 ln(.4142136/.3218030) + .2928932 ln(.2928932/.2627511) + .2928932 ln(.2928932/.4154459)
#      = .4142136 * 0.2524421 + .2928932 * 0.1086010 + .2928932 * (-0.3495443) = 0.0339943
# times T^2 = 4: 0.1359771
KD_T2 = 0.1359771
# Renormalized over the top-2: teacher [2/3, 1/3], student [.3, .2] / .5 = [.6, .4]:
#   KL = 2/3 ln((2/3)/.6) + 1/3 ln((1/3)/.4) = 2/3 * 0.1053605 + 1/3 * (-0.1823216) = 0.0094665
KL_RENORM = 0.0094665


def example(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """The hand-worked example as batch 1, length 1 tensors."""
    logits = torch.tensor([LOGITS], dtype=dtype)
    ids = torch.tensor([IDS])
    logprobs = torch.tensor([LOGPROBS], dtype=dtype)
    mask = torch.tensor([[True]])
    labels = torch.tensor([[2]])
    return logits, ids, logprobs, mask, labels


def test_kl_and_ce_match_the_hand_computed_values() -> None:
    logits, ids, logprobs, mask, labels = example()
    assert kl_to_teacher(logits, ids, logprobs, mask).item() == pytest.approx(KL_T1, abs=1e-6)
    assert cross_entropy(logits, labels).item() == pytest.approx(CE, abs=1e-6)
    mixed = kd_loss(logits, ids, logprobs, mask, labels, temperature=1.0, alpha=0.5)
    assert mixed.item() == pytest.approx(0.5 * KL_T1 + 0.5 * CE, abs=1e-6)


def test_temperature_tempers_both_bucket_distributions_and_scales_by_t_squared() -> None:
    logits, ids, logprobs, mask, labels = example()
    loss = kd_loss(logits, ids, logprobs, mask, labels, temperature=2.0, alpha=1.0)
    assert loss.item() == pytest.approx(KD_T2, abs=1e-6)
    mixed = kd_loss(logits, ids, logprobs, mask, labels, temperature=2.0, alpha=0.25)
    assert mixed.item() == pytest.approx(0.25 * KD_T2 + 0.75 * CE, abs=1e-6)


def test_renormalize_tail_matches_the_hand_computed_value() -> None:
    logits, ids, logprobs, mask, _ = example()
    assert kl_to_teacher(logits, ids, logprobs, mask, tail="renormalize").item() == pytest.approx(KL_RENORM, abs=1e-6)


def test_kl_is_zero_when_the_student_is_the_teacher() -> None:
    probs = torch.tensor([[[0.05, 0.25, 0.5, 0.1, 0.1]]], dtype=torch.float64)
    ids = torch.tensor([[[2, 1, 3]]])
    logprobs = probs.log().gather(-1, ids)
    mask = torch.tensor([[True]])
    for tail in ("bucket", "renormalize"):
        assert kl_to_teacher(probs.log(), ids, logprobs, mask, tail=tail).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_gradcheck_with_respect_to_student_logits(tail: str, temperature: float) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    ids = torch.tensor([[[4, 0, 2], [1, 5, -1], [0, 1, 2]], [[6, 3, -1], [2, 4, 5], [3, 3, 3]]])
    teacher = torch.randn(2, 3, 7, dtype=torch.float64, generator=generator).log_softmax(-1)
    logprobs = teacher.gather(-1, ids.clamp(min=0)).masked_fill(ids < 0, float("-inf"))
    mask = torch.tensor([[True, True, False], [True, True, False]])
    labels = torch.tensor([[4, 1, -100], [6, 2, -100]])

    def loss(x: torch.Tensor) -> torch.Tensor:
        return kd_loss(x, ids, logprobs, mask, labels, temperature=temperature, alpha=0.7, tail=tail)  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(loss, (logits,))


def test_missing_slots_and_unmasked_positions_are_ignored() -> None:
    logits, ids, logprobs, mask, labels = example()
    want = kd_loss(logits, ids, logprobs, mask, labels, temperature=1.5, alpha=0.8)
    # A third slot marked missing (id -1, logprob -inf), as chat stores it, changes nothing.
    ids3 = torch.cat([ids, torch.tensor([[[-1]]])], -1)
    lps3 = torch.cat([logprobs, torch.full((1, 1, 1), float("-inf"), dtype=torch.float64)], -1)
    # So does a second position without teacher targets, whatever garbage it holds, and with label -100.
    logits2 = torch.cat([logits, torch.tensor([[[9.0, -3.0, 0.5, 7.0, 1.0]]], dtype=torch.float64)], 1)
    ids2 = torch.cat([ids3, torch.tensor([[[3, 0, 4]]])], 1)
    lps2 = torch.cat([lps3, torch.tensor([[[0.0, -1.0, float("nan")]]], dtype=torch.float64)], 1)
    mask2 = torch.tensor([[True, False]])
    labels2 = torch.tensor([[2, -100]])
    logits2.requires_grad_(True)
    got = kd_loss(logits2, ids2, lps2, mask2, labels2, temperature=1.5, alpha=0.8)
    assert got.item() == pytest.approx(want.item(), abs=1e-12)
    torch.autograd.backward(got)
    assert logits2.grad is not None
    assert torch.isfinite(logits2.grad).all() and torch.all(logits2.grad[0, 1] == 0)


def test_a_missing_slot_joins_the_tail_bucket() -> None:
    # With id 1 missing, the teacher's known mass is .5 (id 2) and the tail {0, 1, 3, 4} holds .5 for both.
    logits, _, _, mask, _ = example()
    ids = torch.tensor([[[2, -1]]])
    logprobs = torch.tensor([[[math.log(0.5), float("-inf")]]], dtype=torch.float64)
    # .5 ln(.5/.3) + .5 ln(.5/.7) = .5 * 0.5108256 + .5 * (-0.3364722) = 0.0871767
    assert kl_to_teacher(logits, ids, logprobs, mask).item() == pytest.approx(0.0871767, abs=1e-6)


def test_alpha_zero_is_plain_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 11, generator=generator)
    ids = torch.randint(0, 11, (2, 4, 3), generator=generator)
    logprobs = torch.randn(2, 4, 3, generator=generator) - 3.0
    mask = torch.ones(2, 4, dtype=torch.bool)
    labels = torch.tensor([[-100, 3, 4, 5], [1, 2, -100, -100]])
    loss = kd_loss(logits, ids, logprobs, mask, labels, temperature=2.0, alpha=0.0)
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), ignore_index=-100)
    assert torch.allclose(loss, want)


def test_no_targets_gives_zero_not_nan() -> None:
    logits = torch.randn(1, 3, 5, requires_grad=True)
    ids = torch.zeros(1, 3, 2, dtype=torch.int64)
    logprobs = torch.zeros(1, 3, 2)
    loss = kd_loss(
        logits, ids, logprobs, torch.zeros(1, 3, dtype=torch.bool), torch.full((1, 3), -100), temperature=1.0, alpha=0.5
    )
    torch.autograd.backward(loss)
    assert loss.item() == 0.0 and logits.grad is not None and torch.all(logits.grad == 0)


def test_rejects_bad_arguments() -> None:
    logits, ids, logprobs, mask, labels = example()
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(logits, ids, logprobs, mask, labels, temperature=1.0, alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(logits, ids, logprobs, mask, labels, temperature=0.0, alpha=0.5)
    with pytest.raises(ValueError, match="tail"):
        kd_loss(logits, ids, logprobs, mask, labels, temperature=1.0, alpha=0.5, tail="guess")  # type: ignore[arg-type]
