"""Loopback HTTP server fixtures (see tests/conftest.py)."""
