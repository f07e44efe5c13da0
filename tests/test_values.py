"""values: mapped values checked and converted against their columns' catalog types."""

from __future__ import annotations

from typing import Any

import pytest

from runner import values
from runner.spec import Lookup, QualifiedName
from tests.pg import expr, write


@pytest.mark.parametrize(
    ("type_name", "value", "message"),
    [
        ("integer", 2**31, "2147483648 is out of range for integer"),
        ("integer", 1.5, "1.5 is not an integer"),
        ("integer", True, "True is not an integer"),
        ("numeric(10,2)", "x1", "'x1' is not a number"),
        ("boolean", "maybe", "'maybe' is not a boolean"),
        ("date", "Dec 2012", "'Dec 2012' is not a date (YYYY-MM-DD)"),
        ("timestamp with time zone", "soon", "'soon' is not a timestamp (ISO 8601)"),
        ("text", {"a": 1}, "{'a': 1} is not text (map it with to_json(...) to store JSON as text)"),
        ("text", "a\x00b", "'a\\x00b' contains a NUL character, which PostgreSQL text cannot store"),
        ("character varying(3)", "abcd", "'abcd' is longer than 3 characters"),
        ("jsonb", {"a": "\x00"}, "{'a': '\\x00'} contains a NUL character, which jsonb cannot store"),
        ("integer[]", 5, "5 is not a list"),
        ("uuid", "nope", "'nope' is not a UUID"),
    ],
)
def test_value_checks(type_name: str, value: Any, message: str) -> None:
    """Each column type rejects values PostgreSQL would, with a message naming the value."""
    with pytest.raises(ValueError, match=r"^(is|contains) ") as caught:
        values.coerce(type_name, value)
    assert f"{value!r} {caught.value}" == message


def test_values_are_converted_for_their_columns() -> None:
    """Accepted values come out in the form the column needs."""
    assert values.coerce("integer", "42") == 42
    assert values.coerce("bigint", 3.0) == 3
    assert values.coerce("boolean", "true") is True
    assert values.coerce("text", 12) == "12"
    assert str(values.coerce("date", "2012-12-21")) == "2012-12-21"
    assert str(values.coerce("timestamp with time zone", "2024-01-02T03:04:05")) == "2024-01-02 03:04:05+00:00"
    assert values.coerce("my_enum", "anything") == "anything"


def test_fit_names_table_column_and_value() -> None:
    """A misfit in a row names the table, the column and the value."""
    with pytest.raises(values.Unfit) as caught:
        values.fit("apps", {"appid": "integer", "price": "integer"}, {"appid": "7", "price": "cheap"})
    assert str(caught.value) == "apps.price: 'cheap' is not an integer"
    assert values.fit("apps", {"appid": "integer"}, {"appid": "7", "other": "x"}) == {"appid": 7, "other": "x"}


def test_a_lookup_column_is_checked_against_the_dimension_key() -> None:
    """Before it is resolved, a lookup column holds the natural key: typed like the dimension's key."""
    lookup = Lookup(
        column="developer_id",
        table=QualifiedName(None, "developers"),
        key="normalized_name",
        returning="id",
        value=expr("item"),
    )
    target = write("app_developers", ["appid", "developer_id"], ["appid"], lookups=(lookup,))
    catalog: Any = {
        QualifiedName(None, "app_developers"): {"appid": "integer", "developer_id": "integer"},
        QualifiedName(None, "developers"): {"id": "integer", "normalized_name": "text"},
    }
    assert values.column_types(target, catalog) == {"appid": "integer", "developer_id": "text"}
