"""Log output: readable text or one JSON object per line, always passed through the redactor.

Every record goes through `_Redacting`, so a secret that slips into a message (an API echoing a
token, an exception text with a DSN) is masked before it reaches a terminal or a CI log.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from runner.redaction import Redactor

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _Redacting(logging.Filter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        for name, value in _extras(record).items():
            if isinstance(value, str):
                setattr(record, name, self.redact(value))
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        return f"{stamp} {record.levelname.lower():7} {record.getMessage()}" + (f" {extras}" if extras else "")


class _GitHub(_Text):
    """Text, with warnings and errors as GitHub Actions annotations (`::warning::`, `::error::`)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if record.levelno >= logging.ERROR:
            return "::error::" + line
        if record.levelno >= logging.WARNING:
            return "::warning::" + line
        return line


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
            **_extras(record),
        }
        return json.dumps(document, default=str)


def configure(fmt: str, redact: Redactor, *, level: int = logging.INFO) -> None:
    """Send syncrun's log to stderr in `fmt` ("text", "json" or "github"), redacting every record."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter({"json": _Json, "github": _GitHub}.get(fmt, _Text)())
    handler.addFilter(_Redacting(redact))
    logger = logging.getLogger("syncrun")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
