"""Teachers: named OpenAI-compatible endpoints, their client, health and response parsing."""
