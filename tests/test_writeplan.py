"""writeplan: converters chosen once convert exactly as values.fit does, misfits named alike."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg.types.json import Jsonb

from runner import values, writeplan
from runner.spec import QualifiedName
from tests.pg import make_source, write

TARGET = write("items", ["id"], ["id", "name", "price", "seen", "tags", "extra"])
CATALOG: Any = {
    QualifiedName(None, "items"): {
        "id": "bigint",
        "name": "character varying(5)",
        "price": "numeric",
        "seen": "timestamp with time zone",
        "tags": "text[]",
        "extra": "jsonb",
    }
}
TYPES = CATALOG[QualifiedName(None, "items")]


@pytest.mark.parametrize(
    "row",
    [
        {"id": 1, "name": "a", "price": 1.5, "seen": "2024-01-01T00:00:00", "tags": ["x"], "extra": {"a": 1}},
        {"id": "2", "name": None, "price": "3", "seen": None, "tags": None, "extra": None},
        {"id": 3.0, "name": True, "other": "not a column"},
    ],
)
def test_rows_fit_as_values_fit_converts_them(row: dict[str, Any]) -> None:
    fitted = writeplan.WritePlan(TARGET, CATALOG).fit([row, row])
    assert [_plain(r) for r in fitted] == [_plain(values.fit("items", TYPES, row))] * 2


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """psycopg's Jsonb wrapper compares by identity: compare what it wraps."""
    return {k: (type(v).__name__, v.obj) if isinstance(v, Jsonb) else v for k, v in row.items()}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": "x"}, "items.id: 'x' is not an integer"),
        ({"id": 1, "name": "toolong"}, "items.name: 'toolong' is longer than 5 characters"),
        ({"id": 1, "price": float("nan")}, "items.price: nan is not a finite number"),
    ],
)
def test_a_misfit_is_named_as_values_fit_names_it(row: dict[str, Any], message: str) -> None:
    with pytest.raises(values.Unfit) as caught:
        writeplan.WritePlan(TARGET, CATALOG).fit([{"id": 9}, row])
    assert str(caught.value) == message


def test_a_plan_is_made_once_per_source_and_catalog() -> None:
    source = make_source(writes=(TARGET,))
    first = writeplan.compiled(source, CATALOG)
    assert writeplan.compiled(source, CATALOG) is first
    assert writeplan.compiled(source, dict(CATALOG)) is not first
    assert writeplan.compiled(make_source(writes=(TARGET,)), CATALOG) is not first
    assert first.writes[0].target is TARGET


def test_the_statements_are_built_with_the_plan() -> None:
    """The upsert forms, the COPY temp table and the deletes come from the plan, built once."""
    plan = writeplan.WritePlan(TARGET, CATALOG)
    assert plan.columns == ("id", "name", "price", "seen", "tags", "extra")
    assert 'on conflict ("id") do update set "name" = excluded."name"' in plan.upsert.as_string()
    assert "copy" in plan.copy.as_string()
    assert plan.unnest_upsert(("bigint[]",) * 6) is plan.unnest_upsert(("bigint[]",) * 6)
    assert plan.delete(plan.replaced, None) is plan.delete(plan.replaced, None)


def test_params_are_the_columns_in_order_null_where_missing() -> None:
    rows = [{"a": 1, "b": 2}, {"b": 3, "a": 4}]
    assert writeplan.params(rows, ("b", "a")) == [(2, 1), (3, 4)]
    assert writeplan.params(rows, ("a",)) == [(1,), (4,)]
    assert writeplan.params([*rows, {"a": 5}], ("a", "b")) == [(1, 2), (4, 3), (5, None)]
    assert writeplan.params(rows, ()) == [(), ()]
