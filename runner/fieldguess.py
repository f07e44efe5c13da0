"""What a sample record says about the source `syncrun new` writes: where the records are (a
wrapper or list envelope unwrapped, JSON:API's attributes), a column and a typed mapping per field
(with the comment saying what was guessed), nested lists as child tables, and the key's type.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

_PLAIN_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?$")
_BIGINT = 2**63 - 1  # past it a whole number (a 20-digit id) is no PostgreSQL integer: text
_MAX_COLUMNS = 60
_ENVELOPES = ("data", "results", "items", "records", "entries")  # where list APIs put the list
_TIME_NAME = re.compile(r"(^|_)(at|time|timestamp|ts|ms|date|created|updated|modified|since|until)$|time|date")
_EPOCH = (946_684_800, 4_102_444_800)  # 2000-01-01 .. 2100-01-01 in seconds


def identifier(text: str) -> str:
    """A PostgreSQL column name for a JSON field: `releaseDate` -> `releasedate`, `x-y` -> `x_y`."""
    name = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "field"
    return ("_" + name if name[0].isdigit() else name)[:63]


def field(text: str) -> str:
    """A JMESPath field reference: plain when it can be, quoted otherwise."""
    return text if _PLAIN_FIELD.match(text) else json.dumps(text)


def scalar(text: str) -> str:
    """`text` as a YAML scalar (quoted only when it has to be)."""
    dumped = yaml.safe_dump(text, width=10**6, allow_unicode=True)
    return dumped.removesuffix("\n...\n").strip()


def type_of(value: Any) -> str:
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


def guess(path: str, value: Any) -> tuple[str, str]:
    """The mapping for a value at `path`, and the comment saying what was guessed."""
    kind = type_of(value)
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


def unwrap(sample: Any, listed: bool = False) -> tuple[str | None, dict[str, Any], str]:
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


def mapping_lines(
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
    expression, comment = guess(path, value)
    return f"{indent}{column}: {scalar(expression)}  # {comment}"


def child_table(name: str, field_name: str, items: list[Any], key: str, parent: str) -> list[str]:
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
        expression, comment = guess("item", first)
        lines += [
            f"  #   key: [{key}, {column}]",
            f"  #   rows: record.{field(field_name)}",
            "  #   columns:",
            f"  #     {key}: {parent}",
            f"  #     {column}: {scalar(expression)}  # {comment}",
        ]
    return lines


def list_key(record: dict[str, Any]) -> str:
    """A listed record's key: `id`, else the first field named like an id, else the first field."""
    scalars = [k for k, v in record.items() if not isinstance(v, dict | list)]
    named = [k for k in scalars if k.lower() == "id"] + [k for k in scalars if k.lower().endswith("id")]
    return (named or scalars or ["id"])[0]


def key_type_of(value: Any, unknown: str) -> str:
    """text for a text id (`"stn_123"`), int or bigint for a whole number, `unknown` without a sample."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, int) and not isinstance(value, bool):
        return "text" if abs(value) > _BIGINT else "bigint" if abs(value) > 2**31 - 1 else "int"
    return unknown
