"""The frozen, typed form of a source file. `config.load` builds it; nothing downstream sees YAML.

Field names match the YAML keys (schemas/source.schema.json), so reading one tells you the other.
Durations are float seconds, sizes are int bytes, expressions are compiled, templates are parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from runner.expressions import Expression


# --- templates -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Literal:
    text: str


@dataclass(frozen=True, slots=True)
class Column:
    """`{name}` in a template: an entity column (percent-encoded when it lands in a URL)."""

    name: str


@dataclass(frozen=True, slots=True)
class Setting:
    """`${env.NAME:-default}` (visible) or `${secret.NAME}` (redacted everywhere). Resolved at run start."""

    kind: str  # "env" | "secret" | "incremental" (the watermark: runner/watermarks.py)
    name: str
    default: str | None = None

    @property
    def secret(self) -> bool:
        return self.kind == "secret"


Segment = Literal | Column | Setting


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    segments: tuple[Segment, ...]

    @property
    def columns(self) -> frozenset[str]:
        return frozenset(s.name for s in self.segments if isinstance(s, Column))

    @property
    def settings(self) -> tuple[Setting, ...]:
        return tuple(s for s in self.segments if isinstance(s, Setting))


# --- selection of entities --------------------------------------------------------------------------
class SelectionType(StrEnum):
    DEFAULT = "default"  # syncrun's generic due-ness query over the status table
    FUNCTION = "function"  # a named Postgres function, e.g. get_apps_for_sync(p_source, p_limit)
    SQL = "sql"  # a query with %(limit)s and %(after_key)s named parameters
    LIST = "list"  # list-shaped: pages through a catalogue, no entity selection


@dataclass(frozen=True, slots=True)
class EntityColumn:
    name: str
    type: str  # "int" | "bigint" | "text" | "float" | "bool" | "json" | "timestamptz" | "date"


@dataclass(frozen=True, slots=True, kw_only=True)
class Entities:
    type: SelectionType
    key: str  # the entity key column, e.g. "appid"
    key_type: str  # "int" | "bigint" | "text"
    columns: tuple[EntityColumn, ...]  # what the selection returns; key first
    limit: int  # entities per run (overridden by --limit / --batch-size / BATCH_SIZE)
    function: QualifiedName | None = None
    args: tuple[tuple[str, FunctionArg], ...] = ()
    sql: str | None = None
    refresh_interval: float = 86400.0  # default selection: how old a stamp may get (seconds)
    interval_column: str | None = "sync_interval_hours"  # per-entity override, in hours, when present
    priority_column: str | None = "priority_score"
    syncable_column: str | None = "is_syncable"
    # the cut-off: an entity with this many failed runs since its last success is not selected (None: never)
    max_consecutive_errors: int | None = None
    join: tuple[Join, ...] = ()  # default selection: tables left-joined on the key (runner/filters.py)
    where: tuple[Filter, ...] = ()  # default selection: all must hold for an entity to be due
    order: tuple[OrderTerm, ...] = ()  # default selection: sort terms before the built-in ones

    @property
    def column_names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns)


# --- declarative filters and order of the default selection (compiled by runner/filters.py) ----------
@dataclass(frozen=True, slots=True)
class ColumnRef:
    """`release_date` (a status-table column) or `apps.release_date` (a joined table's column)."""

    table: str | None  # a join's alias; None: the status table
    column: str

    def __str__(self) -> str:
        return f"{self.table}.{self.column}" if self.table else self.column


class FilterOp(StrEnum):
    EQ = "="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in"
    NOT_IN = "not_in"
    IS_NULL = "is_null"
    IS_NOT_NULL = "is_not_null"


@dataclass(frozen=True, slots=True)
class Clock:
    """`{now: true}` / `{now: "-1h"}`: the database's now() plus seconds; `{today: "+7d"}`: the UTC date
    plus whole days."""

    unit: str  # "now" | "today"
    offset: float = 0.0  # seconds for now, days for today


FilterValue = str | int | float | bool | Clock


@dataclass(frozen=True, slots=True)
class Condition:
    column: ColumnRef
    op: FilterOp
    value: FilterValue | tuple[FilterValue, ...] | None = None  # a tuple for in / not_in; None for is_null


@dataclass(frozen=True, slots=True)
class AnyOf:
    """`{any: [...]}`: at least one holds."""

    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class AllOf:
    """`{all: [...]}`: every one holds (the `where` list itself is one)."""

    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class NotOf:
    """`{not: ...}`: it does not hold (a null comparison counts as not holding)."""

    filter: Filter


Filter = Condition | AnyOf | AllOf | NotOf


class Direction(StrEnum):
    ASC = "asc"
    DESC = "desc"


class Nulls(StrEnum):
    FIRST = "first"
    LAST = "last"


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderTerm:
    """`{column: c, direction: desc, nulls: last}`, or `{first: <filter>}`: entities it holds for first."""

    column: ColumnRef | None = None
    direction: Direction = Direction.ASC
    nulls: Nulls = Nulls.LAST
    first: Filter | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Join:
    """`{table: apps}`: `left join apps on apps.<on> = <status>.<key>`; its columns are `<as>.<column>`."""

    table: QualifiedName
    as_: str  # YAML `as`; defaults to the table's name without its schema
    on: str  # the joined table's column equal to the entity key (default: the key's name)


@dataclass(frozen=True, slots=True)
class FunctionArg:
    """A function argument: a literal, or one of the engine's named parameters (`limit`, `after_key`,
    `source`)."""

    value: str | int | float | bool | None = None
    parameter: str | None = None


# --- request ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """Several entities per request (Steam price: 30 appids joined by commas), one outcome per
    *requested* entity: `record` picks each entity's part of the body, and that part is what the
    outcome rules and mappings see as `body` (the whole body stays at `response.body`)."""

    size: int
    param: str  # the query parameter carrying the joined keys
    separator: str = ","
    record: Expression  # e.g. get(body, to_string(entity.appid)); null -> no data for that entity


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    method: str = "GET"
    url: Template
    query: tuple[tuple[str, Template], ...] = ()
    headers: tuple[tuple[str, Template], ...] = ()
    timeout: float = 30.0  # per attempt: connect + send + the whole body
    max_body: int = 10_000_000
    verify_tls: bool = True
    batch: Batch | None = None
    conditional: bool | None = None  # ETag/Last-Modified validators; None: on where usable (runner.conditional)


class PaginationType(StrEnum):
    NONE = "none"  # one request
    CURSOR = "cursor"  # a token from the body or a header, sent in `param` (also Stripe's has_more + last id)
    PAGE = "page"  # page numbers from `start`
    OFFSET = "offset"  # item offsets from `start`, stepping by the items received
    LINK = "link"  # the RFC 8288 `Link` header's rel="next" URL (GitHub, GitLab)
    NEXT_URL = "next_url"  # a next-page URL picked from the reply (absolute or relative)


class MissingNext(StrEnum):
    FAIL = "fail"  # the API said there is more but gave no way there: the listing is partial, fail
    END = "end"  # this API ends its listings that way: take it as the end


@dataclass(frozen=True, slots=True, kw_only=True)
class Pagination:
    """How a reply leads to the next request. `none` for one request per entity. Every expression
    is evaluated over {status, headers, body} of one reply (header names lower-case)."""

    type: PaginationType = PaginationType.NONE
    param: str | None = None  # query parameter carrying the cursor / page number / offset
    cursor: Expression | None = None  # cursor: the next cursor
    next: Expression | None = None  # next_url: the next page's URL
    has_more: Expression | None = None  # cursor/next_url: the API says there are more pages
    total: Expression | None = None  # offset: how many items the listing has
    total_pages: Expression | None = None  # page: how many pages the listing has
    start: int = 0  # page: first page number; offset: first offset
    page_size: int | None = None  # items in a full page; fewer: the last page
    size_param: str | None = None  # query parameter sent with page_size (limit, per_page)
    max_pages: int | None = None  # a cap; reaching it makes the listing "not complete"
    max_items: int | None = None  # a cap on items, checked after each page; reaching it: "not complete"
    missing_next: MissingNext = MissingNext.FAIL
    allow_origins: tuple[str, ...] = ()  # next URLs may lead to these origins too (without secret headers)


# --- authentication -----------------------------------------------------------------------------------
class AuthType(StrEnum):
    BEARER = "bearer"  # Authorization: Bearer <token>
    API_KEY = "api_key"  # a key in a header or a query parameter
    BASIC = "basic"  # Authorization: Basic base64(username:password)
    OAUTH2_CLIENT_CREDENTIALS = "oauth2_client_credentials"  # a token from token_url, renewed at run time
    OAUTH2_REFRESH_TOKEN = "oauth2_refresh_token"  # a token from token_url for a refresh token


class KeyIn(StrEnum):
    HEADER = "header"
    QUERY = "query"


class ClientAuth(StrEnum):
    """How an OAuth2 client authenticates at the token endpoint (RFC 6749 §2.3.1; RFC 7591's names)."""

    POST = "client_secret_post"  # client_id and client_secret as form fields (what most APIs document)
    BASIC = "client_secret_basic"  # Authorization: Basic (id:secret, each form-encoded first)


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth:
    """How every request of the source to its own origin is authenticated (runner/auth.py). Only the
    fields of `type` are set; credentials are templates holding a ${secret.*}."""

    type: AuthType
    token: Template | None = None  # bearer
    name: str | None = None  # api_key: the header or query parameter name
    in_: KeyIn = KeyIn.HEADER  # api_key: YAML `in`
    value: Template | None = None  # api_key
    username: Template | None = None  # basic
    password: Template | None = None  # basic
    token_url: Template | None = None  # oauth2_*
    client_id: Template | None = None  # oauth2_*
    client_secret: Template | None = None  # oauth2_client_credentials (optional for oauth2_refresh_token)
    refresh_token: Template | None = None  # oauth2_refresh_token
    scopes: tuple[str, ...] = ()  # oauth2_*: sent as `scope`, space-separated
    extra: tuple[tuple[str, Template], ...] = ()  # oauth2_*: more form fields of the token request
    client_auth: ClientAuth = ClientAuth.POST  # oauth2_*: where the client id and secret go
    timeout: float | None = None  # oauth2_*: a whole token request; None: the source's request.timeout
    verify_tls: bool | None = None  # oauth2_*: verify the token endpoint's certificate; None: request.verify_tls
    rate_limited: bool = False  # oauth2_*: token requests wait for (and spend) the source's rate limit
    shared: str | None = None  # the block's name in syncrun.yaml's `auth:` (a source's `use:`), else None

    def field(self, key: str) -> str:
        """How a message names one of the block's keys: `auth.client_id`, or where the shared block is."""
        return f"auth.{self.shared}.{key} in syncrun.yaml" if self.shared else f"auth.{key}"

    @property
    def templates(self) -> tuple[Template, ...]:
        single = (self.token, self.value, self.username, self.password, self.token_url)
        more = (self.client_id, self.client_secret, self.refresh_token)
        return tuple(t for t in (*single, *more) if t is not None) + tuple(t for _, t in self.extra)


# --- rate limit and retry ---------------------------------------------------------------------------
class LimitScope(StrEnum):
    PROCESS = "process"  # one limiter per bucket name in this process
    DATABASE = "database"  # shared across processes through PostgreSQL
    REDIS = "redis"


class LimitForm(StrEnum):
    WINDOW = "window"  # `requests` per `per`: at most that many in every sliding window
    TOKEN = "token"  # `rate` + `burst`: a token bucket (GCRA), one token every `per` seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """At most `requests` requests in every sliding window of `per` seconds, measured at arrival; or, in
    the token form (`rate: 0.33/s`, `burst: 3`), a bucket of `burst` tokens refilled one every `per`
    seconds (requests = 1): `burst` at once, then one every `per`."""

    requests: int
    per: float
    burst: int = 1
    bucket: str  # defaults to the source name
    shared: LimitScope = LimitScope.PROCESS
    form: LimitForm = LimitForm.WINDOW
    margin: float | None = None  # seconds every window is padded by; None: max(10 ms, 0.5 % of per)

    @property
    def rate(self) -> float:
        return self.requests / self.per


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    attempts: int = 4  # total attempts, the first included
    initial: float = 1.0  # first backoff, seconds
    factor: float = 2.0
    max_delay: float = 30.0  # cap on one backoff
    jitter: float = 0.1  # +/- fraction of each backoff
    statuses: frozenset[int] = frozenset({408, 429, *range(500, 600)})
    max_wait: float = 300.0  # longest Retry-After honoured; beyond it the run fails


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """When a failing entity is asked again (runner/backoff.py): the n-th definitive failure in a row
    waits `initial * factor^(n-1)`, at most `cap`; `transient_runs` runs in a row that failed
    transiently (retries exhausted) start the same ladder (0: transient failures never back off)."""

    initial: float = 15 * 60.0  # seconds
    factor: float = 2.0
    cap: float = 24 * 3600.0  # a broken entity is still retried daily
    transient_runs: int = 3


# --- outcomes -----------------------------------------------------------------------------------------
class Outcome(StrEnum):
    SUCCESS = "success"
    SKIP = "skip"
    ERROR = "error"
    SKIP_UNTIL = "skip_until"
    DELETE = "delete"  # the entity is gone (410 Gone): its rows go, syncrun_state.deleted_at is set


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageTemplate:
    """`"API said {body.error}"`: each `{...}` is a JMESPath expression over the outcome context."""

    text: str
    parts: tuple[str | Expression, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeRule:
    """The first rule whose `when` is truthy over {status, headers, body, entity} decides."""

    when: Expression
    outcome: Outcome
    message: MessageTemplate | None = None  # error: the entity's error text
    stamp: bool | None = None  # skip: stamp the success column? None = status.stamp_on_skip
    duration: float | None = None  # skip_until: how long the entity is left alone
    name: str = ""  # for explanations: "rule 2" or the YAML `name`
    set: tuple[Field, ...] = ()  # status-table columns written when this rule decides


# --- writes -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class QualifiedName:
    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass(frozen=True, slots=True)
class Field:
    column: str
    expression: Expression


class Merge(StrEnum):
    REPLACE = "replace"  # excluded.col (the default)
    GREATEST = "greatest"  # greatest(existing, new): never lowered
    KEEP_EXISTING_IF_NULL = "keep_existing_if_null"  # coalesce(new, existing)
    # the new value only when the write's `greatest` column took its new value (ccu_source follows ccu_peak)
    WITH_GREATEST = "with_greatest"
    # one spelling per key whatever the arrival order: initcap(v) = v first, then shortest, then code points
    PREFERRED_SPELLING = "preferred_spelling"


class OnDelete(StrEnum):
    """What an `outcome: delete` does to a write's rows for the entity."""

    DELETE = "delete"  # the default: the entity's rows go with it
    KEEP = "keep"  # history (daily metrics) outlives the entity


class WriteMode(StrEnum):
    UPSERT = "upsert"  # insert ... on conflict (key) do update set <mapped columns>
    INSERT = "insert"  # append only: on conflict (key) do nothing


@dataclass(frozen=True, slots=True, kw_only=True)
class Lookup:
    """A column filled from a dimension row looked up (or created earlier in the same transaction by
    a preceding write) by a natural key: `developer_id` = developers.id where normalized_name = value."""

    column: str
    table: QualifiedName
    key: str  # the dimension's natural-key column
    returning: str  # the dimension column to copy into `column`
    value: Expression  # evaluated over the row's context, compared with `key`


@dataclass(frozen=True, slots=True, kw_only=True)
class Write:
    table: QualifiedName
    key: tuple[str, ...]
    columns: tuple[Field, ...]
    mode: WriteMode = WriteMode.UPSERT
    rows: Expression | None = None  # one row per item of this list (the item is `item` in the context)
    merge: tuple[tuple[str, Merge], ...] = ()
    when: Expression | None = None  # write only records for which this is truthy
    replace_by: tuple[str, ...] = ()  # delete this entity's rows matching these columns first (stale links go)
    lookups: tuple[Lookup, ...] = ()
    function: QualifiedName | None = None  # an RPC target: select fn(column => value, ...) per row
    on_delete: OnDelete = OnDelete.DELETE
    # `outcome: delete` removes the rows where these columns equal their value for the entity: the key
    # and replace_by columns mapped to exactly `entity.<key>` or to a constant (runner.deletes.columns)
    delete_by: tuple[str, ...] = ()
    primary: bool = False  # its rows are the ones items_created / items_updated count (writer.primary)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.columns)


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """Where the seed-compatible success stamp goes: `update table set column = now() where key = ...`."""

    table: QualifiedName
    key: str
    column: str  # default last_<name>_sync
    stamp_on_skip: bool = False
    error_columns: bool = True  # also write the seed's last_error_source/message/at (dashboards only)
    set: tuple[Field, ...] = ()  # extra status columns written on success (storefront_accessible: true)


class StepWhen(StrEnum):
    ALWAYS = "always"
    COMPLETE = "complete"  # all pages, not capped, not cancelled, no failures


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """SQL run before or after the entities (e.g. mark apps SteamSpy never listed). Parameters:
    %(job_id)s, %(started_at)s, %(source)s."""

    sql: str
    when: StepWhen = StepWhen.ALWAYS


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """How `syncrun workflow` schedules the source on GitHub Actions."""

    cron: str  # UTC, five fields
    timeout_minutes: int | None = None  # default: derived from limit / rate with margin
    partitions: int | None = None  # run as a matrix of N static shards (--partition i/N)


class IncrementalFrom(StrEnum):
    CURSOR = "cursor"  # the largest cursor value among the listing's records
    LISTING_START = "listing_start"  # when the completed listing started


@dataclass(frozen=True, slots=True, kw_only=True)
class Incremental:
    """A list source's watermark (runner/watermarks.py), read by requests as ${incremental.since}.
    `start` is a timezone-aware datetime or an int; `lookback` is seconds (timestamps) or an int."""

    cursor: Expression | None = None  # required unless `from` is listing_start
    from_: IncrementalFrom = IncrementalFrom.CURSOR
    start: datetime | int
    lookback: float | int = 0


# --- the source ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    name: str
    path: Path
    description: str = ""
    job_type: str
    entities: Entities
    request: Request
    pagination: Pagination = Pagination()
    rate_limit: RateLimit
    retry: Retry = Retry()
    backoff: Backoff = Backoff()
    outcomes: tuple[OutcomeRule, ...]  # the user's rules, then the defaults (2xx/404/4xx)
    records: Expression | None = None  # None: the whole body is the one record
    incremental: Incremental | None = None  # list sources only
    writes: tuple[Write, ...]
    status: Status | None
    concurrency: int = 4
    write_batch: int = 100  # entities per write transaction
    fail_ratio: float = 0.5  # failed/processed above this makes the run exit 1
    before: tuple[Step, ...] = ()
    after: tuple[Step, ...] = ()
    schedule: Schedule | None = None
    auth: Auth | None = None

    @property
    def settings(self) -> tuple[Setting, ...]:
        """Every ${env.*}/${secret.*} the source uses, in order of first appearance."""
        templates = [
            self.request.url,
            *(t for _, t in self.request.query),
            *(t for _, t in self.request.headers),
            *(self.auth.templates if self.auth else ()),
        ]
        seen: dict[tuple[str, str], Setting] = {}
        for template in templates:
            for setting in template.settings:
                if setting.kind == "incremental":  # not the environment's: the engine fills it in
                    continue
                seen.setdefault((setting.kind, setting.name), setting)
        return tuple(seen.values())
