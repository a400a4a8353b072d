"""Which rows of a build go into the dataset, and into which split: filters, de-duplication of prompts (an
on-disk ledger, so memory never holds the dataset's prompts) and a split by a hash of each prompt's identity."""

from __future__ import annotations

import hashlib
import uuid

import orjson

from app.datasets import repository
from app.datasets.schemas import DatasetFilters, SplitName, SplitSettings
from app.exporters.rows import ExportRow

SPLITS: tuple[SplitName, ...] = ("train", "validation")


def prompt_digest(row: ExportRow) -> bytes:
    """A prompt's identity for de-duplication: its text, or its messages as canonical JSON."""
    if row.prompt is not None:
        return hashlib.sha256(b"p\0" + row.prompt.encode()).digest()
    return hashlib.sha256(b"m\0" + orjson.dumps(row.messages, option=orjson.OPT_SORT_KEYS)).digest()


def split_of(seed: str, job_id: uuid.UUID, item_id: int, validation_fraction: float) -> SplitName:
    """Train or validation from a hash of the prompt's identity (see SPLIT_HASH): stable across builds."""
    digest = hashlib.sha256(f"{seed}\0{job_id}\0{item_id}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < validation_fraction else "train"


def passes(row: ExportRow, filters: DatasetFilters) -> bool:
    """Whether the row meets every given filter other than de-duplication."""
    if filters.finish_reasons is not None and row.finish_reason not in filters.finish_reasons:
        return False
    tokens = row.arrays.num_tokens
    if filters.min_tokens is not None and tokens < filters.min_tokens:
        return False
    if filters.max_tokens is not None and tokens > filters.max_tokens:
        return False
    if filters.metadata:
        meta = row.metadata or {}
        return all(key in meta and meta[key] == value for key, value in filters.metadata.items())
    return True


class RowSelector:
    """Filters rows, drops later copies of a prompt if asked, and assigns each kept row its split."""

    def __init__(self, filters: DatasetFilters, split: SplitSettings) -> None:
        self.filters = filters
        self.split = split
        self.ledger = repository.PromptLedger() if filters.drop_duplicate_prompts else None

    def select(self, rows: list[ExportRow]) -> dict[SplitName, list[ExportRow]]:
        kept = [r for r in rows if passes(r, self.filters)]
        if self.ledger is not None:
            kept = self._first_copies(kept)
        out: dict[SplitName, list[ExportRow]] = {name: [] for name in SPLITS}
        fraction, seed = self.split.validation_fraction, self.split.seed
        for row in kept:
            out[split_of(seed, row.job_id, row.item_id, fraction) if fraction > 0 else "train"].append(row)
        return out

    def _first_copies(self, rows: list[ExportRow]) -> list[ExportRow]:
        assert self.ledger is not None
        digests = [prompt_digest(r) for r in rows]
        owners = self.ledger.owners(digests)
        claims: list[tuple[bytes, str]] = []
        kept: list[ExportRow] = []
        for row, digest in zip(rows, digests, strict=True):
            me = f"{row.job_id}:{row.item_id}"
            owner = owners.get(digest)
            if owner is None:
                owners[digest] = me
                claims.append((digest, me))
            if owners[digest] == me:
                kept.append(row)
        self.ledger.claim(claims)
        return kept

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
