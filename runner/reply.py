"""`Reply`: one HTTP response as the rest of syncrun sees it (read, decoded, closed), and `describe`, its
bounded description for messages. Below client, fetch, outcomes, pagination: they all speak of replies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from runner.expressions import JSON

EXCERPT = 200  # bytes of the body kept in Reply.raw for messages


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """One HTTP response, read and closed. `body` is the decoded JSON, or None when it is not JSON."""

    status: int
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    body: JSON
    raw: bytes  # the first EXCERPT bytes, for messages
    url: str  # redacted
    elapsed: float  # seconds from the rate-limit grant to the end of the body
    content_type: str  # media type, lower-case, without parameters ("" when absent)
    problem: str = ""  # why `body` is None although bytes arrived ("" for a plain non-JSON page)


def describe(reply: Reply) -> str:
    """What arrived, for messages: `HTTP 200 text/html: '<html><body>oops'`, and why it is not
    usable JSON when the client said (`... ('JSON nested 2,000 levels deep, more than 128')`)."""
    text = reply.raw.decode("utf-8", "replace")
    text = text if len(text) <= 80 else text[:80] + "…"  # the mark lets the redactor mask a secret cut here
    kind = reply.content_type or "(no content type)"
    what = f"HTTP {reply.status} {kind}: {text!r}" if text else f"HTTP {reply.status} {kind}: (empty body)"
    return f"{what} ({reply.problem})" if reply.problem else what
