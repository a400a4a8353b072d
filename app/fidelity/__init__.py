"""The codec fidelity report: what each top-k codec costs in bytes and in error, on a job's own data."""
