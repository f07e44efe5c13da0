"""The bench job the hand-written baselines share with syncrun's bench source: which entities are due,
how a body maps to a `bench_apps` row, and how the batch is stamped. No HTTP library is imported here,
so each baseline's start-up pays only for its own client."""

from __future__ import annotations

SOURCE = "bench"
SELECT = """
select appid from sync_status
 where coalesce(is_syncable, true)
   and (last_bench_sync is null
        or last_bench_sync < now() - make_interval(hours => coalesce(sync_interval_hours, 24)))
 order by last_bench_sync is not null, coalesce(priority_score, 0) desc, last_bench_sync, appid
 limit %s"""
UPSERT = """
insert into bench_apps (appid, name, type, is_free, price_cents, release_date_raw)
values (%s, %s, %s, %s, %s, %s)
on conflict (appid) do update set name = excluded.name, type = excluded.type, is_free = excluded.is_free,
    price_cents = excluded.price_cents, release_date_raw = excluded.release_date_raw"""
STAMP = "update sync_status set last_bench_sync = now() where appid = any(%s)"
TYPES = {"game", "dlc", "demo", "music"}


def map_row(appid: int, body: dict) -> tuple | None:
    """The same mapping as the bench source's `writes` (None: the API said there is no such app)."""
    if body.get("success") is False:
        return None
    record = body["data"]
    kind = (record.get("type") or "").lower()
    cents = (record.get("price") or {}).get("cents")
    return (
        appid,
        (record.get("name") or "").strip(),
        kind if kind in TYPES else "game",
        record.get("is_free"),
        int(cents) if cents is not None else None,
        record.get("release_date"),
    )
