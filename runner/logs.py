"""Log output: readable text or one JSON object per line, always passed through the redactor.

Every record goes through `_Redacting`, so a secret that slips into a message (an API echoing a
token, an exception text with a DSN) is masked before it reaches a terminal or a CI log. A text
record is one line: control characters in it (an entity key's CR/LF, an API's ESC) are escaped, so
they cannot forge log lines or terminal output.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from runner.redaction import Redactor

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_configured: list[Redactor] = [Redactor()]  # see redactor()
_OURS = "_syncrun_redacting"  # marks the root handler `configure` adds, so a second call replaces it
# C0, DEL and C1 controls as repr writes them; also the Unicode line and paragraph separators and the
# bidi embeddings, overrides and isolates, which reorder or break a line as a terminal shows it.
_ESCAPED = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))} | {
    0x09: "\\t",
    0x0A: "\\n",
    0x0D: "\\r",
    **{code: f"\\u{code:04x}" for code in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))},
}


def printable(text: str) -> str:
    """`text` on one line: control characters escaped (`\\n`, `\\r`, `\\x1b`), everything else as it is."""
    return text.translate(_ESCAPED)


class _Redacting(logging.Filter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        # getMessage() applies the %-args (reprs included) first, so the finished text is redacted.
        record.msg = self.redact(record.getMessage())
        record.args = None
        for name, value in _extras(record).items():
            setattr(record, name, self._extra(value))
        # A traceback or stack is never printed by our formatters, but a handler added later could.
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True

    def _extra(self, value: Any) -> Any:
        """An extra field, redacted before it is formatted: strings inside dicts and lists one by one
        (so JSON escaping cannot hide a secret), anything else as the text it would print as."""
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str | dict | list | tuple):
            return self.redact.value(value)
        return self.redact(str(value))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        line = f"{stamp} {record.levelname.lower():7} {record.getMessage()}" + (f" {extras}" if extras else "")
        return printable(line)


class _GitHub(_Text):
    """Text, with warnings and errors as GitHub Actions annotations (`::warning::`, `::error::`)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        # The runner decodes %25, %0D and %0A in an annotation's message: a key holding "%0A::error::"
        # would otherwise become a second, forged annotation line (review2 N2)
        if record.levelno >= logging.ERROR:
            return "::error::" + line.replace("%", "%25")
        if record.levelno >= logging.WARNING:
            return "::warning::" + line.replace("%", "%25")
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


def redactor() -> Redactor:
    """The redactor of the last `configure` (an empty one before): the command line's last words (a
    run failure, an internal error's traceback) go through it as the log does."""
    return _configured[0]


def configure(fmt: str, redact: Redactor, *, level: int = logging.INFO) -> None:
    """Send syncrun's log to stderr in `fmt` ("text", "json" or "github"), redacting every record."""
    _configured[0] = redact
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter({"json": _Json, "github": _GitHub}.get(fmt, _Text)())
    handler.addFilter(_Redacting(redact))
    logger = logging.getLogger("syncrun")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    # Other libraries' warnings (asyncio's "exception was never retrieved", httpx, psycopg) would reach
    # stderr unredacted through logging's last-resort handler; they go through the redactor too.
    root = logging.getLogger()
    root.handlers[:] = [handler_ for handler_ in root.handlers if not getattr(handler_, _OURS, False)]
    fallback = logging.StreamHandler(sys.stderr)
    fallback.setFormatter(handler.formatter)
    fallback.addFilter(_Redacting(redact))
    fallback.setLevel(logging.WARNING)
    setattr(fallback, _OURS, True)
    root.addHandler(fallback)
