"""Deployment tests use `empty_postgres` from tests/conftest.py."""
