"""OpenAI-compatible batches: a JSONL file of requests run as one Distillery job."""
