"""A tiny Llama teacher built locally from the Python stdlib, and the command that serves it with vLLM."""

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """Where built tiny teachers are kept across runs: $DISTILLERY_CACHE_DIR or ~/.cache/distillery."""
    return Path(os.environ.get("DISTILLERY_CACHE_DIR") or Path.home() / ".cache" / "distillery")
