"""Conditional requests for per-entity sources: a reply's `ETag` / `Last-Modified` is kept per
(source, entity) in `syncrun_validators`, written in the same transaction as the entity's rows and
status stamp; the next request for the entity sends `If-None-Match` / `If-Modified-Since`, and a
`304 Not Modified` is the entity's `unchanged` outcome: status stamped, no row rewritten.

On by default for sources that make one request per entity (no pagination, no batch); `request.
conditional: false` turns it off. A paged entity's first-page validator says nothing of the other
pages, and a batched reply's validator covers several entities: those never send validators.

Validators are data from outside: a value over MAX_VALIDATOR characters, or with anything but
printable ASCII and tabs (a CR/LF would split a header), is not kept; nor is one holding a secret or
any 8-character piece of one (a configured `${secret.*}`, a token obtained at run time: the run's
Redactor knows both), since secrets never reach the database.

A validator says the API's document did not change, not that *our* rows are what that document
turns into. So one is sent only when (a) it was kept under the same `fingerprint`: a digest of
what the source turns a reply into (the request it makes, its records, writes, status and outcome
rules), computed once per run from the frozen spec, so editing a mapping, adding a column or
changing an outcome rule makes the next run re-fetch every entity once; and (b) the entity's row
is still in the primary write's table (a truncated or restored table is re-fetched), checked in
the same query that loads the chunk's validators: by the key column mapped to `entity.<key>`, or
else by the key of the first row the reply wrote there, kept with the validator (`row_key`), so a
key mapped from the record (`id: record.id`) is checked too. A function write has no row to check.
`--restart` forgets a source's validators; a dry run (`--dry-run`, `test-read`) never sends any, so
it shows what the API answers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from runner.database import identifier
from runner.expressions import JSON
from runner.migrations import Catalog
from runner.reply import Reply
from runner.spec import Column, Outcome, PaginationType, QualifiedName, SelectionType, Source
from runner.templating import Settings, render

__all__ = ["MAX_VALIDATOR", "Store", "Validators", "enabled", "fingerprint", "forget", "kept", "write"]

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
    fingerprint: str | None = field(default=None, compare=False)  # the run's (Store.kept); None: from the spec

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
    """What a 2xx reply says to keep (nothing usable: the stored ones are cleared). A value that
    `redact` changes holds a secret (an API echoing the Authorization header into its ETag): not kept."""

    def usable(value: str | None) -> str | None:
        value = clean(value)
        return value if value is None or redact(value) == value else None

    return Validators(usable(reply.headers.get("etag")), usable(reply.headers.get("last-modified")))


def origin(source: Source, settings: Settings) -> str:
    """scheme://host:port of the source's resolved URL (`${env.API_URL}` filled in): validators one
    server made are not sent to another (review16b N8). No user info, path or query, and masked by
    the run's redactor, so no secret can flow into the fingerprint's input even in a host name."""
    entity = {segment.name: "x" for segment in source.request.url.segments if isinstance(segment, Column)}
    try:
        parts = urlsplit(render(source.request.url, entity, settings, url=True))
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower(), 0)
        found = f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}"
    except (KeyError, ValueError):  # an unresolved setting or a bad port: the run reports it elsewhere
        return ""
    return settings.redact(found)


def fingerprint(source: Source, origin: str = "") -> str:
    """A digest of what the source turns a reply into, and of the server it asks (`origin`): a
    validator kept under another one was made for other mappings, another request or another server,
    and is not sent. The spec is frozen dataclasses whose reprs hold no addresses (an Expression's
    repr is its text), so the digest is stable across runs."""
    request = source.request
    parts = (
        origin,
        request.url.text,
        tuple((name, template.text) for name, template in request.query),
        tuple((name, template.text) for name, template in request.headers),
        source.entities.key,
        source.records,
        source.writes,
        source.status,
        source.outcomes,
    )
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where an entity's row is: the primary write's table and, when one of its key columns is mapped
    to exactly `entity.<key>`, that column and its type (a cast for the keys, so its index is used).
    Otherwise (`id: record.id`) `keys` are the write's key columns and their types: the row is found
    by the values each validator's reply wrote there, kept with it (`row_key`)."""

    table: QualifiedName
    column: str | None
    type: str | None
    keys: tuple[tuple[str, str | None], ...] = ()


def primary(source: Source) -> int | None:
    """The primary write's index (writer.primary: the one marked `primary: true`, else the first
    table write) when it writes a table; None when it calls a function (no row to check)."""
    marked = [i for i, write in enumerate(source.writes) if write.primary]
    tables = [i for i, write in enumerate(source.writes) if write.function is None]
    found = (marked or tables)[:1]
    return found[0] if found and source.writes[found[0]].function is None else None


def anchor(source: Source, catalog: Catalog | None) -> Anchor | None:
    """How to find the entity's row in the primary write's table; None for a function write: then
    only the fingerprint is checked."""
    index = primary(source)
    if index is None:
        return None
    write = source.writes[index]
    types = (catalog or {}).get(write.table, {})
    own = {"type": "subexpression", "children": [_field("entity"), _field(source.entities.key)]}
    mapped = {f.column: f.expression.parsed.parsed for f in write.columns}
    for column in dict.fromkeys((*write.key, *write.replace_by)):
        if mapped.get(column) == own:
            return Anchor(write.table, column, types.get(column))
    return Anchor(write.table, None, None, tuple((column, types.get(column)) for column in write.key))


def row_key(source: Source, rows: Mapping[int, list[dict[str, Any]]]) -> str | None:
    """The key of the first row an entity's reply wrote in the primary write's table, as JSON text
    ({} when it wrote none there: nothing to lose); None for a function write."""
    index = primary(source)
    if index is None:
        return None
    written = rows.get(index)
    if not written:
        return "{}"
    first = written[0]
    return json.dumps({c: None if first.get(c) is None else str(first[c]) for c in source.writes[index].key})


def _field(name: str) -> dict[str, JSON]:
    return {"type": "field", "children": [], "value": name}


class Store:
    """The validators of the entities a run is about to fetch, loaded chunk by chunk as selected."""

    def __init__(
        self, source: Source, *, catalog: Catalog | None = None, ask: bool = True, settings: Settings | None = None
    ) -> None:
        """`ask` False (a dry run): no validator is loaded or sent, so 304s never hide what the API
        answers; a 304 is still classified (as an error: nothing was asked). `settings`: the run's,
        for the origin its validators are kept under."""
        self.source, self.enabled, self.ask = source, enabled(source), ask
        self.fingerprint = fingerprint(source, origin(source, settings) if settings is not None else "")
        self.anchor = anchor(source, catalog) if catalog is not None else None
        self.known: dict[str, Validators] = {}
        self._none: Validators | None = None  # nothing to keep, under this run's fingerprint

    def attach(
        self, conn: psycopg.Connection[Any] | None, chunks: Iterator[list[dict[str, JSON]]]
    ) -> Iterator[list[dict[str, JSON]]]:
        """The chunks as they are, each one's stored validators loaded (on the selection's connection)
        before it is handed to the fetchers."""
        key = self.source.entities.key
        for chunk in chunks:
            if self.enabled and self.ask and conn is not None and chunk:
                keys = [entity[key] for entity in chunk]
                self.known.update(load(conn, self.source.name, keys, self.fingerprint, self.anchor))
            yield chunk

    def kept(self, reply: Reply, redact: Callable[[str], str] = str) -> Validators:
        """`kept`, to be stored under this run's fingerprint."""
        headers = reply.headers
        if "etag" not in headers and "last-modified" not in headers:  # most replies: one object, made once
            if self._none is None:
                self._none = Validators(fingerprint=self.fingerprint)
            return self._none
        return replace(kept(reply, redact), fingerprint=self.fingerprint)

    def headers(self, entity: Mapping[str, JSON]) -> dict[str, str]:
        """The conditional headers for this entity's request ({} when it has no validator)."""
        found = self.known.get(str(entity.get(self.source.entities.key))) if self.enabled else None
        return found.headers() if found else {}

    def asked(self, entity: Mapping[str, JSON]) -> bool:
        return bool(self.headers(entity))


_LOAD = "select v.entity_key, v.etag, v.last_modified from syncrun_validators v where v.source = %(source)s"
_LOAD_WHERE = " and v.entity_key = any(%(keys)s::text[]) and v.fingerprint = %(fingerprint)s"


def load(
    conn: psycopg.Connection[Any], source: str, keys: list[JSON], print_: str, at: Anchor | None = None
) -> dict[str, Validators]:
    """The validators of these entities kept under this fingerprint and, with an anchor, of those whose
    row is still in its table: one query. A key that does not fit the anchor column's type (the
    cast fails) loads none for the chunk: its requests are unconditional, never wrong."""
    params: dict[str, Any] = {"source": source, "keys": [str(k) for k in keys], "fingerprint": print_}
    query: sql.SQL | sql.Composed = sql.SQL(_LOAD + _LOAD_WHERE)
    if at is not None and at.column is not None:
        cast = sql.SQL("::{}[]").format(sql.SQL(at.type)) if at.type else sql.SQL("")
        query = sql.SQL(
            "with present as (select t.{column}::text as key from {table} t where t.{column} = any(%(typed)s{cast}))"
            " {load} and v.entity_key in (select key from present){where}"
        ).format(
            column=sql.Identifier(at.column),
            table=identifier(at.table),
            cast=cast,
            load=sql.SQL(_LOAD),
            where=sql.SQL(_LOAD_WHERE),
        )
        params["typed"] = [str(k) for k in keys] if at.type else list(keys)
    elif at is not None:  # the key is mapped from the record: look up the row the reply wrote
        same = [
            sql.SQL("t.{c} = (v.row_key->>{name}){cast}").format(
                c=sql.Identifier(column), name=sql.Literal(column), cast=sql.SQL("::{}").format(sql.SQL(kind))
            )
            if kind
            else sql.SQL("t.{c}::text = v.row_key->>{name}").format(c=sql.Identifier(column), name=sql.Literal(column))
            for column, kind in at.keys
        ]
        query = sql.SQL(
            "{load}{where} and v.row_key is not null"  # kept before row_key was: not sent (one unconditional run)
            " and (v.row_key = '{{}}'::jsonb or exists (select 1 from {table} t where {same}))"
        ).format(
            load=sql.SQL(_LOAD),
            where=sql.SQL(_LOAD_WHERE),
            table=identifier(at.table),
            same=sql.SQL(" and ").join(same),
        )
    try:
        with conn.transaction():  # autocommit is off: never leave the selection's connection idle in one
            rows = conn.execute(query, params).fetchall()
    except (psycopg.errors.DataError, psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
        return {}
    return {str(key): Validators(clean(etag), clean(modified)) for key, etag, modified in rows}


def forget(conn: psycopg.Connection[Any], source: str) -> int:
    """`--restart` of a per-entity source: its validators are forgotten, every request unconditional."""
    with conn.transaction():
        return conn.execute("delete from syncrun_validators where source = %s", (source,)).rowcount


_KEEP = """insert into syncrun_validators as v
    (source, entity_key, etag, last_modified, fingerprint, row_key, updated_at)
select %(source)s::text, k.key, k.etag, k.modified, k.print, k.row_key::jsonb, now()
from unnest(%(keys)s::text[], %(etags)s::text[], %(modified)s::text[], %(prints)s::text[], %(row_keys)s::text[])
    as k(key, etag, modified, print, row_key)
on conflict (source, entity_key) do update set
    etag = excluded.etag, last_modified = excluded.last_modified, fingerprint = excluded.fingerprint,
    row_key = excluded.row_key, updated_at = now()"""
_DROP = "delete from syncrun_validators where source = %(source)s and entity_key = any(%(keys)s::text[])"


def write(cursor: psycopg.Cursor[Any], source: Source, batch: list[Any]) -> None:
    """Keep the validators of the batch's successes (clearing them when a reply had none), drop those of
    deleted entities; an unchanged, skipped or failed entity keeps what it had. Called by the writer
    inside the batch's transaction, after the rows and the status stamp."""
    if not enabled(source):
        return
    latest: dict[str, Validators | None] = {}
    rows: dict[str, str | None] = {}
    for result in batch:  # last wins, like rows
        if result.outcome is Outcome.SUCCESS and result.validators is not None:
            latest[str(result.key)] = result.validators
            rows[str(result.key)] = row_key(source, result.rows)
        elif result.outcome is Outcome.DELETE:
            latest[str(result.key)] = None
    keep = {key: v for key, v in sorted(latest.items()) if v}
    spec_print = fingerprint(source) if any(v.fingerprint is None for v in keep.values()) else ""
    drop = [key for key, v in sorted(latest.items()) if not v]
    if keep:
        cursor.execute(
            _KEEP,
            {
                "source": source.name,
                "keys": list(keep),
                "etags": [v.etag for v in keep.values()],
                "modified": [v.last_modified for v in keep.values()],
                "row_keys": [rows[key] for key in keep],
                "prints": [v.fingerprint or spec_print for v in keep.values()],
            },
        )
    if drop:
        cursor.execute(_DROP, {"source": source.name, "keys": drop})
