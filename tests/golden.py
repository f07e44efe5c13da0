"""Compare a database after a Steam replay with a golden file (tests/data/golden/README.md).

`Golden.load(stem)` reads `tests/data/golden/<stem>.json`; `snapshot(db)` (after the seed, before
the run) records what seed.sql left; `compare(db, golden, seed)` returns a list of mismatches, each
one line naming the table, the row's key, the column, the expected and the actual value. An empty
list means the database matches.

Markers (README): `<now>`, `<run.started_at>`, `<today>`, `<today-1>`, `<seed>`, `<seed now()-Nh>`,
`<any>`, `<not null>`, `{"approx", "tolerance"}`, `{"contains"}`, `{"after": "<now>", "about"}`,
and dimension-name junction columns (`"developer": "valve"` for `developer_id`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from psycopg import sql

from tests.pg import Database

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = ROOT / "tests" / "data" / "golden"
REPLAYS = ROOT / "sources" / "replays"
SEED = REPLAYS / "seed.sql"
STEAM_TABLES = ROOT / "runner" / "sql" / "tables" / "steam.sql"
STEMS = sorted(p.stem for p in GOLDEN_DIR.glob("*.json"))

JOBS_TABLE = "sync_jobs"
STATUS_TABLE = "sync_status"
STATE_TABLE = "syncrun_state"
SEED_NOW = re.compile(r"^<seed now\(\)-(\d+)h>$")
DURATION = re.compile(r"^(\d+)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
ABOUT = dt.timedelta(minutes=1)  # the README's "about": ± 1 minute


@dataclass
class Golden:
    stem: str
    data: dict[str, Any]

    @classmethod
    def load(cls, stem: str) -> Golden:
        return cls(stem, json.loads((GOLDEN_DIR / f"{stem}.json").read_text()))

    @property
    def source(self) -> Path:
        return ROOT / self.data["source"]

    @property
    def replay_dir(self) -> Path:
        return (ROOT / self.data["replay"]).parent

    @property
    def settings(self) -> dict[str, str]:
        # README: every golden is replayed with STEAM_API_KEY=test-steam-key and the default base URLs
        return {"STEAM_API_KEY": "test-steam-key", **self.data.get("settings", {})}

    @property
    def job_type(self) -> str:
        return str(self.data["job"]["job_type"])

    @property
    def exit_code(self) -> int:
        return int(self.data["job"].get("exit_code", 0))


@dataclass
class Seed:
    """What seed.sql left: its now() and every row of the tables a golden may call `<seed>`."""

    now: dt.datetime
    tables: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)
    keys: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class Run:
    started_at: dt.datetime
    completed_at: dt.datetime

    @property
    def today(self) -> dt.date:
        return self.started_at.astimezone(dt.UTC).date()


# --- database helpers ------------------------------------------------------------------------------
def seed(db: Database) -> dt.datetime:
    """Apply steam.sql and seed.sql (one transaction, like psql -1); the seed's now()."""
    db.run(STEAM_TABLES.read_text())
    with db.conn.transaction():
        db.conn.execute(SEED.read_text())  # type: ignore[arg-type]
        row = db.conn.execute("select now()").fetchone()
    assert row is not None
    return row[0]


def columns_of(db: Database, table: str) -> list[str]:
    return [
        r[0]
        for r in db.rows(
            "select attname from pg_attribute where attrelid = to_regclass(%s) and attnum > 0"
            " and not attisdropped order by attnum",
            (table,),
        )
    ]


def primary_key(db: Database, table: str) -> tuple[str, ...]:
    rows = db.rows(
        "select a.attname from pg_index i join pg_attribute a on a.attrelid = i.indrelid"
        " and a.attnum = any(i.indkey) where i.indrelid = to_regclass(%s) and i.indisprimary"
        " order by array_position(i.indkey::int2[], a.attnum)",
        (table,),
    )
    return tuple(r[0] for r in rows)


def unique_keys(db: Database, table: str) -> list[tuple[str, ...]]:
    rows = db.rows(
        "select i.indexrelid, array_agg(a.attname::text order by array_position(i.indkey::int2[], a.attnum))"
        " from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)"
        " where i.indrelid = to_regclass(%s) and i.indisunique group by i.indexrelid, i.indisprimary"
        " order by i.indisprimary desc",
        (table,),
    )
    return [tuple(r[1]) for r in rows]


def fetch(db: Database, table: str) -> list[dict[str, Any]]:
    names = columns_of(db, table)
    query = sql.SQL("select {} from {}").format(sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(table))
    return [dict(zip(names, row, strict=True)) for row in db.rows(query)]  # type: ignore[arg-type]


def snapshot(db: Database, golden: Golden, seed_now: dt.datetime) -> Seed:
    state = Seed(now=seed_now)
    for table in [*golden.data.get("tables", {}), STATUS_TABLE]:
        key = primary_key(db, table)
        state.keys[table] = key
        state.tables[table] = {tuple(row[k] for k in key): row for row in fetch(db, table)}
    return state


def job_row(db: Database, job_type: str) -> dict[str, Any]:
    rows = [r for r in fetch(db, JOBS_TABLE) if r["job_type"] == job_type]
    assert len(rows) == 1, f"expected one {JOBS_TABLE} row of job_type {job_type!r}, found {len(rows)}: {rows}"
    return rows[0]


# --- values -----------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value) if value != value.to_integral_value() else int(value)
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _duration(text: str) -> dt.timedelta:
    match = DURATION.match(text)
    if not match:
        raise ValueError(f"golden: bad duration {text!r}")
    return dt.timedelta(seconds=int(match[1]) * UNITS[match[2]])


def exact(expected: Any, run: Run, seed_now: dt.datetime) -> tuple[bool, Any]:
    """(True, value) when `expected` names one concrete value (usable as a key), else (False, None)."""
    if isinstance(expected, str):
        if expected == "<today>":
            return True, run.today.isoformat()
        if expected == "<today-1>":
            return True, (run.today - dt.timedelta(days=1)).isoformat()
        if expected == "<run.started_at>":
            return True, run.started_at
        if match := SEED_NOW.match(expected):
            return True, seed_now - dt.timedelta(hours=int(match[1]))
        if expected.startswith("<") and expected.endswith(">"):
            return False, None
        return True, expected
    if isinstance(expected, dict):
        return False, None
    return True, expected


def check(expected: Any, actual: Any, run: Run, seed_value: Any, seed_now: dt.datetime) -> str | None:
    """None when `actual` satisfies `expected`, else why not."""
    actual = _plain(actual)
    if expected == "<any>":
        return None
    if expected == "<not null>":
        return None if actual is not None else "null"
    if expected == "<seed>":
        return None if actual == _plain(seed_value) else f"not the seeded {_plain(seed_value)!r}"
    if expected == "<now>":
        if not isinstance(actual, dt.datetime):
            return "not a timestamp"
        if run.started_at <= actual <= run.completed_at:
            return None
        return f"outside the run ({run.started_at.isoformat()} .. {run.completed_at.isoformat()})"
    if isinstance(expected, dict):
        if "approx" in expected:
            if not isinstance(actual, int | float) or isinstance(actual, bool):
                return "not a number"
            if abs(actual - expected["approx"]) <= expected.get("tolerance", 0):
                return None
            return f"not within {expected.get('tolerance', 0)} of {expected['approx']}"
        if "contains" in expected:
            if isinstance(actual, str) and expected["contains"] in actual:
                return None
            return f"does not contain {expected['contains']!r}"
        if "after" in expected:
            if not isinstance(actual, dt.datetime):
                return "not a timestamp"
            if expected["after"] != "<now>":
                raise ValueError(f"golden: unsupported 'after' {expected['after']!r}")
            about = _duration(expected["about"])
            low, high = run.started_at + about - ABOUT, run.completed_at + about + ABOUT
            return None if low <= actual <= high else f"not about {expected['about']} after the run"
        raise ValueError(f"golden: unknown marker {expected!r}")
    known, value = exact(expected, run, seed_now)
    if not known:
        raise ValueError(f"golden: unknown marker {expected!r}")
    if isinstance(value, dt.datetime) or isinstance(actual, dt.datetime):
        return None if actual == value else "differs"
    if isinstance(value, bool) or isinstance(actual, bool):
        return None if actual is value else "differs"
    return None if actual == value else "differs"


# --- comparison -------------------------------------------------------------------------------------
@dataclass
class Mismatch:
    where: str
    key: str
    column: str
    expected: Any
    actual: Any
    why: str

    def __str__(self) -> str:
        return (
            f"{self.where} [{self.key}] {self.column}: expected {self.expected!r}, actual {_show(self.actual)}"
            f" ({self.why})"
        )


def _show(value: Any) -> str:
    value = _plain(value)
    return value.isoformat() if isinstance(value, dt.datetime) else repr(value)


def _dimensions(db: Database, table: str, columns: list[str]) -> dict[str, tuple[str, dict[Any, Any]]]:
    """Golden columns naming a dimension (`developer` -> developer_id via developers.normalized_name)."""
    real = set(columns_of(db, table))
    found: dict[str, tuple[str, dict[Any, Any]]] = {}
    for column in columns:
        if column in real or f"{column}_id" not in real:
            continue
        dimension = f"{column}s"
        ids = {row["id"]: row["normalized_name"] for row in fetch(db, dimension)}
        found[column] = (f"{column}_id", ids)
    return found


def _actual_rows(db: Database, table: str, columns: list[str]) -> list[dict[str, Any]]:
    dims = _dimensions(db, table, columns)
    rows = fetch(db, table)
    for row in rows:
        for column, (id_column, names) in dims.items():
            row[column] = names.get(row[id_column], f"<no {column} with id {row[id_column]}>")
    return rows


def _identity(db: Database, table: str, columns: list[str]) -> tuple[str, ...]:
    """Columns identifying a golden row: the primary key or a unique key inside `columns`, or all of them."""
    translated = set(columns) | {f"{c}_id" for c in columns}
    for key in unique_keys(db, table):
        if set(key) <= translated:
            return tuple(k.removesuffix("_id") if k.removesuffix("_id") in columns else k for k in key)
    return tuple(columns)


def compare_rows(
    db: Database,
    where: str,
    table: str,
    spec: dict[str, Any],
    run: Run,
    seed: Seed,
    *,
    others_as_seeded: bool,
    unlisted_columns_as_seeded: bool = False,
) -> list[Mismatch]:
    columns: list[str] = spec["columns"]
    expected_rows: list[dict[str, Any]] = spec["rows"]
    identity = _identity(db, table, columns)
    actual_rows = _actual_rows(db, table, columns)
    problems: list[Mismatch] = []
    matched: set[int] = set()
    seeded = seed.tables.get(table, {})
    seed_key = seed.keys.get(table, ())

    def seed_row(row: dict[str, Any]) -> dict[str, Any] | None:
        if not seed_key or any(k not in row for k in seed_key):
            return None
        return seeded.get(tuple(row[k] for k in seed_key))

    for expected in expected_rows:
        missing = [c for c in columns if c not in expected]
        if missing:
            raise ValueError(f"golden {where}: row {expected} lacks columns {missing}")
        ident = {}
        for column in identity:
            known, value = exact(expected[column], run, seed.now)
            if known:
                ident[column] = value
        label = ", ".join(f"{k}={_show(v)}" for k, v in ident.items()) or json.dumps(expected)
        candidates = [
            i
            for i, row in enumerate(actual_rows)
            if i not in matched and all(check(v, row.get(k), run, None, seed.now) is None for k, v in ident.items())
        ]
        if not candidates:
            problems.append(Mismatch(where, label, "*", "a row", None, "missing row"))
            continue
        best: tuple[int, list[Mismatch]] | None = None
        for i in candidates:
            row = actual_rows[i]
            before = seed_row(row)
            diffs = []
            for column in columns:
                seed_value = before.get(column) if before else None
                why = check(expected[column], row.get(column), run, seed_value, seed.now)
                if expected[column] == "<seed>" and before is None:
                    why = "no seeded row"
                if why:
                    diffs.append(Mismatch(where, label, column, expected[column], row.get(column), why))
            if unlisted_columns_as_seeded and before is not None:
                for column, value in before.items():
                    if column not in columns and row.get(column) != value:
                        diffs.append(Mismatch(where, label, column, "<seed> (not listed)", row.get(column), "changed"))
            if best is None or len(diffs) < len(best[1]):
                best = (i, diffs)
            if not diffs:
                break
        assert best is not None
        matched.add(best[0])
        problems.extend(best[1])

    for i, row in enumerate(actual_rows):
        if i in matched:
            continue
        label = ", ".join(f"{k}={_show(row.get(k))}" for k in identity)
        if not others_as_seeded:
            problems.append(Mismatch(where, label, "*", None, {c: row.get(c) for c in columns}, "unexpected row"))
            continue
        before = seed_row(row)
        if before is None:
            problems.append(Mismatch(where, label, "*", None, {c: row.get(c) for c in columns}, "row not in the seed"))
            continue
        for column, value in before.items():
            if row.get(column) != value:
                problems.append(Mismatch(where, label, column, value, row.get(column), "not as seeded"))
    if "row_count" in spec and len(actual_rows) != spec["row_count"]:
        problems.append(Mismatch(where, "*", "row_count", spec["row_count"], len(actual_rows), "differs"))
    return problems


def compare(db: Database, golden: Golden, seed: Seed, exit_code: int | None = None) -> list[Mismatch]:
    data = golden.data
    job = job_row(db, golden.job_type)
    if job["completed_at"] is None:
        return [Mismatch(JOBS_TABLE, golden.job_type, "completed_at", "<not null>", None, "job not finished")]
    run = Run(job["started_at"], job["completed_at"])
    problems: list[Mismatch] = []

    for column, expected in data["job"].items():
        if column == "exit_code":
            if exit_code is not None and exit_code != expected:
                problems.append(Mismatch("exit code", golden.stem, "exit_code", expected, exit_code, "differs"))
            continue
        why = check(expected, job.get(column), run, None, seed.now)
        if why:
            problems.append(Mismatch(JOBS_TABLE, golden.job_type, column, expected, job.get(column), why))

    for table, spec in data.get("tables", {}).items():
        problems += compare_rows(db, table, table, spec, run, seed, others_as_seeded=not spec.get("complete", False))

    if status := data.get("sync_status"):
        problems += compare_rows(
            db,
            STATUS_TABLE,
            STATUS_TABLE,
            status,
            run,
            seed,
            others_as_seeded=True,
            unlisted_columns_as_seeded=True,
        )

    problems += compare_state(db, golden, run, seed)
    return problems


def compare_state(db: Database, golden: Golden, run: Run, seed: Seed) -> list[Mismatch]:
    """Listed entities match; every other entity of this source has no error state."""
    source = golden.data["job"]["job_type"]
    expected_rows = golden.data.get("syncrun_state", [])
    sources = {row["source"] for row in expected_rows} | {source}
    actual = {(r["source"], r["entity_key"]): r for r in fetch(db, STATE_TABLE) if r["source"] in sources}
    problems: list[Mismatch] = []
    listed = set()
    for expected in expected_rows:
        key = (expected["source"], expected["entity_key"])
        listed.add(key)
        label = f"{key[0]} {key[1]}"
        row = actual.get(key)
        if row is None:
            problems.append(Mismatch(STATE_TABLE, label, "*", expected, None, "missing row"))
            continue
        for column, value in expected.items():
            why = check(value, row.get(column), run, None, seed.now)
            if why:
                problems.append(Mismatch(STATE_TABLE, label, column, value, row.get(column), why))
    for key, row in actual.items():
        if key in listed:
            continue
        for column, clean in (("consecutive_errors", 0), ("last_error", None), ("skip_until", None)):
            if row.get(column) != clean:
                problems.append(
                    Mismatch(STATE_TABLE, f"{key[0]} {key[1]}", column, clean, row.get(column), "unlisted error state")
                )
    return problems


def report(golden: Golden, problems: list[Mismatch]) -> str:
    lines = [f"{golden.stem}: {len(problems)} mismatch(es) with tests/data/golden/{golden.stem}.json"]
    lines += [f"  {p}" for p in problems]
    return "\n".join(lines)
