"""Fixtures for the reliability tests (the anyio backend comes from tests/conftest.py)."""
