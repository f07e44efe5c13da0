"""`syncrun demo`: the example catalogue API on loopback, the example source run against it on the
embedded database through the normal run path, and a look at what was written.

The API is deterministic: app N's fields derive from N, and a few apps are edge cases on purpose
(a delisted app, an unknown app, a flaky one that answers 503 twice, a price beyond its bounds, a
release date that names no day) so the demo shows every outcome.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from runner.errors import UsageError


def bundled_root() -> Path:
    """The folder holding the bundled `sources/` (with `replays/`) and `syncrun.yaml`: the wheel's
    package data (runner/bundled/, see pyproject.toml), else the checkout this module runs from."""
    package = Path(__file__).resolve().parent
    for root in (package / "bundled", package.parent):
        if (root / "sources" / "replays").is_dir() and (root / "syncrun.yaml").is_file():
            return root
    raise UsageError(f"the bundled sources are missing from {package / 'bundled'}: reinstall syncrun")


DEMO_APPIDS = tuple(range(10, 410, 10))  # 40 apps, multiples of 10 like real Steam appids
DELISTED, UNKNOWN, FLAKY, EXPENSIVE, UNDATED = 70, 130, 200, 250, 310
_TYPES = ("game", "dlc", "demo", "Episode")  # "Episode" is outside the enum: the mapping falls back
_DATES = ("Dec 21, 2012", "21 Dec, 2012", "2019-06-01", "Coming soon")


def app_document(appid: int) -> tuple[int, dict[str, Any]]:
    """The (status, body) the demo API answers for one app."""
    if appid == UNKNOWN or appid % 10:
        return 404, {"error": "no such app"}
    if appid == DELISTED:
        return 200, {"success": False}
    n = appid // 10
    price = 999_999 if appid == EXPENSIVE else (n % 7) * 500
    return 200, {
        "success": True,
        "data": {
            "name": f"  Demo Game {n}  ",
            "type": _TYPES[n % len(_TYPES)],
            "is_free": price == 0,
            "price": {"cents": str(price), "currency": "USD"},
            "release_date": "Summer 2025" if appid == UNDATED else _DATES[n % len(_DATES)],
            "tags": ["Indie", "indie ", "Strategy"][: 1 + n % 3],
            "players": n * 37,
        },
    }


class _Handler(BaseHTTPRequestHandler):
    flaky_left: dict[int, int]

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        appid = int(parts[1]) if len(parts) == 2 and parts[0] == "apps" and parts[1].isdigit() else -1
        if appid == FLAKY and self.server.flaky_left.get(appid, 0) > 0:  # type: ignore[attr-defined]
            self.server.flaky_left[appid] -= 1  # type: ignore[attr-defined]
            self._send(503, {"error": "try again"}, {"Retry-After": "0"})
            return
        status, body = app_document(appid) if appid >= 0 else (404, {"error": "not found"})
        self._send(status, body)

    def _send(self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the demo prints its own summary


@contextmanager
def serve(port: int = 0) -> Iterator[str]:
    """Serve the demo API on 127.0.0.1 (a free port by default); yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.flaky_left = {FLAKY: 2}  # type: ignore[attr-defined]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="demo-api", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def tables_sql() -> str:
    """DDL for the example source's target tables (shipped as runner/sql/tables/example.sql)."""
    return resources.files("runner").joinpath("sql/tables/example.sql").read_text()


_DEMO_TABLES = ("games", "game_tags", "game_metrics")


def prepare(conn: psycopg.Connection[Any]) -> None:
    """Create the demo's tables and give it 40 fresh apps to sync (a rerun starts from scratch)."""
    with conn.transaction():
        conn.execute(tables_sql())
        conn.execute("truncate games, game_tags, game_metrics")
        conn.execute("delete from syncrun_state where source = 'example'")
        conn.execute("delete from sync_status")
        with conn.cursor() as cur:
            cur.executemany(
                "insert into sync_status (appid, priority_score) values (%s, %s)",
                [(appid, appid % 50) for appid in DEMO_APPIDS],
            )


def seed(conn: psycopg.Connection[Any], table: sql.Composable, key: str) -> int:
    """Add the demo API's apps to a status table, leaving rows already there alone; how many were new."""
    query = sql.SQL("insert into {} ({}) select unnest(%s::bigint[]) on conflict do nothing").format(
        table, sql.Identifier(key)
    )
    with conn.transaction():
        return conn.execute(query, (list(DEMO_APPIDS),)).rowcount


def summary(conn: psycopg.Connection[Any], job_type: str) -> str:
    """Rows per table, a few sample rows, and the latest job rows, as text."""
    lines = ["", "rows written:"]
    for table in _DEMO_TABLES:
        count = conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(table))).fetchone()
        lines.append(f"  {table:<14} {count[0] if count else 0}")
    lines += ["", "sample games:"]
    for row in conn.execute(
        "select appid, name, type, price_cents, release_date, release_date_raw from games order by appid limit 6"
    ):
        lines.append("  " + " | ".join("null" if v is None else str(v) for v in row))
    lines += ["", "sync_status (per entity):"]
    stamped = conn.execute(
        "select count(*) filter (where last_example_sync is not null), count(*) from sync_status"
    ).fetchone()
    if stamped:
        lines.append(f"  {stamped[0]} of {stamped[1]} apps stamped last_example_sync")
    for row in conn.execute(
        "select entity_key, consecutive_errors, last_error from syncrun_state"
        " where source = 'example' and last_error is not null order by entity_key"
    ):
        lines.append(f"  app {row[0]}: {row[1]} error(s): {row[2]}")
    lines += ["", "sync_jobs:"]
    for row in conn.execute(
        "select job_type, status, items_processed, items_succeeded, items_failed, items_skipped, requests_made"
        " from sync_jobs where job_type = %s order by started_at desc limit 3",
        (job_type,),
    ):
        lines.append(
            f"  {row[0]} {row[1]}: processed {row[2]}, succeeded {row[3]}, failed {row[4]},"
            f" skipped {row[5]}, requests {row[6]}"
        )
    return "\n".join(lines)


# --- the Steam demo: every bundled Steam source, replayed ----------------------------------------------
STEAM_ORDER = (  # applist first: it feeds the entity table the other sources select from
    "steam-applist",
    "steamspy-all",
    "steamspy-app",
    "steam-storefront",
    "steam-price",
    "steam-reviews",
    "steam-histogram",
    "steam-ccu",
)
STEAM_TABLES = (
    "apps",
    "developers",
    "publishers",
    "app_developers",
    "app_publishers",
    "app_dlc",
    "app_demos",
    "daily_metrics",
    "review_deltas",
    "review_histogram",
    "ccu_snapshots",
    "sync_status",
)
DEMO_DATABASE = "syncrun_demo"


def fresh_database(conn: psycopg.Connection[Any]) -> None:
    """Drop and recreate the demo's own database, so every demo starts from the same state and
    never touches the embedded server's default database."""
    conn.autocommit = True
    name = sql.Identifier(DEMO_DATABASE)
    conn.execute(sql.SQL("drop database if exists {} with (force)").format(name))
    conn.execute(sql.SQL("create database {}").format(name))


def steam_prepare(conn: psycopg.Connection[Any], root: Any) -> None:
    """The Steam target tables (runner/sql/tables/steam.sql) and the replays' starting state."""
    with conn.transaction():
        conn.execute(resources.files("runner").joinpath("sql/tables/steam.sql").read_text())
        conn.execute((root / "sources" / "replays" / "seed.sql").read_text())


def steam_summary(conn: psycopg.Connection[Any]) -> str:
    """Rows per table, a few sample rows, and the job rows, as text."""
    lines = ["", "rows per table:"]
    for table in STEAM_TABLES:
        row = conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(table))).fetchone()
        lines.append(f"  {table:<18} {row[0] if row else 0}")
    # A representative picture: catalogue apps, a discounted game, its DLC (a stub until storefront
    # hydrates it), a coming-soon game and its demo; who made them; today's merged metrics row (SteamSpy,
    # price, reviews and CCU each fill their own columns); the latest monthly histogram rollups.
    samples = (
        (
            "apps (appid | name | type | released | price | parent)",
            "select appid, name, type, coalesce(release_date::text, release_date_raw, '-'),"
            " case when current_price_cents is null then case when is_free then 'free' else '-' end"
            "      else '$' || to_char(current_price_cents / 100.0, 'FM999990.00')"
            "           || case when current_discount_percent > 0 then ' (-' || current_discount_percent || '%)'"
            "                   else '' end end,"
            " coalesce(parent_appid::text, '-')"
            " from apps where appid in (20, 30, 570, 1086940, 1500040, 3165620, 4615010, 4707330)"
            " order by appid",
        ),
        (
            "developers / publishers",
            "select a.appid, a.name,"
            " (select string_agg(d.name, ', ' order by d.name) from app_developers ad"
            "    join developers d on d.id = ad.developer_id where ad.appid = a.appid),"
            " coalesce((select string_agg(p.name, ', ' order by p.name) from app_publishers ap"
            "    join publishers p on p.id = ap.publisher_id where ap.appid = a.appid), '-')"
            " from apps a where exists (select 1 from app_developers ad where ad.appid = a.appid)"
            " order by a.appid limit 6",
        ),
        (
            "DLC and demos (parent -> child)",
            "select parent_appid, 'dlc' as kind, dlc_appid, source from app_dlc"
            " union all select parent_appid, 'demo', demo_appid, source from app_demos order by 1, 3",
        ),
        (
            "daily_metrics today (appid | owners | ccu peak | price | reviews +/total | score)",
            "select appid,"
            " coalesce(owners_min || '..' || owners_max, '-'),"
            " coalesce(ccu_peak || ' (' || ccu_source || ')', '-'),"
            " coalesce(price_cents::text, '-'),"
            " coalesce(positive_reviews || '/' || total_reviews, '-'),"
            " coalesce(review_score_desc, '-')"
            " from daily_metrics where metric_date = (now() at time zone 'utc')::date"
            " and appid in (20, 30, 570, 730, 1086940, 3165620, 4707330) order by appid",
        ),
        (
            "review_histogram, latest month per app (appid | month | up | down | months)",
            "select distinct on (appid) appid, month_start, recommendations_up, recommendations_down,"
            " count(*) over (partition by appid) from review_histogram order by appid, month_start desc",
        ),
    )
    for title, query in samples:
        lines += ["", f"sample {title}:"]
        lines += ["  " + " | ".join("null" if v is None else str(v) for v in row) for row in conn.execute(query)]
    lines += ["", "sync_jobs:"]
    for row in conn.execute(
        "select job_type, status, items_processed, items_succeeded, items_failed, items_skipped, requests_made"
        " from sync_jobs order by started_at"
    ):
        lines.append(
            f"  {row[0]:<14} {row[1]:<9} processed {row[2]}, succeeded {row[3]}, failed {row[4]},"
            f" skipped {row[5]}, requests {row[6]}"
        )
    return "\n".join(lines)
