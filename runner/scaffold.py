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
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import yaml

from runner import config, starters, templating
from runner.client import parse_json
from runner.errors import UsageError
from runner.spec import Column

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
_PLAIN_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?$")
_BIGINT = 2**63 - 1  # past it a whole number (a 20-digit id) is no PostgreSQL integer: text
_MAX_COLUMNS = 60
_ENVELOPES = ("data", "results", "items", "records", "entries")  # where list APIs put the list
_TIME_NAME = re.compile(r"(^|_)(at|time|timestamp|ts|ms|date|created|updated|modified|since|until)$|time|date")
_EPOCH = (946_684_800, 4_102_444_800)  # 2000-01-01 .. 2100-01-01 in seconds


MAX_SAMPLE = 20_000_000


def read_sample(path: Path) -> Any:
    """The sample response as JSON; UsageError saying how to get one when it is not."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SAMPLE + 1)
    except OSError as error:
        raise UsageError(f"--sample {path}: cannot read it ({error.strerror})") from None
    if len(raw) > MAX_SAMPLE:
        raise UsageError(f"--sample {path}: larger than {MAX_SAMPLE // 1_000_000} MB; save one response, not a dump")
    # The engine's own parser: what it refuses (too deep, NaN, bad bytes) it would refuse at run time too.
    value, problem = parse_json(raw)
    if problem or value is None:
        raise UsageError(
            f"--sample {path}: not JSON syncrun can use ({problem or 'empty'}) — save one raw response"
            f" of the endpoint, e.g. `curl -s 'https://…/730' > {path}`"
        )
    return value


def fetch_sample(url: str, key_value: str | None) -> Any:
    """The endpoint's own answer as the sample (its body; see `fetch_reply`)."""
    return fetch_reply(url, key_value)[0]


def fetch_reply(
    url: str, key_value: str | None, sent: list[tuple[str, str]] | None = None
) -> tuple[Any, dict[str, str]]:
    """The endpoint's own answer as the sample, and its headers (lower-case names; a repeated header
    joined with commas): the URL as given (a list endpoint) or with its one placeholder filled by
    `key_value`; (None, {}) when it cannot be fetched as written (a setting in it, or placeholders
    without a value). UsageError when the API does not answer with usable JSON."""
    columns = placeholders(url)
    if "${" in url or len(columns) > 1 or (columns and key_value is None):
        return None, {}
    target = url.replace("{" + columns[0] + "}", quote(key_value or "", safe="")) if columns else url
    try:
        # `sent`: the user's --header values (credentials too), sent as they are and never written.
        with httpx.stream("GET", target, headers=sent, timeout=30.0, follow_redirects=True) as response:
            raw = b""
            for chunk in response.iter_bytes():
                raw += chunk
                if len(raw) > MAX_SAMPLE:
                    raise UsageError(f"--url: the answer is larger than {MAX_SAMPLE // 1_000_000} MB; pass --sample")
    except httpx.HTTPError as error:
        raise UsageError(
            f"--url: could not fetch a sample ({type(error).__name__}): save one and pass --sample"
        ) from None
    value, problem = parse_json(raw)
    if response.status_code >= 400 or problem or value is None:
        raise UsageError(
            f"--url: the API answered HTTP {response.status_code}{f' ({problem})' if problem else ''}, not a sample"
            " to learn from: save a good response and pass --sample"
        )
    return value, {name.lower(): text for name, text in response.headers.items()}


def placeholders(url: str) -> list[str]:
    """The `{column}` names of the URL, in order of first appearance."""
    try:
        template = templating.parse(url)
    except Exception as error:  # templating raises ValueError-like errors with a message
        raise UsageError(f"--url {url!r}: {error}") from None
    names = [s.name for s in template.segments if isinstance(s, Column)]
    return list(dict.fromkeys(names))


def identifier(text: str) -> str:
    """A PostgreSQL column name for a JSON field: `releaseDate` -> `releasedate`, `x-y` -> `x_y`."""
    name = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "field"
    return ("_" + name if name[0].isdigit() else name)[:63]


def field(text: str) -> str:
    """A JMESPath field reference: plain when it can be, quoted otherwise."""
    return text if _PLAIN_FIELD.match(text) else json.dumps(text)


def _scalar(text: str) -> str:
    """`text` as a YAML scalar (quoted only when it has to be)."""
    dumped = yaml.safe_dump(text, width=10**6, allow_unicode=True)
    return dumped.removesuffix("\n...\n").strip()


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "huge" if abs(value) > _BIGINT else "bigint" if abs(value) > 2**31 - 1 else "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "date" if _DATE.match(value) else "timestamp" if _TIMESTAMP.match(value) else "text"
    return "json"


def _epoch(path: str, value: Any) -> str | None:
    """`from_unix` / `from_unix_ms` when a whole number named like a time holds one (2000-2100)."""
    name = path.rsplit(".", 1)[-1].strip('"').lower()
    if not _TIME_NAME.search(name) or isinstance(value, bool) or not isinstance(value, int):
        return None
    if _EPOCH[0] <= value <= _EPOCH[1]:
        return "from_unix"
    if _EPOCH[0] * 1000 <= value <= _EPOCH[1] * 1000:
        return "from_unix_ms"
    return None


def _expression(path: str, value: Any) -> tuple[str, str]:
    """The mapping for a value at `path`, and the comment saying what was guessed."""
    kind = _type_of(value)
    sample = json.dumps(value, ensure_ascii=False)
    sample = sample if len(sample) <= 40 else sample[:37] + "..."
    if value is None:
        return path, "null in the sample: type unknown"
    if function := _epoch(path, value):
        unit = "seconds" if function == "from_unix" else "milliseconds"
        return f"{function}({path})", f"epoch {unit}, e.g. {sample} -> a timestamptz column"
    if kind == "huge":  # as_int would overflow bigint (a 20-digit id): keep every digit as text
        return f"to_string({path})", f"text: a whole number past bigint, e.g. {sample}"
    if kind in ("int", "bigint"):
        return f"as_int({path})", f"{kind}, e.g. {sample}"
    if kind == "float":
        return f"as_float({path})", f"float, e.g. {sample}"
    if kind == "date":
        return f"parse_date({path})", f"date, e.g. {sample}"
    if kind == "timestamp":  # parse_date would drop the time: PostgreSQL reads ISO-8601 as it is
        return path, f"ISO-8601 timestamp, e.g. {sample} -> a timestamptz column"
    if kind == "json":
        return f"to_json({path})", f"json, e.g. {sample}"
    return path, f"{kind}, e.g. {sample}"


def _unwrap(sample: Any, listed: bool = False) -> tuple[str | None, dict[str, Any], str]:
    """(`records` expression, first record, where its fields sit): a lone wrapper key (`{"data": …}`)
    or a list envelope (`{"data": […], "meta": …}`, `results`, `items`; for a list endpoint also the
    one key holding a list of objects, e.g. Slack's `members`) is unwrapped, and a JSON:API
    resource's fields are read under `attributes`."""
    path: list[str] = []
    node = sample
    while isinstance(node, dict):
        if len(node) == 1 and isinstance(inner := next(iter(node.values())), dict | list):
            key = next(iter(node))
        elif (key := next((k for k in _ENVELOPES if isinstance(node.get(k), list)), None)) is not None:
            inner = node[key]
        elif listed and len(objects := [k for k, v in node.items() if _objects(v)]) == 1:
            key = objects[0]
            inner = node[key]
        else:
            break
        path.append(field(key))
        node = inner
    records = "body." + ".".join(path) if path else ("body" if isinstance(node, list) else None)
    if isinstance(node, list):
        node = next((item for item in node if isinstance(item, dict)), {})
    record = node if isinstance(node, dict) else {}
    if isinstance(record.get("attributes"), dict) and "id" in record:  # JSON:API: {id, type, attributes}
        return records, {"id": record["id"], **record["attributes"]}, "record.attributes"
    return records, record, "record"


def _objects(value: Any) -> bool:
    """A non-empty list of objects (JSON objects): a page's records."""
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def _columns(
    record: dict[str, Any], taken: set[str], base: str = "record"
) -> tuple[list[str], list[tuple[str, list[Any]]]]:
    """Mapping lines for a record's fields, and its nested lists (name, items) for child tables.
    Fields sit under `base` (`record.attributes` for JSON:API), except a JSON:API `id`."""
    lines: list[str] = []
    lists: list[tuple[str, list[Any]]] = []
    for key, value in record.items():
        at = "record" if key == "id" else base
        if isinstance(value, list):
            lists.append((key, value))
            continue
        if isinstance(value, dict) and value and all(not isinstance(v, dict | list) for v in value.values()):
            for sub, inner in value.items():
                lines.append(_line(f"{key}_{sub}", f"{at}.{field(key)}.{field(sub)}", inner, taken))
            continue
        lines.append(_line(key, f"{at}.{field(key)}", value, taken))
    return [line for line in lines if line], lists


def _line(name: str, path: str, value: Any, taken: set[str], indent: str = "      ") -> str:
    column = identifier(name)
    if column in taken or len(taken) >= _MAX_COLUMNS:
        return ""
    taken.add(column)
    expression, comment = _expression(path, value)
    return f"{indent}{column}: {_scalar(expression)}  # {comment}"


def _child(name: str, field_name: str, items: list[Any], key: str, parent: str) -> list[str]:
    """A commented-out child table writing one row per item of a nested list; `parent` maps its key."""
    table = identifier(f"{name}_{field_name}")[:63]
    first = next((item for item in items if item is not None), None)
    lines = [
        f"  # `{field_name}` is a list in the sample: uncomment to write one row per item into {table}.",
        f"  # - table: {table}",
    ]
    if isinstance(first, dict):
        subkeys = [k for k, v in first.items() if not isinstance(v, dict | list)]
        second = next((k for k in subkeys if "id" in k.lower()), subkeys[0] if subkeys else "value")
        lines += [
            f"  #   key: [{key}, {identifier(second)}]",
            f"  #   rows: record.{field(field_name)}",
            "  #   columns:",
            f"  #     {key}: {parent}",
        ]
        taken = {key}
        for sub in subkeys:
            line = _line(sub, f"item.{field(sub)}", first[sub], taken, indent="")
            if line:
                lines.append(f"  #     {line}")
    else:
        column = identifier(field_name.rstrip("s") or "value")
        expression, comment = _expression("item", first)
        lines += [
            f"  #   key: [{key}, {column}]",
            f"  #   rows: record.{field(field_name)}",
            "  #   columns:",
            f"  #     {key}: {parent}",
            f"  #     {column}: {_scalar(expression)}  # {comment}",
        ]
    return lines


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
    columns = placeholders(url)
    project = config._project(out)[0]
    listed = not columns
    records, record, base = _unwrap(sample, listed) if sample is not None else (None, {}, "record")
    key = _list_key(record) if listed else columns[0]
    if listed:
        key_type = _key_type(record.get(key), "text")
    elif key == project.key:
        key_type = project.key_type
    else:  # the URL's name for it, or the record's own `id`
        key_type = _key_type(record.get(key, record.get("id")), "int")
    guessed = {c: _type_of(record[c]) if record.get(c) is not None else "text" for c in columns[1:]}
    entity_types = {
        c: t if t in ("int", "bigint", "text", "float", "bool", "date") else "text" for c, t in guessed.items()
    }
    entity_columns = ", ".join(f"{c}: {t}" for c, t in [(key, key_type), *entity_types.items()])

    text = _schema_comment(out)
    text += f"# Written by `syncrun new {name}`: check every guess (marked with a comment), then\n"
    steps = textwrap.wrap(f"{next_steps(out, listed, name)}.", 98, break_on_hyphens=False, break_long_words=False)
    text += "".join(f"# {line}\n" for line in steps)
    text += f"name: {name}\n"
    text += f"description: {_scalar(f'TODO: what {name} syncs, from {url}')}\n\n"
    text += _entities(listed, key, project.key, entity_columns)
    text += f"request:\n  url: {_scalar(url)}\n  timeout: 30s\n"
    starter = starter or starters.Starter()
    if starter.headers:
        text += "  headers:\n" + "".join(f"    {header}: {value}\n" for header, value in starter.headers)
    if starter.query:
        text += "  query:\n" + "".join(f"    {json.dumps(name)}: {value}\n" for name, value in starter.query)
    text += "\n" + "".join(f"{line}\n" for line in starter.auth) + ("\n" if starter.auth else "")
    if listed:
        text += pagination_text(url, sample, headers, records)
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
        text += f"records: {_scalar(records)}\n\n"
    if listed:
        text += starters.incremental(record)
    taken = {identifier(key)}
    lines, lists = _columns({k: v for k, v in record.items() if not (listed and k == key)}, taken, base)
    mapped = f"{_expression(f'record.{field(key)}', record.get(key))[0]}" if listed else f"entity.{key}"
    text += f"writes:\n  - table: {name}\n    key: [{identifier(key)}]\n    columns:\n"
    text += f"      {identifier(key)}: {_scalar(mapped)}\n"
    if lines:
        text += "\n".join(lines) + "\n"
    else:
        text += "      # name: record.name             # one line per column: column: JMESPath over the record\n"
    for field_name, items in lists:
        parent = f"record.{field(key)}" if listed else f"entity.{key}"
        text += "\n".join(_child(name, field_name, items, identifier(key), parent)) + "\n"
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


def _list_key(record: dict[str, Any]) -> str:
    """A listed record's key: `id`, else the first field named like an id, else the first field."""
    scalars = [k for k, v in record.items() if not isinstance(v, dict | list)]
    named = [k for k in scalars if k.lower() == "id"] + [k for k in scalars if k.lower().endswith("id")]
    return (named or scalars or ["id"])[0]


def _key_type(value: Any, unknown: str) -> str:
    """text for a text id (`"stn_123"`), int or bigint for a whole number, `unknown` without a sample."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, int) and not isinstance(value, bool):
        return "text" if abs(value) > _BIGINT else "bigint" if abs(value) > 2**31 - 1 else "int"
    return unknown


def write(out: Path, text: str, *, force: bool = False) -> None:
    """Write the file, refusing to overwrite one unless `force`; the result must validate."""
    if out.exists() and not force:
        raise UsageError(f"{out} exists: choose another --out, or pass --force to overwrite it")
    config.loads(text, out)  # a scaffold that does not validate is a bug: raise ConfigError now
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


# --- pagination: guessed from the sample reply -----------------------------------------------------

_LINK_NEXT = re.compile(r"""<[^>]*>\s*;[^,]*?\brel\s*=\s*"?[^",;]*\bnext\b""", re.IGNORECASE)
_NEXT_URL_KEYS = ("next_url", "next_page_url", "nextPageUrl", "next_link", "nextLink", "next_page", "next")
_CURSOR_KEYS = ("next_cursor", "nextCursor", "next_page_token", "nextPageToken", "next_token", "nextToken", "cursor")
_NESTS = ("links", "paging", "meta", "pagination", "response_metadata", "page_info", "pageInfo", "metadata")
_TOTAL_PAGES = ("total_pages", "totalPages", "page_count", "pageCount", "last_page", "lastPage", "pages")
_TOTALS = ("total", "total_count", "totalCount", "total_results", "totalResults", "count")
_SIZES = ("limit", "per_page", "perPage", "page_size", "pageSize", "size")
_HEADER_CURSOR = re.compile(r"^x-next-[a-z-]*(token|cursor)$|^x-(page-)?cursor$")  # not x-token: auth


def _url_like(value: Any) -> bool:
    return isinstance(value, str) and (value.startswith(("http://", "https://", "/", "?")) or "?" in value)


def _find(body: Any, keys: tuple[str, ...]) -> tuple[str, Any] | None:
    """The first of `keys` in the body or one level down in a pagination-ish object: (JMESPath, value)."""
    if not isinstance(body, dict):
        return None
    for key in keys:
        if key in body and not isinstance(body[key], dict | list):
            return f"body.{field(key)}", body[key]
    for nest in _NESTS:
        inner = body.get(nest)
        if isinstance(inner, dict):
            for key in keys:
                if key in inner and not isinstance(inner[key], dict | list):
                    return f"body.{field(nest)}.{field(key)}", inner[key]
    return None


def _cursor_param(key: str) -> str:
    """The query parameter a cursor is likely sent back in: `next_page_token` -> `page_token`."""
    name = key.rsplit(".", 1)[-1].strip('"').lower().replace("-", "_")
    for prefix in ("x_", "next_", "next"):
        name = name.removeprefix(prefix)
    camel = key.rsplit(".", 1)[-1].strip('"')
    if camel.startswith("next") and camel[4:5].isupper():  # nextPageToken -> pageToken
        return camel[4].lower() + camel[5:]
    return name or "cursor"


def _page_size(url: str, body: Any) -> tuple[int, str | None, str] | None:
    """(page_size, size_param, where it was seen) when a page size is evident in the URL's query or the body."""
    query = parse_qs(urlsplit(url).query)
    for name in _SIZES:
        values = query.get(name)
        if values and values[0].isdigit() and int(values[0]) > 0:
            return int(values[0]), name, f"{name}={values[0]} in the URL"
    found = _find(body, _SIZES)
    if found and isinstance(found[1], int) and not isinstance(found[1], bool) and found[1] > 0:
        name = found[0].rsplit(".", 1)[-1].strip('"')
        return found[1], name, f"{found[0]} = {found[1]} in the sample"
    return None


def pagination_text(url: str, body: Any, headers: dict[str, str] | None, records: str | None) -> str:
    """The `pagination:` block for what the sample reply shows (a Link header, a next URL or cursor
    in the body or a header, Stripe's has_more, page or offset counters), with a comment saying what
    was detected; without any, a comment saying the source reads one page and how to page it."""
    heads = {k.lower(): v for k, v in (headers or {}).items()}
    items = body if isinstance(body, list) else None
    if records and records.startswith("body.") and isinstance(body, dict):
        node: Any = body
        for part in records.removeprefix("body.").split("."):
            node = node.get(part.strip('"')) if isinstance(node, dict) else None
        items = node if isinstance(node, list) else None
    size = _page_size(url, body)
    query = parse_qs(urlsplit(url).query)
    has_more = _find(body, ("has_more", "hasMore", "has_next", "hasNext", "more"))
    # a JSON boolean, or the text "true"/"false" some APIs send (the runtime reads both)
    has_more = has_more if has_more and (isinstance(has_more[1], bool) or has_more[1] in ("true", "false")) else None
    lines: list[str] = []
    detected = ""
    if _LINK_NEXT.search(heads.get("link", "")):
        detected = 'a Link header with rel="next"'
        lines = ["type: link"]
    elif (found := _find(body, _NEXT_URL_KEYS)) and (found[1] is None or _url_like(found[1])):
        seen = "null on this page" if found[1] is None else "a URL"
        detected = f"a next-page URL in the body ({found[0]}, {seen})"
        lines = ["type: next_url", f"next: {_scalar(found[0])}"]
    elif header := next((h for h in heads if _HEADER_CURSOR.match(h)), None):
        expression = f'headers."{header}"'
        param = _cursor_param(header)
        detected = f"a next-page token in the {header} response header"
        lines = [
            "type: cursor",
            f"param: {param}  # a guess from the header's name: check the API's docs",
            f"cursor: {_scalar(expression)}",
        ]
    elif (found := _find(body, _CURSOR_KEYS)) or (
        (found := _find(body, ("next",))) and isinstance(found[1], str | int)
    ):
        param = _cursor_param(found[0])
        detected = f"a next-page cursor in the body ({found[0]})"
        lines = [
            "type: cursor",
            f"param: {param}  # a guess from the key's name: check the API's docs",
            f"cursor: {_scalar(found[0])}",
        ]
    elif has_more and records and items and isinstance(items[0], dict) and "id" in items[0]:
        detected = f"{has_more[0]} and record ids (Stripe-style: starting_after the last record's id)"
        lines = [
            "type: cursor",
            "param: starting_after  # check the API's docs",
            f"cursor: {_scalar(records + '[-1].id')}",
        ]
    elif (found := _find(body, _TOTAL_PAGES)) and isinstance(found[1], int) and not isinstance(found[1], bool):
        current = _find(body, ("page", "current_page", "currentPage", "page_number"))
        start = 0 if current and current[1] == 0 else 1
        detected = f"a page count in the body ({found[0]})"
        lines = [
            "type: page",
            "param: page  # check the API's docs",
            f"start: {start}",
            f"total_pages: {_scalar(found[0])}",
        ]
    elif (
        (total := _find(body, _TOTALS))
        and isinstance(total[1], int)
        and not isinstance(total[1], bool)
        and (_find(body, ("offset", "skip", "start")) or "offset" in query or size or (items and len(items) < total[1]))
    ):
        detected = f"a total in the body ({total[0]})"
        if size is None and items:  # the API's own page size, seen as the sample's page
            size = len(items), None, f"the sample's {len(items)} records (the API's default page size?)"
        lines = ["type: offset", "param: offset  # check the API's docs", f"total: {_scalar(total[0])}"]
    elif "page" in query or "offset" in query or (size and size[1] in query and items and len(items) == size[0]):
        # page= / offset= in the URL, or a size there (per_page=7, limit=7) the sample filled exactly:
        # a full page, so more may follow. page_size makes the first short (or empty) page the last.
        style = (
            "page" if "page" in query else "offset" if "offset" in query or (size and size[1] == "limit") else "page"
        )
        given = [f"{name}={query[name][0]}" for name in (style, size[1] if size else None) if name and name in query]
        detected = f"{' and '.join(given)} in the URL"
        if size and size[1] in query and items and len(items) == size[0]:
            detected += f", and the sample's {len(items)} records fill that page"
        first = query.get("page", ["1"])[0]
        lines = [f"type: {style}", f"param: {style}"]
        if style == "page":
            lines.append(f"start: {int(first) if first.isdigit() and int(first) < 2 else 1}")
        if size is None and items:
            size = len(items), None, f"the sample's {len(items)} records (the API's default page size?)"
    if not lines or (lines[0] == "type: offset" and size is None):
        return _PAGINATION_HINT
    if has_more and lines[0] in ("type: cursor", "type: next_url"):
        lines.append(f"has_more: {_scalar(has_more[0])}")
    if size:
        lines.append(f"page_size: {size[0]}  # from {size[2]}: a shorter page is the last")
        if size[1]:
            lines.append(f"size_param: {size[1]}")
    text = f"# pagination: detected {detected}; see docs/reference.md#pagination\n"
    return text + "pagination:\n" + "".join(f"  {line}\n" for line in lines) + "\n"


_PAGINATION_HINT = (
    "# pagination: none detected in the sample, so this source reads ONE page (the first) only.\n"
    "# If the API pages its list, add a block; see docs/reference.md#pagination, e.g.\n"
    "# pagination:\n"
    "#   type: cursor                    # or link, next_url, page, offset\n"
    "#   param: cursor\n"
    '#   cursor: "body.meta.next_cursor"\n\n'
)
