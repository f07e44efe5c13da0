"""`syncrun new NAME --url … [--sample …]`: a starter source file, valid as written, ready to edit.

The URL's `{placeholders}` become the entity columns (the first is the key); a URL with none is a list
endpoint, and makes a list-shaped source (`entities: {type: list}`) keyed by the records' id. The
sample is a saved response (`--sample`), or, without one, fetched from the URL itself (`--id` fills
the key placeholder). From it, it guesses `records`: a lone wrapper key like `data` is unwrapped, as
are the common list envelopes (`{data: […], meta, links}`, `{results: […]}`, `{items: […]}`) and
JSON:API's `data[].attributes`. Then one mapping per field with a type-appropriate function (as_int,
as_float, parse_date for a bare date, an ISO timestamp with a time as it is (PostgreSQL reads it;
parse_date would drop the time), from_unix for epoch-second timestamps, to_string for a whole number
past bigint such as a 20-digit id, which also makes a text key), nested objects flattened one level,
each nested list offered as a commented child table (one row per item), and the key's type from its
value (`"stn_123"` is text). A list endpoint also gets the pagination its sample reply shows (a Link
header, a next URL or cursor in the body or a header, has_more + ids, a page count or a total), or a
comment that it reads one page. Every guess carries a comment; `syncrun validate` passes on the result.

This module writes the file; the sample is read in runner/samples.py, its fields guessed in
runner/fieldguess.py, its pagination in runner/pageguess.py, auth and incremental in runner/starters.py.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any

from runner import config, pageguess, samples, starters
from runner.errors import UsageError
from runner.fieldguess import (
    child_table,
    field,
    guess,
    identifier,
    key_type_of,
    list_key,
    mapping_lines,
    scalar,
    type_of,
    unwrap,
)

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,49}$")


def _schema_comment(out: Path) -> str:
    """The editor's schema comment, when the file is inside the checkout that has the schema."""
    root = Path(__file__).resolve().parent.parent
    schema = root / "schemas" / "source.schema.json"
    if not schema.exists() or not out.resolve().is_relative_to(root):
        return ""
    relative = os.path.relpath(schema, out.resolve().parent)
    return f"# yaml-language-server: $schema={Path(relative).as_posix()}\n"


def source_text(
    name: str,
    url: str,
    sample: Any,
    out: Path,
    headers: dict[str, str] | None = None,
    starter: starters.Starter | None = None,
) -> str:
    """The starter source file's text; `headers` are the sample reply's (a Link header or a
    next-page token header sets the list's pagination); `starter` the request headers and auth
    block (runner/starters.py)."""
    if not _NAME.match(name):
        suggestion = identifier(name)[:50]
        if not suggestion[0].isalpha():
            suggestion = "s" + suggestion[:49]
        raise UsageError(
            f"source name {name!r}: use lower-case letters, digits and _, starting with a letter (e.g. {suggestion!r})"
        )
    columns = samples.placeholders(url)
    project = config._project(out)[0]
    listed = not columns
    records, record, base = unwrap(sample, listed) if sample is not None else (None, {}, "record")
    key = list_key(record) if listed else columns[0]
    if listed:
        key_type = key_type_of(record.get(key), "text")
    elif key == project.key:
        key_type = project.key_type
    else:  # the URL's name for it, or the record's own `id`
        key_type = key_type_of(record.get(key, record.get("id")), "int")
    guessed = {c: type_of(record[c]) if record.get(c) is not None else "text" for c in columns[1:]}
    entity_types = {
        c: t if t in ("int", "bigint", "text", "float", "bool", "date") else "text" for c, t in guessed.items()
    }
    entity_columns = ", ".join(f"{c}: {t}" for c, t in [(key, key_type), *entity_types.items()])

    text = _schema_comment(out)
    text += f"# Written by `syncrun new {name}`: check every guess (marked with a comment), then\n"
    steps = textwrap.wrap(f"{next_steps(out, listed, name)}.", 98, break_on_hyphens=False, break_long_words=False)
    text += "".join(f"# {line}\n" for line in steps)
    text += f"name: {name}\n"
    text += f"description: {scalar(f'TODO: what {name} syncs, from {url}')}\n\n"
    text += _entities(listed, key, project.key, entity_columns)
    paging = pageguess.pagination_text(url, sample, headers, records) if listed else ""
    text += f"request:\n  url: {scalar(pageguess.paged_url(url, paging))}\n  timeout: 30s\n"
    starter = starter or starters.Starter()
    if starter.headers:
        text += "  headers:\n" + "".join(f"    {header}: {value}\n" for header, value in starter.headers)
    if starter.query:
        text += "  query:\n" + "".join(f"    {json.dumps(name)}: {value}\n" for name, value in starter.query)
    text += "\n" + "".join(f"{line}\n" for line in starter.auth) + ("\n" if starter.auth else "")
    text += paging
    text += "rate_limit:                         # ask the API's documentation; retries take tokens too\n"
    text += f"  requests: 1\n  per: 1s\n  burst: 1\n  bucket: {name}\n\n"
    text += "retry:\n  attempts: 4\n  initial: 1s\n  max_delay: 30s\n  max_wait: 120s\n\n"
    text += (
        "# outcomes:                         # first match wins; then 2xx success, 404 skip, other 4xx error\n"
        "#   - name: not found\n"
        '#     when: "body.success == `false`"\n'
        "#     outcome: skip\n"
        "#     stamp: true\n\n"
    )
    if records:
        text += f"records: {scalar(records)}\n\n"
    if listed:
        text += starters.incremental(record)
    taken = {identifier(key)}
    lines, lists = mapping_lines({k: v for k, v in record.items() if not (listed and k == key)}, taken, base)
    mapped = f"{guess(f'record.{field(key)}', record.get(key))[0]}" if listed else f"entity.{key}"
    text += f"writes:\n  - table: {name}\n    key: [{identifier(key)}]\n    columns:\n"
    text += f"      {identifier(key)}: {scalar(mapped)}\n"
    if lines:
        text += "\n".join(lines) + "\n"
    else:
        text += "      # name: record.name             # one line per column: column: JMESPath over the record\n"
    for field_name, items in lists:
        parent = f"record.{field(key)}" if listed else f"entity.{key}"
        text += "\n".join(child_table(name, field_name, items, identifier(key), parent)) + "\n"
    if listed:
        text += "\nstatus: false                       # a list has no entities to stamp\n"
    elif key != project.key:
        text += (
            f"\nstatus:                             # where last_{name}_sync is stamped;"
            f" `syncrun migrate {out.as_posix()}` creates it\n"
            f"  table: {name}_status\n  key: {key}\n"
        )
    return text


def next_steps(out: Path, listed: bool, table: str) -> str:
    """What to run on the written file: a list source has no ids to test-read, so it reads its pages
    with `run --dry-run` (every page fetched and mapped, nothing written), which checks the database
    first: its target table must exist and `syncrun migrate` must have run."""
    path = out.as_posix()
    if listed:
        return (
            f"`syncrun validate {path}`; then create the {table} table, `syncrun migrate {path}`, and"
            f" `syncrun run {path} --dry-run` (reads every page, writes nothing)"
        )
    return f"`syncrun validate {path}` and `syncrun test-read {path} --ids …`"


def _entities(listed: bool, key: str, project_key: str, columns: str) -> str:
    if listed:
        return "entities:\n  type: list                        # no placeholder in the URL: a list endpoint\n\n"
    text = "entities:\n  type: default                     # due entities from the status table, never synced first\n"
    if key != project_key:
        text += f"  key: {key}\n"
    text += f"  columns: {{{columns}}}   # the URL's placeholders; the key first\n"
    text += "  limit: 100                        # entities per run (--limit / BATCH_SIZE override it)\n"
    return text + "  refresh_interval: 24h\n\n"


def write(out: Path, text: str, *, force: bool = False) -> None:
    """Write the file, refusing to overwrite one unless `force`; the result must validate."""
    if out.exists() and not force:
        raise UsageError(f"{out} exists: choose another --out, or pass --force to overwrite it")
    config.loads(text, out)  # a scaffold that does not validate is a bug: raise ConfigError now
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
