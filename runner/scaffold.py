"""`syncrun new NAME --url … --sample …`: a starter source file, valid as written, ready to edit.

The URL's `{placeholders}` become the entity columns (the first is the key). From a sample response
it guesses `records` (a lone wrapper key like `data` is unwrapped), one mapping per field with a
type-appropriate function (as_int, as_float, parse_date), nested objects flattened one level, and
each nested list offered as a commented child table (one row per item). Every guess carries a
comment; `syncrun validate` passes on the result.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from runner import config, templating
from runner.client import parse_json
from runner.errors import UsageError
from runner.spec import Column

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
_PLAIN_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")
_MAX_COLUMNS = 60


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
        return "bigint" if abs(value) > 2**31 - 1 else "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "date" if _DATE.match(value) else "text"
    return "json"


def _expression(path: str, value: Any) -> tuple[str, str]:
    """The mapping for a value at `path`, and the comment saying what was guessed."""
    kind = _type_of(value)
    sample = json.dumps(value, ensure_ascii=False)
    sample = sample if len(sample) <= 40 else sample[:37] + "..."
    if value is None:
        return path, "null in the sample: type unknown"
    if kind in ("int", "bigint"):
        return f"as_int({path})", f"{kind}, e.g. {sample}"
    if kind == "float":
        return f"as_float({path})", f"float, e.g. {sample}"
    if kind == "date":
        return f"parse_date({path})", f"date, e.g. {sample}"
    if kind == "json":
        return f"to_json({path})", f"json, e.g. {sample}"
    return path, f"{kind}, e.g. {sample}"


def _unwrap(sample: Any) -> tuple[str | None, Any]:
    """(`records` expression, first record): a lone wrapper key (`{"data": …}`) is unwrapped."""
    path: list[str] = []
    node = sample
    while isinstance(node, dict) and len(node) == 1:
        ((key, inner),) = node.items()
        if not isinstance(inner, dict | list):
            break
        path.append(field(key))
        node = inner
    records = "body." + ".".join(path) if path else ("body" if isinstance(node, list) else None)
    if isinstance(node, list):
        node = next((item for item in node if isinstance(item, dict)), {})
    return records, node if isinstance(node, dict) else {}


def _columns(record: dict[str, Any], taken: set[str]) -> tuple[list[str], list[tuple[str, list[Any]]]]:
    """Mapping lines for a record's fields, and its nested lists (name, items) for child tables."""
    lines: list[str] = []
    lists: list[tuple[str, list[Any]]] = []
    for key, value in record.items():
        if isinstance(value, list):
            lists.append((key, value))
            continue
        if isinstance(value, dict) and value and all(not isinstance(v, dict | list) for v in value.values()):
            for sub, inner in value.items():
                lines.append(_line(f"{key}_{sub}", f"record.{field(key)}.{field(sub)}", inner, taken))
            continue
        lines.append(_line(key, f"record.{field(key)}", value, taken))
    return [line for line in lines if line], lists


def _line(name: str, path: str, value: Any, taken: set[str], indent: str = "      ") -> str:
    column = identifier(name)
    if column in taken or len(taken) >= _MAX_COLUMNS:
        return ""
    taken.add(column)
    expression, comment = _expression(path, value)
    return f"{indent}{column}: {_scalar(expression)}  # {comment}"


def _child(name: str, field_name: str, items: list[Any], key: str) -> list[str]:
    """A commented-out child table writing one row per item of a nested list."""
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
            f"  #     {key}: entity.{key}",
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
            f"  #     {key}: entity.{key}",
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


def source_text(name: str, url: str, sample: Any, out: Path) -> str:
    """The starter source file's text."""
    if not _NAME.match(name):
        suggestion = identifier(name)[:50]
        if not suggestion[0].isalpha():
            suggestion = "s" + suggestion[:49]
        raise UsageError(
            f"source name {name!r}: use lower-case letters, digits and _, starting with a letter (e.g. {suggestion!r})"
        )
    columns = placeholders(url)
    if not columns:
        raise UsageError(
            f"--url {url!r} has no {{placeholder}}: put the entity key where it goes,"
            " e.g. https://api.example.com/items/{id}"
        )
    key = columns[0]
    project = config._project(out)[0]
    records, record = _unwrap(sample) if sample is not None else (None, {})
    key_type = project.key_type if key == project.key else _key_type(record.get(key))
    guessed = {c: _type_of(record[c]) if record.get(c) is not None else "text" for c in columns[1:]}
    entity_types = {
        c: t if t in ("int", "bigint", "text", "float", "bool", "date") else "text" for c, t in guessed.items()
    }
    entity_columns = ", ".join(f"{c}: {t}" for c, t in [(key, key_type), *entity_types.items()])

    text = _schema_comment(out)
    text += f"# Written by `syncrun new {name}`: check every guess (marked with a comment), then\n"
    text += f"# `syncrun validate {out.as_posix()}` and `syncrun test-read {out.as_posix()} --ids …`.\n"
    text += f"name: {name}\n"
    text += f"description: {_scalar(f'TODO: what {name} syncs, from {url}')}\n\n"
    text += "entities:\n  type: default                     # due entities from the status table, never synced first\n"
    if key != project.key:
        text += f"  key: {key}\n"
    text += f"  columns: {{{entity_columns}}}   # the URL's placeholders; the key first\n"
    text += "  limit: 100                        # entities per run (--limit / BATCH_SIZE override it)\n"
    text += "  refresh_interval: 24h\n\n"
    text += f"request:\n  url: {_scalar(url)}\n  timeout: 30s\n\n"
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
    taken = {key}
    lines, lists = _columns(record, taken)
    text += f"writes:\n  - table: {name}\n    key: [{key}]\n    columns:\n      {key}: entity.{key}\n"
    if lines:
        text += "\n".join(lines) + "\n"
    else:
        text += "      # name: record.name             # one line per column: column: JMESPath over the record\n"
    for field_name, items in lists:
        text += "\n".join(_child(name, field_name, items, key)) + "\n"
    if key != project.key:
        text += (
            f"\nstatus:                             # where last_{name}_sync is stamped;"
            f" `syncrun migrate {out.as_posix()}` creates it\n"
            f"  table: {name}_status\n  key: {key}\n"
        )
    return text


def _key_type(value: Any) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**31 - 1:
        return "bigint"
    return "int"


def write(out: Path, text: str, *, force: bool = False) -> None:
    """Write the file, refusing to overwrite one unless `force`; the result must validate."""
    if out.exists() and not force:
        raise UsageError(f"{out} exists: choose another --out, or pass --force to overwrite it")
    config.loads(text, out)  # a scaffold that does not validate is a bug: raise ConfigError now
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
