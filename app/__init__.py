"""Distillery: a service that queries teacher LLMs and keeps their top-k logprobs as distillation data."""

__version__ = "0.1.0"
