"""Source files: YAML -> JSON Schema -> `spec.Source`, reporting every problem as `file:line: path: message`.

The only module that sees raw YAML. Reading keeps each node's line; the schema checks the shape;
then each section is built (templates parsed, JMESPath compiled once, durations parsed, defaults
filled) with the cross-field checks the schema cannot express. Does not resolve settings: that is
`templating.resolve` at run start, so `validate` never needs them set.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx

from runner import authblocks, deletes, filters, spec, templating, watermarks
from runner.errors import ConfigError, Problem
from runner.exprcheck import Roots, compile_checked, message_template, split_message
from runner.expressions import JSON, Expression
from runner.overrides import Override, blame
from runner.overrides import apply as apply_overrides
from runner.redaction import Redactor
from runner.sourcefile import MAX_FILE_BYTES, Document, Path_, check, did_you_mean, read, show
from runner.sourcefile import schema as schema  # re-exported: `config.schema()` for the CLI and tests

PROJECT_FILE = "syncrun.yaml"
DEFAULT_LIMIT = 100
RUN_FIELDS = frozenset({"now", "today", "job_id", "started_at"})
ENGINE_PARAMETERS = ("limit", "after_key", "source")
# What pagination expressions are evaluated over (runner/pagination.context): one reply, no entity.
PAGINATION_ROOTS: Roots = {"status": None, "headers": None, "body": None}
# request.query names that set a page size: with pagination, they belong in page_size/size_param.
PAGE_SIZE_PARAMS = frozenset(
    {"page_size", "pagesize", "per_page", "perpage", "limit", "page[size]", "page[limit]", "max_results", "maxresults"}
)
_WHOLE_LINK = re.compile(r'headers\s*\.\s*("?)link\1(?![\w"-])')
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = 3650 * 86400.0  # ten years: longer is a typo, and asyncio cannot sleep for 1e300 s
_SIZE = re.compile(r"^([0-9]+)(B|KB|MB|GB|KiB|MiB|GiB)$")
MAX_SIZE_DIGITS = 15  # a petabyte of GB: far beyond any body, far below CPython's int-string limit
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
_SQL_PARAMETER = re.compile(r"%\((\w+)\)s")


def default_paths(root: Path | None = None) -> list[Path]:
    """The bundled sources: `sources/*.yaml` under `root` (default: the current directory)."""
    return sorted((root or Path()).joinpath("sources").glob("*.yaml"))


def load(path: Path, overrides: Sequence[Override] = ()) -> spec.Source:
    """Read one source file and return a ready-to-run Source; ConfigError lists every problem.
    `overrides` (`--set`, runner/overrides.py) change the YAML as read, before it is validated."""
    try:
        with path.open("rb") as file:
            text = file.read(MAX_FILE_BYTES + 1)  # enough to tell it is too large, never a whole huge file
    except OSError as error:  # a missing or unreadable file is the user's to fix, not a crash
        raise ConfigError([Problem(str(path), 1, "", f"cannot read the file: {error.strerror}")]) from None
    return loads(text, path, overrides)


def loads(text: bytes | str, path: Path, overrides: Sequence[Override] = ()) -> spec.Source:
    """Like `load`, for text already read; `path` names the file in messages and finds syncrun.yaml."""
    doc, problems = read(text, str(path))
    if doc is None:
        raise ConfigError(problems)
    if overrides and (refused := apply_overrides(doc, overrides)):
        raise ConfigError(refused)
    project, project_problems = _project(path)
    schema_problems, blocked = check(doc, "source.schema.json")
    problems += project_problems + schema_problems
    source = _Builder(doc, path, project, problems, blocked).source()
    if problems or source is None:
        raise ConfigError(blame(list(dict.fromkeys(problems)), overrides))
    return source


def validate(paths: Iterable[Path]) -> dict[Path, list[Problem]]:
    """Every problem of every file (an empty list for a good one). Unexpected errors propagate."""
    results: dict[Path, list[Problem]] = {}
    for path in paths:
        try:
            load(path)
            results[path] = []
        except ConfigError as error:
            results[path] = error.problems
    return results


def parse_duration(value: str | float) -> float:
    """`500ms`, `30s`, `1m`, `1h`, `7d` or a number of seconds -> seconds; ValueError otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        seconds = float(value)
    elif (match := _DURATION.match(value) if isinstance(value, str) else None) is not None:
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    else:
        raise ValueError(f"{show(value)} is not a duration (use 500ms, 30s, 1m, 1h, 7d)")
    if not seconds <= MAX_DURATION:  # also inf and nan
        raise ValueError(f"{show(value)} is out of range: must be at most 3650d")
    return seconds


def parse_size(value: str | int) -> int:
    """`512KB`, `10MB`, `1GB` (`KiB`/`MiB`/`GiB` binary) or a number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{show(value)} is not a size (use 512KB, 10MB, 1GB or a number of bytes)")
    if len(match[1].lstrip("0")) > MAX_SIZE_DIGITS:
        raise ValueError(f"{show(value)} is out of range: a size has at most {MAX_SIZE_DIGITS} digits")
    return int(match[1]) * _SIZE_UNITS[match[2]]


# --- project defaults (syncrun.yaml) ------------------------------------------------------------------
_SYNC_STATUS = spec.QualifiedName(None, "sync_status")


@dataclass(frozen=True)
class Project:
    """Defaults shared by the sources below a syncrun.yaml; the built-in ones when there is none."""

    status_table: spec.QualifiedName = _SYNC_STATUS
    status_key: str = "appid"
    key: str = "appid"
    key_type: str = "int"
    # The shared blocks a source may `use:` (None: a block with problems; no map: the file has some).
    auth: Mapping[str, spec.Auth | None] | None = field(default_factory=dict)
    file: str | None = None  # the syncrun.yaml, as messages name it (None: there is none)


def find_project(source: Path) -> Path | None:
    """The nearest syncrun.yaml, walking up from the source file's directory."""
    directory = source.absolute().parent
    for candidate in (directory, *directory.parents):
        if (candidate / PROJECT_FILE).is_file():
            return candidate / PROJECT_FILE
    return None


def _project(source: Path) -> tuple[Project, list[Problem]]:
    found = find_project(source)
    if found is None:
        return Project(), []
    shown = found if source.is_absolute() else Path(os.path.relpath(found))
    doc, problems = read(found.read_bytes(), str(shown))
    schema, blocked = check(doc, "project.schema.json") if doc is not None else ([], set())
    # A broken section keeps the others: a problem in `auth:` must not also drop the entity key, or
    # every source below gets a second, misleading error about `appid` (review16b N11).
    if doc is None or not isinstance(doc.data, dict) or any(p[:1] in ((), ("status",), ("entities",)) for p in blocked):
        return Project(auth=None, file=str(shown)), problems + schema
    status, entities = doc.data.get("status", {}), doc.data.get("entities", {})
    default = Project()
    # The shared auth blocks are built like a source's own, their problems placed in syncrun.yaml;
    # not when the file has other problems (None: a source's `use:` reports nothing more).
    blocks: Mapping[str, spec.Auth | None] | None = None
    if problems or schema:
        problems += schema
    else:
        blocks = authblocks.project_blocks(_Builder(doc, shown, default, problems, set()), doc.data.get("auth"))
    return Project(
        status_table=_qualified(status["table"]) if "table" in status else default.status_table,
        status_key=status.get("key", default.status_key),
        key=entities.get("key", default.key),
        key_type=entities.get("key_type", default.key_type),
        auth=blocks,
        file=str(shown),
    ), problems


def _qualified(text: str) -> spec.QualifiedName:
    schema_name, _, name = text.rpartition(".")
    return spec.QualifiedName(schema_name or None, name)


# --- building the spec, section by section ----------------------------------------------------------
def _rule(name: str, when: str, outcome: spec.Outcome, message: str | None = None) -> spec.OutcomeRule:
    template = message_template(message) if message else None
    return spec.OutcomeRule(name=name, when=Expression.compile(when), outcome=outcome, message=template)


# Appended after the user's rules, so a source only states what is special about its API.
DEFAULT_OUTCOMES = (
    _rule("default 2xx", "status >= `200` && status < `300`", spec.Outcome.SUCCESS),
    _rule("default 404", "status == `404`", spec.Outcome.SKIP),
    _rule("default 4xx", "status >= `400` && status < `500`", spec.Outcome.ERROR, "HTTP {status}"),
)


# A window or token interval outside these is a typo, and the shared limiters' timestamps could not hold it.
MIN_PERIOD, MAX_PERIOD = 0.01, 365 * 86400.0
_PERIOD_WORDS = "from 10ms to 365d"


class _Builder:
    """Turns a schema-checked document into spec objects. A section with schema errors is skipped
    (its problems are reported already) while the others are still checked, so one run reports all."""

    def __init__(self, doc: Document, path: Path, project: Project, problems: list[Problem], blocked: set[Path_]):
        self.doc, self.path, self.project, self.problems, self.blocked = doc, path, project, problems, blocked
        self.raw: dict[str, JSON] = doc.data if isinstance(doc.data, dict) else {}

    def add(self, path: Path_, message: str) -> None:
        self.problems.append(self.doc.problem(path, message))

    def usable(self, path: Path_) -> bool:
        return not any(error[: len(path)] == path for error in self.blocked)

    def section(self, key: str, default: JSON = None) -> JSON:
        """The section's raw value; None when it has schema problems (already reported) or is missing.
        A list section is usable unless the list itself is wrong: its items are checked one by one."""
        usable = (key,) not in self.blocked if isinstance(self.raw.get(key), list) else self.usable((key,))
        return self.raw.get(key, default) if usable else None

    def source(self) -> spec.Source | None:
        if not isinstance(self.doc.data, dict):
            return None
        name = self.section("name")
        entities = self.entities()
        columns = None if entities is None else entities.column_names
        request = self.request(columns, entities is not None and entities.type is spec.SelectionType.LIST)
        parts: dict[str, JSON] = {
            "pagination": self.pagination(),
            "rate_limit": self.rate_limit(name or "source"),
            "retry": self.retry(),
            "backoff": self.backoff(),
            "outcomes": self.outcomes(columns),
            "records": self.optional_expression(("records",), self.mapping_roots(columns, record=False)),
            "incremental": self.incremental(columns, entities, request),
            "writes": self.deletes(self.writes(columns), entities),
            "status": self.status(name or "source", columns, entities is not None and entities.type.value == "list"),
            "before": self.steps("before"),
            "after": self.steps("after"),
            "schedule": self.schedule(),
            "auth": self.auth(),
        }
        self.incremental_steps(parts["incremental"], parts["after"])
        keys = ("description", "job_type", "concurrency", "write_batch", "fail_ratio")
        scalars: dict[str, JSON] = {k: self.raw[k] for k in keys if k in self.raw and self.usable((k,))}
        if "fail_ratio" in scalars:
            scalars["fail_ratio"] = float(scalars["fail_ratio"])
        if self.problems or name is None or entities is None or request is None:
            return None
        scalars.setdefault("job_type", name)
        return spec.Source(name=name, path=self.path, entities=entities, request=request, **parts, **scalars)

    # -- entities ----------------------------------------------------------------------------------
    def entities(self) -> spec.Entities | None:
        raw = self.section("entities")
        if raw is None:
            return None
        kind = spec.SelectionType(raw.get("type", "default"))
        key = raw.get("key", self.project.key)
        declared = list(raw.get("columns", {}).items())
        key_type = self.key_type(raw, dict(declared), key)
        if declared and declared[0][0] != key:
            self.add(
                ("entities", "columns"), f"the key column '{key}' must come first (columns: {{{key}: {key_type}, ...}})"
            )
        if kind is spec.SelectionType.LIST:
            declared = []
            if "limit" in raw:  # a catalogue has no entities to count: its cap is on records
                self.add(
                    ("entities", "limit"),
                    "does not apply to a list source: cap the records a run writes with pagination.max_items"
                    " (or --limit)",
                )
        elif not declared:
            declared = [(key, key_type)]
        extra: dict[str, JSON] = {
            k: raw[k]
            for k in ("interval_column", "priority_column", "syncable_column", "max_consecutive_errors")
            if k in raw
        }
        if "refresh_interval" in raw:
            extra["refresh_interval"] = self.duration(("entities", "refresh_interval"), raw["refresh_interval"])
        if "sql" in raw:
            extra["sql"] = self.sql(("entities", "sql"), raw["sql"])
        if "function" in raw:
            extra["function"] = _qualified(raw["function"])
            extra["args"] = tuple((name, _function_arg(value)) for name, value in raw.get("args", {}).items())
        # join / where / order (type default only: the schema refuses them elsewhere)
        extra.update(
            filters.read(raw, key, lambda path, message: self.add(("entities", *path), message), parse_duration)
        )
        columns = tuple(spec.EntityColumn(name, type_) for name, type_ in declared)
        return spec.Entities(
            type=kind, key=key, key_type=key_type, columns=columns, limit=raw.get("limit", DEFAULT_LIMIT), **extra
        )

    def key_type(self, raw: dict[str, JSON], columns: dict[str, str], key: str) -> str:
        explicit, declared = raw.get("key_type"), columns.get(key)
        if explicit and declared and explicit != declared:
            self.add(("entities", "columns", key), f"type {declared} differs from key_type {explicit}: make them equal")
        key_type = cast(str, explicit or declared or self.project.key_type)
        if key_type not in ("int", "bigint", "text"):
            self.add(("entities", "columns", key), f"the key column must be int, bigint or text, not {key_type}")
        return key_type

    def sql(self, path: Path_, text: str) -> str:
        _check_sql(self, path, text, allowed=ENGINE_PARAMETERS, required=("limit", "after_key"))
        return text

    # -- request -----------------------------------------------------------------------------------
    def request(self, columns: frozenset[str] | None, listed: bool) -> spec.Request | None:
        raw = self.raw.get("request")
        if not isinstance(raw, dict):
            return None
        # Templates are checked even when another request key is wrong: they need only themselves.
        templates: dict[Path_, spec.Template | None] = {
            path: self.template(path, value, columns, listed)
            for path, value in [(("request", "url"), raw.get("url"))]
            + [(("request", part, k), v) for part in ("query", "headers") for k, v in _items(raw.get(part))]
            if isinstance(value, str | int | float) and self.usable(path)
        }
        url = templates.get(("request", "url"))
        if url is not None:
            self.check_url(url, [str(name) for name, _ in _items(raw.get("query"))])
        if not self.usable(("request",)) or url is None:
            return None
        extra: dict[str, JSON] = {k: raw[k] for k in ("method", "verify_tls", "conditional") if k in raw}
        for part in ("query", "headers"):
            extra[part] = tuple((str(p[2]), t) for p, t in templates.items() if p[1] == part and t is not None)
        if "timeout" in raw:
            extra["timeout"] = self.duration(("request", "timeout"), raw["timeout"], positive=True)
        if "max_body" in raw:
            extra["max_body"] = self.size(("request", "max_body"), raw["max_body"])
        if "batch" in raw:
            extra["batch"] = self.batch(raw["batch"], columns)
        return spec.Request(url=url, **extra)

    # -- auth (runner/authblocks.py) --------------------------------------------------------------------
    def auth(self) -> spec.Auth | None:
        raw = self.section("auth")
        if not isinstance(raw, dict):
            return None
        if "use" in raw:
            auth = authblocks.use(self, str(raw["use"]), self.project.auth, self.project.file)
        else:
            auth = authblocks.block(self, raw, ("auth",))
        if auth is not None:
            authblocks.check_overlap(self, self.raw.get("request"), auth)
        return auth

    def batch(self, raw: JSON, columns: frozenset[str] | None) -> spec.Batch | None:
        roots = self.mapping_roots(columns, record=False)  # evaluated over the mapping context (engine.part)
        record = self.expression(("request", "batch", "record"), raw["record"], roots)
        extra = {k: raw[k] for k in ("separator",) if k in raw}
        return None if record is None else spec.Batch(size=raw["size"], param=raw["param"], record=record, **extra)

    def template(self, path: Path_, value: JSON, columns: frozenset[str] | None, listed: bool) -> spec.Template | None:
        try:
            template = templating.parse(value if isinstance(value, str) else str(value))
        except ValueError as error:
            self.add(path, str(error))
            return None
        for column in sorted(template.columns):
            if listed:
                self.add(path, f"{{{column}}}: a list source has no entity columns to fill in")
            elif columns is not None and column not in columns:
                have = ", ".join(sorted(columns))
                self.add(
                    path,
                    f"{{{column}}} is not an entity column (have: {have}{did_you_mean(column, columns, inside=True)})",
                )
        self.check_text(path, template)
        return template

    def check_text(self, path: Path_, template: spec.Template) -> None:
        """What the file itself puts in a request: one line of text, and ASCII in a header (httpx
        sends header values as ASCII). Settings' values are checked at run start (runner/preflight.py)."""
        if path == ("request", "url") and not template.settings:
            return  # check_url parses the whole URL
        written = "".join(
            s.text if isinstance(s, spec.Literal) else s.default or ""
            for s in template.segments
            if not isinstance(s, spec.Column)
        )
        if (char := next((c for c in written if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F), None)) is not None:
            self.add(path, f"contains a control character (U+{ord(char):04X}): a request value is one line of text")
        elif path[1] == "headers" and (char := next((c for c in written if not c.isascii()), None)) is not None:
            self.add(path, f"contains a non-ASCII character (U+{ord(char):04X}): HTTP header values must be ASCII")

    def check_url(self, url: spec.Template, query: list[str]) -> None:
        """`query`: request.query's names (a name also in the URL's own query would be sent twice)."""
        first = url.segments[0] if url.segments else None
        if isinstance(first, spec.Literal) and not re.match(r"https?://", first.text, re.IGNORECASE):
            self.add(("request", "url"), "must start with http:// or https:// (or a setting such as ${env.API_URL})")
        elif not url.settings:  # nothing left to fill in at run start: check the whole URL now
            placeholders = dict.fromkeys(url.columns, "0")
            rendered = templating.render(url, placeholders, templating.Settings({}, Redactor()), url=True)
            if reason := templating.url_problem(rendered) or templating.query_problem(rendered, query):
                self.add(("request", "url"), f"is not a usable URL: {reason}")
        head = ""
        for segment in url.segments:
            if isinstance(segment, spec.Column):
                if "/" not in re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", head):
                    self.add(
                        ("request", "url"), f"{{{segment.name}}} would be in the host: put entity values in the path"
                    )
                return
            head += segment.text if isinstance(segment, spec.Literal) else "x"

    # -- pagination, rate limit, retry --------------------------------------------------------------
    def pagination(self) -> spec.Pagination | None:
        raw = self.section("pagination", {})
        if raw is None:
            return None
        keys = ("param", "start", "max_pages", "max_items", "page_size", "size_param")
        extra: dict[str, Any] = {k: raw[k] for k in keys if k in raw}
        for key in ("cursor", "next", "has_more", "total", "total_pages"):
            if key in raw and self.usable(("pagination", key)):
                extra[key] = self.reply_expression(("pagination", key), raw[key])
        origins = list(enumerate(raw.get("allow_origins", ())))
        for i, origin in origins:
            if self.usable(("pagination", "allow_origins", i)) and (reason := _origin_problem(origin)):
                self.add(("pagination", "allow_origins", i), f"{show(origin)} is not a usable origin: {reason}")
        extra["allow_origins"] = tuple(o.rstrip("/").lower() for _, o in origins)
        kind = spec.PaginationType(raw.get("type", "none"))
        if "size_param" in raw and "page_size" not in raw:
            self.add(("pagination", "size_param"), "sends page_size, which is not set: add page_size")
        if "size_param" in raw and raw["size_param"] == raw.get("param"):
            self.add(
                ("pagination", "size_param"),
                f"{show(raw['size_param'])} is also pagination.param: the page size and the position need"
                " two parameters",
            )
        self.check_query_page_size(raw, kind)
        request = self.raw.get("request")
        if (
            isinstance(request, dict)
            and request.get("conditional") is True
            and (kind, "batch" in request)
            != (
                spec.PaginationType.NONE,
                False,
            )
        ):
            self.add(
                ("request", "conditional"),
                "conditional requests need one request per entity: a paged or batched reply's validator"
                " does not cover the entity's whole data; remove `conditional: true`",
            )
        if kind is not spec.PaginationType.NONE and isinstance(request, dict) and "batch" in request:
            self.add(
                ("request", "batch"),
                f"cannot be combined with pagination (type: {kind.value}): a batched request lists"
                " several entities in one reply, a paged one follows one listing; remove one of them",
            )
        return spec.Pagination(type=kind, missing_next=spec.MissingNext(raw.get("missing_next", "fail")), **extra)

    def check_query_page_size(self, raw: dict[str, JSON], kind: spec.PaginationType) -> None:
        """A page size written in request.query instead of pagination.page_size: the request sends it,
        but pagination cannot tell a full page from the last one (the guard against a silently cut
        listing is off), or size_param would send page_size over it. Only refused when nothing else
        (has_more, total, total_pages) says where the listing ends."""
        query = self.raw.get("request", {}).get("query") if isinstance(self.raw.get("request"), dict) else None
        if kind is spec.PaginationType.NONE or not isinstance(query, dict):
            return
        size_param = raw.get("size_param")
        # Nothing else says where the listing ends (has_more, total, total_pages): page_size is the guard.
        unguarded = not {"page_size", "has_more", "total", "total_pages"} & raw.keys()
        for name, value in query.items():
            path = ("request", "query", name)
            if name == size_param:
                self.add(
                    path,
                    f"is pagination.size_param, which sends pagination.page_size: remove it here"
                    f" (and set page_size: {value})"
                    if "page_size" not in raw
                    else "is pagination.size_param, which sends pagination.page_size: remove it here",
                )
            elif unguarded and size_param is None and name.lower() in PAGE_SIZE_PARAMS:
                self.add(
                    path,
                    f"looks like a page size: write it as pagination.page_size: {value} and size_param: {name},"
                    " so a full page with no next page is caught instead of ending the listing",
                )

    def schedule(self) -> spec.Schedule | None:
        raw = self.section("schedule")
        return None if raw is None else spec.Schedule(**raw)

    def rate_limit(self, name: str) -> spec.RateLimit | None:
        raw = self.section("rate_limit")
        if raw is None:
            return None
        common: dict[str, Any] = {
            "bucket": raw.get("bucket", name),
            "shared": spec.LimitScope(raw.get("shared", "process")),
        }
        if "margin" in raw:
            margin = self.duration(("rate_limit", "margin"), raw["margin"])
            if not 0 <= margin <= 60:
                self.add(("rate_limit", "margin"), f"{show(raw['margin'])} is out of range: from 0s to 60s")
            common["margin"] = margin
        burst = raw.get("burst", 1)
        if "rate" in raw:  # the token form: `rate: 0.33/s` (the schema has checked the form and excluded requests/per)
            number, unit = str(raw["rate"]).split("/")
            if float(number) <= 0:
                self.add(("rate_limit", "rate"), f"{show(raw['rate'])} is out of range: must be more than 0")
                return None
            per = parse_duration(f"1{unit}") / float(number)  # seconds per token
            if not MIN_PERIOD <= per <= MAX_PERIOD:
                self.add(("rate_limit", "rate"), f"{show(raw['rate'])} is out of range: {_PERIOD_WORDS} per token")
                return None
            return spec.RateLimit(requests=1, per=per, burst=burst, form=spec.LimitForm.TOKEN, **common)
        if burst > raw["requests"]:
            self.add(("rate_limit", "burst"), f"{burst} is more than requests ({raw['requests']}): lower it")
        per = self.duration(("rate_limit", "per"), raw["per"], positive=True)
        if per > 0 and not MIN_PERIOD <= per <= MAX_PERIOD:  # 0: already reported by duration()
            self.add(("rate_limit", "per"), f"{show(raw['per'])} is out of range: {_PERIOD_WORDS}")
        return spec.RateLimit(requests=raw["requests"], per=per, burst=burst, **common)

    def retry(self) -> spec.Retry | None:
        raw = self.section("retry", {})
        if raw is None:
            return None
        extra: dict[str, JSON] = {k: raw[k] for k in ("attempts",) if k in raw}
        extra |= {k: float(raw[k]) for k in ("factor", "jitter") if k in raw}
        extra |= {k: self.duration(("retry", k), raw[k]) for k in ("initial", "max_delay", "max_wait") if k in raw}
        if "statuses" in raw:
            extra["statuses"] = frozenset(raw["statuses"])
        retry = spec.Retry(**extra)
        if retry.initial > retry.max_delay:
            self.add(
                ("retry", "initial"),
                f"the first backoff ({retry.initial:g}s) is above max_delay ({retry.max_delay:g}s)",
            )
        return retry

    def backoff(self) -> spec.Backoff | None:
        raw = self.section("backoff", {})
        if raw is None:
            return None
        extra: dict[str, JSON] = {
            k: self.duration(("backoff", k), raw[k], positive=True) for k in ("initial", "cap") if k in raw
        }
        extra |= {k: float(raw[k]) for k in ("factor",) if k in raw}
        extra |= {k: raw[k] for k in ("transient_runs",) if k in raw}
        backoff = spec.Backoff(**extra)
        if backoff.initial > backoff.cap:
            self.add(("backoff", "initial"), f"the first wait ({backoff.initial:g}s) is above cap ({backoff.cap:g}s)")
        return backoff

    # -- outcomes ----------------------------------------------------------------------------------
    def outcomes(self, columns: frozenset[str] | None) -> tuple[spec.OutcomeRule, ...] | None:
        raw = self.section("outcomes", [])
        if raw is None:
            return None
        roots: Roots = {"status": None, "headers": None, "body": None, "entity": columns}
        rules: list[spec.OutcomeRule] = []
        names: dict[str, int] = {}
        for i, rule in enumerate(raw):
            path = ("outcomes", i)
            if not self.usable(path):
                continue
            name = rule.get("name", f"rule {i + 1}")
            if "name" in rule and names.setdefault(name, i) != i:
                self.add((*path, "name"), f"duplicate rule name '{name}' (also outcomes[{names[name]}])")
            when = self.expression((*path, "when"), rule["when"], roots)
            extra: dict[str, JSON] = {k: rule[k] for k in ("stamp",) if k in rule}
            if "message" in rule:
                extra["message"] = self.message((*path, "message"), rule["message"], roots)
            if "duration" in rule:
                extra["duration"] = self.duration((*path, "duration"), rule["duration"], positive=True)
            extra["set"] = self.assignments((*path, "set"), rule.get("set", {}), roots)
            if when is not None:
                rules.append(spec.OutcomeRule(name=name, when=when, outcome=spec.Outcome(rule["outcome"]), **extra))
        return (*rules, *DEFAULT_OUTCOMES)

    def message(self, path: Path_, text: str, roots: Roots) -> spec.MessageTemplate | None:
        try:
            parts = split_message(text)
        except ValueError as error:
            self.add(path, str(error))
            return None
        compiled = [self.expression(path, part, roots) if is_expression else part for is_expression, part in parts]
        if any(part is None for part in compiled):
            return None
        return spec.MessageTemplate(text=text, parts=tuple(cast(list[str | Expression], compiled)))

    # -- writes ------------------------------------------------------------------------------------
    def writes(self, columns: frozenset[str] | None) -> tuple[spec.Write, ...] | None:
        raw = self.section("writes")
        if raw is None:
            return None
        writes = (self.write(("writes", i), write, columns) for i, write in enumerate(raw))
        primary = [i for i, write in enumerate(raw) if isinstance(write, dict) and write.get("primary") is True]
        for i in primary[1:]:
            self.add(("writes", i, "primary"), f"writes[{primary[0]}] is the primary write already: keep one")
        return tuple(w for i, w in enumerate(writes) if w is not None and self.usable(("writes", i)))

    def write(self, path: Path_, raw: JSON, entity_columns: frozenset[str] | None) -> spec.Write | None:
        if not self.usable(path):
            return None
        rows = self.optional_expression((*path, "rows"), self.mapping_roots(entity_columns), raw)
        roots = self.mapping_roots(entity_columns, item="rows" in raw)
        fields = self.assignments((*path, "columns"), raw["columns"], roots)
        lookups = tuple(
            self.lookup((*path, "lookups", i), lookup, roots) for i, lookup in enumerate(raw.get("lookups", []))
        )
        mapped = [*raw["columns"], *(lookup.column for lookup in lookups)]
        self.check_columns(path, raw, mapped)
        target = "function" if "function" in raw else "table"
        return spec.Write(
            table=_qualified(raw[target]),
            function=_qualified(raw["function"]) if "function" in raw else None,
            key=tuple(raw.get("key", ())),
            columns=fields,
            mode=spec.WriteMode(raw.get("mode", "upsert")),
            rows=rows,
            merge=tuple((column, spec.Merge(how)) for column, how in raw.get("merge", {}).items()),
            when=self.optional_expression((*path, "when"), roots, raw),
            replace_by=tuple(raw.get("replace_by", ())),
            lookups=lookups,
            on_delete=spec.OnDelete(raw.get("on_delete", "delete")),
            primary=raw.get("primary", False),
        )

    def deletes(
        self, writes: tuple[spec.Write, ...] | None, entities: spec.Entities | None
    ) -> tuple[spec.Write, ...] | None:
        """With an `outcome: delete` rule, each deleting write's `delete_by` (runner.deletes), or why
        its rows of an entity cannot be told: never a guess."""
        rules = [
            i
            for i, r in enumerate(self.section("outcomes") or [])
            if isinstance(r, dict) and r.get("outcome") == "delete"
        ]
        if not rules or writes is None or entities is None or len(writes) != len(self.raw["writes"]):
            return writes
        if entities.type is spec.SelectionType.LIST:
            self.add(("outcomes", rules[0], "outcome"), "a list source has no entities to delete (a page is no entity)")
            return writes
        built = []
        for i, write in enumerate(writes):
            if write.on_delete is spec.OnDelete.KEEP:
                built.append(write)
                continue
            delete_by, why = deletes.columns(write, entities.key)
            if why is not None:
                where = ("writes", i, "on_delete") if "on_delete" in self.raw["writes"][i] else ("writes", i)
                self.add(where, f"outcome delete (outcomes[{rules[0]}]) {why}")
            built.append(replace(write, delete_by=delete_by))
        return tuple(built)

    def lookup(self, path: Path_, raw: JSON, roots: Roots) -> spec.Lookup:
        value = self.expression((*path, "value"), raw["value"], roots) or Expression.compile("@")
        names = {k: raw[k] for k in ("column", "key", "returning")}
        return spec.Lookup(table=_qualified(raw["table"]), value=value, **names)

    def check_columns(self, path: Path_, raw: JSON, mapped: list[str]) -> None:
        """Keys, replace_by and merge name mapped columns; each column is written once."""
        for i, column in enumerate(mapped[len(raw["columns"]) :]):
            if column in mapped[: len(raw["columns"]) + i]:
                self.add((*path, "lookups", i, "column"), f"'{column}' is already written by this write")
        for part in ("key", "replace_by"):
            for i, column in enumerate(raw.get(part, ())):
                if column not in mapped:
                    self.add((*path, part, i), f"'{column}' is not a mapped column (have: {', '.join(mapped)})")
        merge = raw.get("merge", {})
        if merge and raw.get("mode") == "insert":
            self.add((*path, "merge"), "merge applies to mode: upsert only (insert never updates a row)")
        for column in merge:
            if column not in mapped or column in raw["key"]:
                reason = "is a key column" if column in mapped else "is not a mapped column"
                self.add((*path, "merge", column), f"'{column}' {reason}: only mapped non-key columns merge")
        greatest = [c for c, how in merge.items() if how == "greatest"]
        for column in (c for c, how in merge.items() if how == "with_greatest" and len(greatest) != 1):
            found = f"it has {', '.join(greatest)}" if greatest else "it has none"
            self.add((*path, "merge", column), f"with_greatest follows the write's one greatest column; {found}")

    def mapping_roots(self, entity: frozenset[str] | None, *, record: bool = True, item: bool = False) -> Roots:
        """The mapping context: `records` sees no record yet, and only a write with rows has `item`."""
        roots: dict[str, frozenset[str] | None] = {"record": None, "item": None} if item else {"record": None}
        roots |= {
            "entity": entity,
            "response": frozenset({"status", "headers", "body"}),
            "body": None,
            "run": RUN_FIELDS,
        }
        return roots if record else {k: v for k, v in roots.items() if k != "record"}

    # -- incremental -------------------------------------------------------------------------------
    def incremental(
        self, columns: frozenset[str] | None, entities: spec.Entities | None, request: spec.Request | None
    ) -> spec.Incremental | None:
        """The watermark of a list source (runner/watermarks.py), and `${incremental.since}` in the
        request only where there is one."""
        raw, path = self.section("incremental"), ("incremental",)
        templates: list[tuple[Path_, spec.Template]] = [] if request is None else [(("request", "url"), request.url)]
        for part in ("query", "headers"):
            templates += [(("request", part, k), t) for k, t in getattr(request, part, ())]
        uses = [path for path, t in templates if any(s.kind == templating.WATERMARK[0] for s in t.settings)]
        if "incremental" not in self.raw:
            for where in uses:
                self.add(where, "${incremental.since} needs an incremental: block (its cursor and start)")
            return None
        if raw is None:
            return None
        if entities is not None and entities.type is not spec.SelectionType.LIST:
            self.add(path, "applies to list sources only (entities: {type: list})")
        if request is not None and not uses:
            self.add(path, "the request never uses ${incremental.since}: put it in request.query or request.url")
        source = spec.IncrementalFrom(raw.get("from", "cursor"))
        try:
            start = watermarks.parse(raw["start"], 0 if isinstance(raw["start"], int) else datetime.now(UTC))
        except ValueError as error:
            self.add((*path, "start"), str(error))
            return None
        if isinstance(start, datetime) and start > datetime.now(UTC):
            self.add((*path, "start"), f"{show(raw['start'])} is in the future: nothing would ever be asked for")
        if source is spec.IncrementalFrom.LISTING_START and isinstance(start, int):
            self.add((*path, "start"), "from: listing_start keeps a time: start must be a timestamp")
        lookback: float | int = 0
        if "lookback" in raw and isinstance(start, int):
            if not isinstance(raw["lookback"], int) or not 0 <= raw["lookback"] <= watermarks.MAX_INTEGER:
                self.add(
                    (*path, "lookback"), f"{show(raw['lookback'])} is not a whole number (the start is an integer)"
                )
            else:
                lookback = raw["lookback"]
        elif "lookback" in raw:
            lookback = self.duration((*path, "lookback"), raw["lookback"])
        cursor = None
        if "cursor" in raw:
            if source is spec.IncrementalFrom.LISTING_START:
                self.add((*path, "cursor"), "from: listing_start reads no cursor (remove it)")
            cursor = self.expression((*path, "cursor"), raw["cursor"], self.mapping_roots(columns))
        elif source is spec.IncrementalFrom.CURSOR:
            self.add(path, "cursor is required (e.g. cursor: record.updated_at), unless from: listing_start")
        return spec.Incremental(cursor=cursor, from_=source, start=start, lookback=lookback)

    def incremental_steps(self, incremental: JSON, after: JSON) -> None:
        """An incremental listing holds only what changed since the watermark: a `when: complete`
        step, written for a whole listing (the cleanup `delete … where seen_at < %(started_at)s`),
        would delete every row that did not change. Refused rather than guessed at."""
        if incremental is None or not isinstance(after, tuple):
            return
        for index, step in enumerate(after):
            if isinstance(step, spec.Step) and step.when is spec.StepWhen.COMPLETE:
                self.add(
                    ("after", index, "when"),
                    "an incremental listing reads only what changed since the watermark, never the whole"
                    " catalogue, so a `when: complete` step (a cleanup of rows not seen) would delete every"
                    " unchanged row; remove it (prune from a source without incremental:), or use"
                    " when: always for a step that does not assume a whole listing",
                )

    # -- status ------------------------------------------------------------------------------------
    def status(self, name: str, columns: frozenset[str] | None, listed: bool) -> spec.Status | None:
        raw = self.section("status", {})
        if listed:  # a page is no entity: a stamp would have been keyed by the page number
            if isinstance(self.raw.get("status"), dict):
                self.add(
                    ("status",),
                    "a list source has no entities to stamp: write status: false (rows of a status"
                    " table are written by a write, e.g. mode: insert)",
                )
            return None
        if raw is None or raw is False:
            return None
        roots = self.mapping_roots(columns, record=False)
        return spec.Status(
            set=self.assignments(("status", "set"), raw.get("set", {}), roots),
            table=_qualified(raw["table"]) if "table" in raw else self.project.status_table,
            key=raw.get("key", self.project.status_key),
            column=raw.get("column", f"last_{name}_sync"),
            **{k: raw[k] for k in ("stamp_on_skip", "error_columns") if k in raw},
        )

    def assignments(self, path: Path_, raw: dict[str, JSON], roots: Roots) -> tuple[spec.Field, ...]:
        """`column: expression` pairs; a plain true/false/number/null is that literal value."""
        fields = []
        for column, value in raw.items():
            text = value if isinstance(value, str) else f"`{json.dumps(value)}`"
            if (expression := self.expression((*path, column), text, roots)) is not None:
                fields.append(spec.Field(column, expression))
        return tuple(fields)

    def steps(self, key: str) -> tuple[spec.Step, ...] | None:
        raw = self.section(key, [])
        if raw is None:
            return None
        steps = [(i, step) for i, step in enumerate(raw) if self.usable((key, i))]
        for i, step in steps:
            _check_sql(self, (key, i, "sql"), step["sql"], allowed=("job_id", "started_at", "source"), required=())
        return tuple(spec.Step(sql=step["sql"], when=spec.StepWhen(step.get("when", "always"))) for _, step in steps)

    # -- values ------------------------------------------------------------------------------------
    def duration(self, path: Path_, value: JSON, *, positive: bool = False) -> float:
        try:
            seconds = parse_duration(value)  # the schema has checked the form, not the range
        except ValueError as error:
            self.add(path, str(error))
            return 1.0  # a stand-in so the other checks go on; the problem stops the load
        if positive and seconds <= 0:
            self.add(path, f"{show(value)} is out of range: must be more than 0")
        return seconds

    def size(self, path: Path_, value: JSON) -> int:
        try:
            size = parse_size(value)
        except ValueError as error:
            self.add(path, str(error))
            return 1
        if size == 0:  # like a 0s timeout: every response would fail
            self.add(path, f"{show(value)} is out of range: must be more than 0")
            return 1
        return size

    def optional_expression(self, path: Path_, roots: Roots | None, raw: JSON = None) -> Expression | None:
        raw = self.raw if raw is None else raw
        key = path[-1]
        return self.expression(path, raw[key], roots) if key in raw and self.usable(path) else None

    def reply_expression(self, path: Path_, text: str) -> Expression | None:
        """An expression over one reply. Before headers were visible these read the body itself, so an
        unknown name is most likely a body field: the message says how to write it now."""
        expression, messages = compile_checked(text, PAGINATION_ROOTS)
        for message in messages:
            name = re.match(r"unknown name '([^']*)'", message)
            hint = f"; the reply body is `body`: write body.{name[1]})" if name else ""
            self.add(path, message[:-1] + hint if hint else message)
        if expression is not None and _WHOLE_LINK.search(text) and path[-1] in ("cursor", "next"):
            self.add(path, 'headers.link is the whole Link header (<url>; rel="next", ...): use type: link')
            return None
        return expression

    def expression(self, path: Path_, text: str, roots: Roots | None) -> Expression | None:
        """Compiled once; unknown functions and context names are problems (jmespath checks neither)."""
        expression, messages = compile_checked(text, roots)
        for message in messages:
            self.add(path, message)
        return expression


def _check_sql(
    builder: _Builder, path: Path_, text: str, *, allowed: tuple[str, ...], required: tuple[str, ...]
) -> None:
    used = set(_SQL_PARAMETER.findall(text))
    for name in sorted(used - set(allowed)):
        builder.add(path, f"unknown parameter %({name})s (use {', '.join(f'%({a})s' for a in allowed)})")
    for name in required:
        if name not in used:
            builder.add(path, f"the query must use %({name})s: the engine pages through it by key")
    if "%" in _SQL_PARAMETER.sub("", text).replace("%%", ""):
        builder.add(path, "a literal % must be written %% (parameters are written %(name)s)")


def _origin_problem(origin: str) -> str | None:
    """What makes an allow_origins entry something a next URL could never match, in words."""
    if reason := templating.url_problem(origin):
        return reason
    if "*" in origin:
        return "wildcards (*) are not supported: list each origin, as https://cdn.example.com"
    url = httpx.URL(origin)
    if url.userinfo:
        return "it has a user name or password (user@host): an origin is scheme://host[:port]"
    if url.raw_path not in (b"", b"/") or url.query or url.fragment:
        return "it has a path, query or fragment: an origin is scheme://host[:port]"
    return None


def _items(value: JSON) -> list[tuple[str, JSON]]:
    return list(value.items()) if isinstance(value, dict) else []


def _function_arg(value: JSON) -> spec.FunctionArg:
    if isinstance(value, dict):
        return spec.FunctionArg(parameter=value["param"])
    return spec.FunctionArg(value=value)
