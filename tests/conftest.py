"""Shared fixtures live in plain modules by concern: tests/pg.py (PostgreSQL), tests/apiserver.py (HTTP),
tests/cluster.py (a private PostgreSQL cluster)."""

pytest_plugins = ["tests.pg", "tests.apiserver", "tests.cluster"]
