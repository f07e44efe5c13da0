"""Shared fixtures live in plain modules by concern: tests/pg.py (PostgreSQL), tests/apiserver.py (HTTP)."""

pytest_plugins = ["tests.pg", "tests.apiserver"]
