"""Trains a small student on a Distillery Parquet export (CPU) and reports held-out KL to the teacher and CE.

    python examples/train_student.py --data job.parquet --steps 400 --time-limit 60 --alpha 0.9

Rows are split into train and held-out by a hash of (job_id, item_id), so a prompt's samples stay on one
side and the split is the same on every run; `--val` uses separate files as the held-out set instead. The
held-out scores are measured before and after training, per token: KL(teacher || student) at T = 1 on the
teacher's top-k plus a tail bucket ("kl"; see distillery_student/loss.py), the same KL renormalized over the top-k
("kl_topk"), and the cross-entropy on the sampled tokens ("ce").
The last line printed is that report as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from distillery_student.data import DistillationDataset, Example, collate, split_by_prompt
from distillery_student.loss import TAILS, Tail, cross_entropy, kd_loss, kl_to_teacher
from distillery_student.model import StudentSpec, TeacherVocab, build_student, parameter_count, teacher_vocab


@dataclass
class TrainConfig:
    """Everything a run depends on; the defaults suit the tiny teacher on 2 CPU cores."""

    data: list[Path]
    val: list[Path] = field(default_factory=list)
    val_fraction: float = 0.1
    teacher_dir: Path | None = None
    vocab_size: int | None = None
    steps: int = 400
    time_limit: float = 90.0
    temperature: float = 1.0
    alpha: float = 0.9
    tail: Tail = "bucket"
    batch_size: int = 16
    eval_batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_length: int | None = 512
    seed: int = 0
    threads: int | None = None
    spec: StudentSpec = field(default_factory=StudentSpec)


@dataclass(frozen=True)
class Scores:
    """Held-out scores per generated token: KL with the tail bucket, KL renormalized over the top-k, and CE."""

    kl: float
    kl_topk: float
    ce: float
    tokens: int


def _vocab(config: TrainConfig, dataset: DistillationDataset) -> TeacherVocab:
    """The teacher's vocabulary: from --vocab-size, else the teacher folder, else the tiny teacher's cache."""
    if config.vocab_size is not None:
        vocab = TeacherVocab(vocab_size=config.vocab_size)
    else:
        folder = config.teacher_dir
        if folder is None:
            from distillery_tools.tiny_teacher import default_cache_dir
            from distillery_tools.tiny_teacher.build import tiny_teacher_dir

            folder = tiny_teacher_dir(default_cache_dir(), 0)
        vocab = teacher_vocab(folder)
    if dataset.max_token_id() >= vocab.vocab_size:
        raise ValueError(f"the data holds token id {dataset.max_token_id()} >= vocab size {vocab.vocab_size}")
    return vocab


def _batches(dataset: Dataset[Example], size: int, pad_id: int) -> Iterator[Example]:
    """The dataset in order, collated in batches of `size`."""
    n = len(dataset)  # type: ignore[arg-type]
    for start in range(0, n, size):
        yield collate([dataset[i] for i in range(start, min(n, start + size))], pad_id)


def _training_batches(dataset: Dataset[Example], size: int, pad_id: int, seed: int) -> Iterator[Example]:
    """Endless shuffled epochs (a fixed generator, so a run is repeatable)."""
    generator = torch.Generator().manual_seed(seed)
    n = len(dataset)  # type: ignore[arg-type]
    full_batches = max(1, n // size)  # a short last batch is dropped (unless it is the only one)
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, full_batches * size, size):
            yield collate([dataset[i] for i in order[start : start + size]], pad_id)


def _logits(model: Any, batch: Example) -> torch.Tensor:
    """The student's logits [B, L, V] for a collated batch."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return out.logits  # type: ignore[no-any-return]


@torch.no_grad()
def evaluate(model: Any, dataset: Dataset[Example], *, batch_size: int, pad_id: int) -> Scores:
    """Per-token KL(teacher || student) at T = 1 and CE on the labels over a whole dataset."""
    was_training = model.training
    model.eval()
    sums = {"kl": 0.0, "kl_topk": 0.0, "ce": 0.0}
    counts = dict.fromkeys(sums, 0)
    for batch in _batches(dataset, batch_size, pad_id):
        logits = _logits(model, batch)
        targets = (batch["topk_ids"], batch["topk_logprobs"], batch["topk_mask"])
        values = {
            "kl": kl_to_teacher(logits, *targets, tail="bucket", reduction="none"),
            "kl_topk": kl_to_teacher(logits, *targets, tail="renormalize", reduction="none"),
            "ce": cross_entropy(logits, batch["labels"], reduction="none"),
        }
        for name, value in values.items():
            sums[name] += float(value.sum())
            counts[name] += value.numel()
    model.train(was_training)
    means = {name: sums[name] / max(counts[name], 1) for name in sums}
    return Scores(kl=means["kl"], kl_topk=means["kl_topk"], ce=means["ce"], tokens=counts["ce"])


def _lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak over `steps`."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    frac = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def _split(config: TrainConfig) -> tuple[DistillationDataset, Dataset[Example], Dataset[Example], int, int]:
    """The training data and the held-out set (separate files, or a prompt-hash split of the data)."""
    data = DistillationDataset(config.data, max_length=config.max_length)
    if config.val:
        val = DistillationDataset(config.val, max_length=config.max_length)
        return data, data, val, len(data), len(val)
    train_idx, val_idx = split_by_prompt(data.keys, config.val_fraction)
    if not train_idx or not val_idx:
        raise ValueError(f"the split left {len(train_idx)} training and {len(val_idx)} held-out rows")
    return data, Subset(data, train_idx), Subset(data, val_idx), len(train_idx), len(val_idx)


def train_student(config: TrainConfig, *, log: Any = None) -> dict[str, Any]:
    """Builds the student, scores it on held-out rows, trains it with kd_loss, scores it again; returns a report.

    `threads` pins torch's intra-op threads for the run (restored afterwards): on a shared or busy CPU one
    thread avoids OpenMP oversubscription, which slowed this small model's steps several times over.
    """
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _train_student(config, log)
    finally:
        torch.set_num_threads(previous_threads)


def _train_student(config: TrainConfig, log: Any) -> dict[str, Any]:
    """The body of train_student, with torch's thread count already set."""
    torch.manual_seed(config.seed)
    data, train_set, val_set, n_train, n_val = _split(config)
    vocab = _vocab(config, data)
    model = build_student(vocab, config.spec, seed=config.seed)
    pad_id = vocab.pad_token_id

    def say(message: str) -> None:
        if log is not None:
            log(message)

    before = evaluate(model, val_set, batch_size=config.eval_batch_size, pad_id=pad_id)
    say(f"before: held-out KL {before.kl:.4f}, CE {before.ce:.4f} over {before.tokens} tokens")

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, betas=(0.9, 0.95), weight_decay=config.weight_decay
    )
    model.train()
    started = time.monotonic()
    step, loss_value = 0, float("nan")
    batches = _training_batches(train_set, config.batch_size, pad_id, config.seed)
    while step < config.steps and time.monotonic() - started < config.time_limit:
        batch = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        logits = _logits(model, batch)
        loss = kd_loss(
            logits,
            batch["topk_ids"],
            batch["topk_logprobs"],
            batch["topk_mask"],
            batch["labels"],
            temperature=config.temperature,
            alpha=config.alpha,
            tail=config.tail,
        )
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        loss_value = float(loss.detach())
        if step % 50 == 0:
            say(f"step {step}: loss {loss_value:.4f} ({time.monotonic() - started:.1f} s)")
    train_seconds = time.monotonic() - started

    after = evaluate(model, val_set, batch_size=config.eval_batch_size, pad_id=pad_id)
    say(f"after {step} steps in {train_seconds:.1f} s: held-out KL {after.kl:.4f}, CE {after.ce:.4f}")
    return {
        "train_rows": n_train,
        "val_rows": n_val,
        "val_tokens": after.tokens,
        "k": data.k,
        "vocab_size": vocab.vocab_size,
        "parameters": parameter_count(model),
        "threads": torch.get_num_threads(),
        "steps": step,
        "train_seconds": round(train_seconds, 3),
        "final_loss": loss_value,
        "temperature": config.temperature,
        "alpha": config.alpha,
        "tail": config.tail,
        "before": asdict(before),
        "after": asdict(after),
        "kl_reduction": 1.0 - after.kl / before.kl if before.kl > 0 else 0.0,
        "ce_reduction": 1.0 - after.ce / before.ce if before.ce > 0 else 0.0,
    }


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """The command line as a TrainConfig."""
    defaults = TrainConfig(data=[])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="Parquet export(s) to train on")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--val", type=Path, nargs="+", default=[], help="held-out Parquet file(s)")
    group.add_argument("--val-fraction", type=float, default=defaults.val_fraction, help="held-out share of prompts")
    parser.add_argument("--teacher-dir", type=Path, help="teacher model folder (default: the tiny teacher's cache)")
    parser.add_argument("--vocab-size", type=int, help="teacher vocabulary size, instead of --teacher-dir")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--time-limit", type=float, default=defaults.time_limit, help="seconds of training at most")
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--alpha", type=float, default=defaults.alpha, help="weight of the KD term (1 - alpha: CE)")
    parser.add_argument("--tail", choices=TAILS, default=defaults.tail)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--max-length", type=int, default=defaults.max_length)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)
    return TrainConfig(
        data=args.data,
        val=args.val,
        val_fraction=args.val_fraction,
        teacher_dir=args.teacher_dir,
        vocab_size=args.vocab_size,
        steps=args.steps,
        time_limit=args.time_limit,
        temperature=args.temperature,
        alpha=args.alpha,
        tail=args.tail,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_length=args.max_length,
        seed=args.seed,
        threads=args.threads,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one training and prints progress, then the report as JSON on the last line."""
    report = train_student(parse_args(argv), log=print)
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
