"""OpenAI-compatible files: uploads kept on disk, listed, read back and deleted per project."""
