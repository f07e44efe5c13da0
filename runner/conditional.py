"""Conditional requests for per-entity sources: a reply's `ETag` / `Last-Modified` is kept per
(source, entity) in `syncrun_validators`, written in the same transaction as the entity's rows and
status stamp; the next request for the entity sends `If-None-Match` / `If-Modified-Since`, and a
`304 Not Modified` is the entity's `unchanged` outcome: status stamped, no row rewritten.

On by default for sources that make one request per entity (no pagination, no batch); `request.
conditional: false` turns it off. A paged entity's first-page validator says nothing of the other
pages, and a batched reply's validator covers several entities: those never send validators.

Validators are data from outside: a value over MAX_VALIDATOR characters, or with anything but
printable ASCII and tabs (a CR/LF would split a header), is not kept; nor is one holding a secret
or a piece of one (an API echoing the access token into an ETag): nothing of a secret is stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from runner.client import Reply
from runner.expressions import JSON
from runner.spec import Outcome, PaginationType, SelectionType, Source

__all__ = ["MAX_VALIDATOR", "Store", "Validators", "enabled", "kept", "write"]

MAX_VALIDATOR = 1024  # characters; a longer ETag or Last-Modified is not kept (and so never sent)
_TEXT = re.compile(r"[\t\x20-\x7e]+")  # a header value we would send (fetch._HEADER_TEXT, not empty)
NOT_ASKED = (
    "HTTP 304 Not Modified, but no validator was sent for this entity (If-None-Match/If-Modified-Since):"
    " the server is confused; nothing written"
)


@dataclass(frozen=True, slots=True)
class Validators:
    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        sent = {"If-None-Match": self.etag, "If-Modified-Since": self.last_modified}
        return {name: value for name, value in sent.items() if value is not None}

    def __bool__(self) -> bool:
        return self.etag is not None or self.last_modified is not None


def enabled(source: Source) -> bool:
    """Whether the source sends and keeps validators: per-entity, one request each, not turned off."""
    return (
        source.request.conditional is not False
        and source.entities.type is not SelectionType.LIST
        and source.pagination.type is PaginationType.NONE
        and source.request.batch is None
    )


def clean(value: str | None) -> str | None:
    """The validator as we would send it back; None when absent, empty, too long or not header text."""
    if value is None:
        return None
    value = value.strip(" \t")
    if len(value) > MAX_VALIDATOR or not _TEXT.fullmatch(value):
        return None
    return value


def kept(reply: Reply, redact: Callable[[str], str] = str) -> Validators:
    """What a 2xx reply says to keep (nothing usable: the stored ones are cleared); `redact` is the
    run's redactor: a validator it would change holds a secret, and is not kept."""
    etag, modified = clean(reply.headers.get("etag")), clean(reply.headers.get("last-modified"))
    return Validators(*(None if value is None or redact(value) != value else value for value in (etag, modified)))


class Store:
    """The validators of the entities a run is about to fetch, loaded chunk by chunk as selected."""

    def __init__(self, source: Source) -> None:
        self.source, self.enabled = source, enabled(source)
        self.known: dict[str, Validators] = {}

    def attach(
        self, conn: psycopg.Connection[Any] | None, chunks: Iterator[list[dict[str, JSON]]]
    ) -> Iterator[list[dict[str, JSON]]]:
        """The chunks as they are, each one's stored validators loaded (on the selection's connection)
        before it is handed to the fetchers."""
        key = self.source.entities.key
        for chunk in chunks:
            if self.enabled and conn is not None and chunk:
                self.known.update(load(conn, self.source.name, [str(entity[key]) for entity in chunk]))
            yield chunk

    def headers(self, entity: Mapping[str, JSON]) -> dict[str, str]:
        """The conditional headers for this entity's request ({} when it has no validator)."""
        found = self.known.get(str(entity.get(self.source.entities.key))) if self.enabled else None
        return found.headers() if found else {}

    def asked(self, entity: Mapping[str, JSON]) -> bool:
        return bool(self.headers(entity))


def load(conn: psycopg.Connection[Any], source: str, keys: list[str]) -> dict[str, Validators]:
    with conn.transaction():  # autocommit is off: never leave the selection's connection idle in one
        rows = conn.execute(
            "select entity_key, etag, last_modified from syncrun_validators where source = %s and entity_key = any(%s)",
            (source, keys),
        ).fetchall()
    return {str(key): Validators(clean(etag), clean(modified)) for key, etag, modified in rows}


_KEEP = """insert into syncrun_validators as v (source, entity_key, etag, last_modified, updated_at)
select %(source)s::text, k.key, k.etag, k.modified, now()
from unnest(%(keys)s::text[], %(etags)s::text[], %(modified)s::text[]) as k(key, etag, modified)
on conflict (source, entity_key) do update set
    etag = excluded.etag, last_modified = excluded.last_modified, updated_at = now()"""
_DROP = "delete from syncrun_validators where source = %(source)s and entity_key = any(%(keys)s::text[])"


def write(cursor: psycopg.Cursor[Any], source: Source, batch: list[Any]) -> None:
    """Keep the validators of the batch's successes (clearing them when a reply had none), drop those of
    deleted entities; an unchanged, skipped or failed entity keeps what it had. Called by the writer
    inside the batch's transaction, after the rows and the status stamp."""
    if not enabled(source):
        return
    latest: dict[str, Validators | None] = {}
    for result in batch:  # last wins, like rows
        if result.outcome is Outcome.SUCCESS and result.validators is not None:
            latest[str(result.key)] = result.validators
        elif result.outcome is Outcome.DELETE:
            latest[str(result.key)] = None
    keep = {key: v for key, v in sorted(latest.items()) if v}
    drop = [key for key, v in sorted(latest.items()) if not v]
    if keep:
        cursor.execute(
            _KEEP,
            {
                "source": source.name,
                "keys": list(keep),
                "etags": [v.etag for v in keep.values()],
                "modified": [v.last_modified for v in keep.values()],
            },
        )
    if drop:
        cursor.execute(_DROP, {"source": source.name, "keys": drop})
