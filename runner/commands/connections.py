"""What the redactor must mask of the database and Redis URLs, besides the `${secret.*}` values."""

from __future__ import annotations

from collections.abc import Mapping

from runner import database, ratelimit


def secrets(environ: Mapping[str, str], dsn: str | None) -> tuple[list[str], list[str]]:
    """The DATABASE_URL and SYNCRUN_REDIS_URL passwords (every form), and those URLs whole when they
    have one: what the redactor must mask besides the `${secret.*}` values."""
    urls = [url for url in (dsn, ratelimit.redis_url_from_env(environ)) if url and database.passwords(url)]
    return [p for url in urls for p in database.passwords(url)], urls
