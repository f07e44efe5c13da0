"""partitions: `--partition i/n` shards, balanced on Steam's appids, the same in Python and SQL."""

from __future__ import annotations

from collections import Counter

from psycopg import sql

from runner.partitions import partition_of, partition_sql
from tests.pg import Database


def test_partition_of_is_balanced_on_steam_appids() -> None:
    """Appids are multiples of 10: every shard of n = 2..8 gets a fair share (appid % n would not)."""
    keys = range(10, 200_010, 10)
    for shards in range(2, 9):
        sizes = Counter(partition_of(key, shards) for key in keys)
        assert sorted(sizes) == list(range(shards))
        assert all(abs(size * shards / len(keys) - 1) < 0.1 for size in sizes.values())


def test_partition_sql_agrees_with_python(db: Database) -> None:
    """The SQL expression puts every key in the same shard as partition_of."""
    query = sql.SQL("select k, {} from unnest(%s::text[]) k").format(partition_sql(sql.SQL("k"), 7))
    keys = [str(k) for k in range(10, 5000, 10)] + ["abc", "ÿ-ünï"]
    with db.conn.transaction():
        rows = db.conn.execute(query, (keys,)).fetchall()
    assert rows == [(k, partition_of(k, 7)) for k in keys]
