"""`outcome: delete`: an entity the API says is gone (HTTP 410) loses its rows in the tables the source
writes, inside the writer's transaction, so the rows, the status and syncrun_state commit together.

Which rows are the entity's (`delete_by`, worked out by `columns` when the source is loaded): those
whose key and replace_by columns mapped to exactly `entity.<key>` equal the entity's key and whose
key and replace_by columns mapped to a constant (`provider: "'acme'"`) equal that constant, so another
source's rows of the same entity (`other`, stn_3) stay. The write's scope (its `replace_by` columns,
else its `key`) must be all such columns, one of them `entity.<key>`: a scope column mapped any other
way (`record.id`, `item`, `run.today`, a lookup, `entity.developer`) says nothing about whose row it
is, so such a write is refused by `validate` (it must say `on_delete: keep`) rather than guessed at.
Function writes cannot be undone and must say `on_delete: keep` too.

Deletes run before the batch's upserts, in reverse write order: a child table (written after its
parent, with a foreign key to it) is emptied before its parent row goes. One statement per table
per batch, from arrays (targets.delete_scopes), whatever the number of deleted entities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from runner import targets
from runner.spec import OnDelete, Outcome, Source, Write

if TYPE_CHECKING:
    from runner.results import EntityResult
    from runner.writeplan import SourcePlan


def columns(write: Write, key: str) -> tuple[tuple[str, ...], str | None]:
    """(delete_by columns, None), or ((), why this write's rows of an entity cannot be told).

    The entity's rows are told by the write's scope, its `replace_by` columns (the source already says
    they hold one entity's rows: a replace deletes by them) or else its `key`: each scope column must be
    mapped to exactly `entity.<key>` or to a constant, and one to `entity.<key>`. The delete restricts by
    every key and replace_by column it can know that way, constants included (`provider: "'acme'"`
    keeps another provider's row of the same entity)."""
    if write.function is not None:
        return (), f"cannot undo a function call: write on_delete: {OnDelete.KEEP}"
    mapped = {f.column: f.expression.parsed.parsed for f in write.columns}
    own = {"type": "subexpression", "children": [_field("entity"), _field(key)]}

    def known(column: str) -> bool:
        return mapped.get(column) == own or _constant(mapped.get(column))

    scope = write.replace_by or write.key
    named = "replace_by" if write.replace_by else "key"
    unknown = [c for c in scope if not known(c)]
    hint = f"or write on_delete: {OnDelete.KEEP} (history, or a table shared by entities)"
    if unknown:
        how = ", ".join(f"{c} ({_source(write, c)})" for c in unknown)
        return (), (
            f"cannot tell which rows of {write.table} are the entity's: {named} {how}"
            + (" are neither" if len(unknown) > 1 else " is neither")
            + f" entity.{key} nor a constant, so it says nothing about whose row it is; {hint}"
        )
    if not any(mapped.get(c) == own for c in scope):
        return (), (
            f"cannot tell which rows of {write.table} are the entity's: no {named} column"
            f" ({', '.join(scope)}) is mapped to exactly entity.{key}; map one from entity.{key}, {hint}"
        )
    return tuple(c for c in dict.fromkeys((*write.key, *write.replace_by)) if known(c)), None


def _constant(parsed: Any) -> bool:
    return isinstance(parsed, dict) and parsed.get("type") == "literal"


def _source(write: Write, column: str) -> str:
    for field in write.columns:
        if field.column == column:
            return f"mapped to {field.expression.text}"
    return "from a lookup" if any(lookup.column == column for lookup in write.lookups) else "not mapped"


def _field(name: str) -> dict[str, Any]:
    return {"type": "field", "children": [], "value": name}


def write(cursor: psycopg.Cursor[Any], plan: SourcePlan, batch: Sequence[EntityResult]) -> None:
    """Delete the rows of the batch's deleted entities, table by table in reverse write order."""
    gone = [result for result in batch if result.outcome is Outcome.DELETE]
    if not gone:
        return
    for index in reversed(plan.deleting):
        found = sorted({result.removals[index] for result in gone if index in result.removals}, key=str)
        if found:
            write_ = plan.writes[index]
            targets.delete_scopes(cursor, write_, write_.removed, found)


def described(source: Source, entity: dict[str, Any]) -> list[str]:
    """What a delete of this entity removes and keeps, for dry runs: `apps where appid = 10`."""
    lines = []
    for write in source.writes:
        if write.deleting:
            expressions = {f.column: f.expression for f in write.columns}
            where = " and ".join(f"{c} = {expressions[c].search({'entity': entity})!r}" for c in write.delete_by)
            lines.append(f"delete    {write.table} where {where}")
        else:
            lines.append(f"keep      {write.function or write.table} (on_delete: {OnDelete.KEEP})")
    return lines[::-1]  # the order they would run in
