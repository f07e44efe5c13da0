"""Static sharding (`--partition i/n`): `partition_of(key, n)` = first 32 bits of md5(key as text)
mod n, in Python and SQL alike. Steam appids are multiples of 10, so `appid % n` is not an option.

Both `partition_of` and `partition_sql` compute it: runner/selection.py filters function and sql
selections in Python and the default selection in its query.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from psycopg import sql


class Partition(NamedTuple):
    """`--partition shard/shards`, e.g. 0/4; a plain `(shard, shards)` tuple works too."""

    shard: int
    shards: int


def partition_of(key: object, count: int) -> int:
    """The shard of `key` among `count`; agrees with `partition_sql`."""
    return int(hashlib.md5(str(key).encode()).hexdigest()[:8], 16) % count


def partition_sql(key: sql.Composable, count: int | sql.Composable) -> sql.Composed:
    """The SQL twin of `partition_of`: `key`'s shard among `count` (an int or a placeholder)."""
    modulus = count if isinstance(count, sql.Composable) else sql.Literal(count)
    return sql.SQL("(('x' || substr(md5(({})::text), 1, 8))::bit(32)::bigint %% {})").format(key, modulus)
