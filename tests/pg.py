"""PostgreSQL fixtures (see tests/conftest.py)."""
