"""syncrun: keep a PostgreSQL warehouse fresh from rate-limited HTTP APIs, one YAML file per source."""

__version__ = "0.1.0"
