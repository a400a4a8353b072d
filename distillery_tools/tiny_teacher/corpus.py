"""Deterministic local training text: the running interpreter's stdlib .py files, capped in size."""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
"""Corpus cap; keeps tokenizer training fast and the corpus identical from run to run."""

SKIPPED_DIR_NAMES = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "_bundled"}
)
"""Directory names whose contents are skipped (test suites, third-party packages, caches)."""


def stdlib_dir() -> Path:
    """The pure-Python standard library directory of the running interpreter (not the venv)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_paths(root: Path | None = None) -> list[Path]:
    """All .py files under the stdlib dir, sorted by relative path, skipping test and package dirs."""
    base = root if root is not None else stdlib_dir()
    found: list[Path] = []
    for path in base.rglob("*.py"):
        rel = path.relative_to(base)
        if any(part in SKIPPED_DIR_NAMES for part in rel.parts[:-1]):
            continue
        if path.is_file():
            found.append(path)
    found.sort(key=lambda p: p.relative_to(base).as_posix())
    return found


def collect_corpus(max_bytes: int = DEFAULT_MAX_BYTES, root: Path | None = None) -> list[str]:
    """Whole UTF-8 source files, in sorted path order, until adding the next one would pass max_bytes."""
    docs: list[str] = []
    total = 0
    for path in stdlib_source_paths(root):
        raw = path.read_bytes()
        if not raw.strip():
            continue
        if total + len(raw) > max_bytes:
            break
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        docs.append(text)
        total += len(raw)
    if not docs:
        raise RuntimeError(f"no stdlib sources found under {root or stdlib_dir()}")
    return docs


def corpus_digest(docs: list[str]) -> str:
    """SHA-256 over the documents (length-prefixed) so a build can record exactly what it trained on."""
    digest = hashlib.sha256()
    for doc in docs:
        data = doc.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()
