"""Tooling beside the service: the tiny CPU teacher (build and serve), the demo, and running the service as a
process (tests and benchmarks). Nothing in app/ needs it, except the CLI commands that start these tools."""
