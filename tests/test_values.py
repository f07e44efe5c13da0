"""values: mapped values checked and converted against their columns' catalog types."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from runner import values
from runner.spec import Lookup, QualifiedName
from tests.pg import Database, expr, write


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


@pytest.mark.parametrize(
    ("type_name", "value", "reason"),
    [
        ("integer", "9" * 5000, "is not an integer"),  # int() of over 4300 digits raised ValueError
        ("bigint", float("inf"), "is not an integer"),
        ("numeric", float("nan"), "is not a finite number"),
        ("numeric", "NaN", "is not a number"),
        ("numeric", "Infinity", "is not a number"),
        ("numeric", "1_000", "is not a number"),  # Python's float() reads these; PostgreSQL does not
        ("numeric", "\u0661\u0662", "is not a number"),
        ("numeric", "1" * 4301, "is not a number"),
        ("double precision", "1e999", "is out of range for double precision"),
        ("double precision", 10**400, "is out of range for double precision"),
        ("real", 1e39, "is out of range for real"),
        ("real", 1e-50, "is out of range for real"),
        ("text", "a\ud800b", "contains a lone surrogate (\\ud800-\\udfff), which is not UTF-8"),
        (
            "jsonb",
            {"a": "\ud800"},
            "contains a lone surrogate (\\ud800-\\udfff), which JSON in PostgreSQL cannot store",
        ),
        ("json", ["\udfff"], "contains a lone surrogate (\\ud800-\\udfff), which JSON in PostgreSQL cannot store"),
    ],
    ids=lambda part: part if isinstance(part, str) and len(part) < 40 else type(part).__name__,
)
def test_hostile_values_are_refused_with_a_reason(type_name: str, value: Any, reason: str) -> None:
    """Values psycopg or PostgreSQL would refuse mid-batch are Unfit here, for that entity alone."""
    with pytest.raises(values.Unfit) as caught:
        values.coerce(type_name, value)
    assert str(caught.value) == reason


@pytest.mark.parametrize("type_name", ["jsonb", "json"])
@pytest.mark.parametrize("value", [[float("nan")], {"a": float("inf")}, [10**4400]], ids=["nan", "inf", "huge"])
def test_json_columns_refuse_what_is_not_json(type_name: str, value: Any) -> None:
    """NaN, infinity and integers Python cannot write are not JSON: Unfit, not a ValueError in psycopg."""
    with pytest.raises(values.Unfit, match=r"^is not JSON \("):
        values.coerce(type_name, value)


@pytest.mark.parametrize(
    ("type_name", "message"),
    [
        ("integer", "t.n: <int that cannot be shown> is out of range for integer"),
        ("numeric", "t.n: <int that cannot be shown> has more than 4300 digits"),
        ("text", "t.n: <int that cannot be shown> has more than 4300 digits to write as text"),
        ("character varying(10)", "t.n: <int that cannot be shown> has more than 4300 digits to write as text"),
        ("uuid", "t.n: <int that cannot be shown> is not a UUID"),
    ],
)
def test_an_integer_python_cannot_write_is_named_not_raised(type_name: str, message: str) -> None:
    """repr() of a 4301-digit integer raises: the message describes it instead (the old code crashed)."""
    with pytest.raises(values.Unfit) as caught:
        values.fit("t", {"n": type_name}, {"n": 10**4400})
    assert str(caught.value) == message


def test_a_4000_digit_integer_fits_numeric_and_text() -> None:
    """Below Python's 4300-digit limit a huge integer is still a number and still text."""
    assert values.coerce("numeric", 10**3999) == 10**3999
    assert values.coerce("text", 10**3999) == "1" + "0" * 3999


def test_a_converter_fault_nobody_foresaw_is_unfit_with_its_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: a converter raising anything but Unfit still fails only the entity, naming it."""

    def broken(value: Any, size: str) -> Any:
        raise OverflowError("boom")

    monkeypatch.setitem(values._HANDLERS, "date", broken)
    values.converter.cache_clear()
    try:
        with pytest.raises(values.Unfit, match=r"^t.d: 'x' cannot be converted: OverflowError: boom$"):
            values.fit("t", {"d": "date"}, {"d": "x"})
    finally:
        values.converter.cache_clear()


def test_accepted_edge_values_are_stored_by_postgresql(db: Database) -> None:
    """What passes is what PostgreSQL takes: emoji in text and jsonb, a denormal real, big numerics."""
    db.run("create table edge (t text, j jsonb, r real, d double precision, n numeric)")
    row = values.fit(
        "edge",
        {"t": "text", "j": "jsonb", "r": "real", "d": "double precision", "n": "numeric"},
        {"t": "ok \U0001f600", "j": {"e": "\U0001f600"}, "r": 1e-44, "d": "1.5e300", "n": 10**3999},
    )
    with db.connect() as conn:
        conn.execute("insert into edge values (%(t)s, %(j)s, %(r)s, %(d)s, %(n)s)", row)
    assert db.rows("select t, j->>'e', r > 0, d, length(n::text) from edge") == [
        ("ok \U0001f600", "\U0001f600", True, 1.5e300, 4000)
    ]


_TYPES = sorted([*values._HANDLERS, "character varying(5)", "integer[]"])
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(codec=None, categories=None))  # NUL and lone surrogates too
    | st.sampled_from([4299, 5000]).map(lambda e: 10**e)  # repr() of 10**5000 raises
    | st.sampled_from(["9" * 5000, "1e999", "NaN", "-Infinity", "1_0", "\u0661", " 12 "])
)
ANY_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(type_name=st.sampled_from(_TYPES), value=ANY_JSON)
def test_any_json_value_for_any_column_type_is_a_value_or_unfit(type_name: str, value: Any) -> None:
    """fit never raises anything but Unfit, and its message can always be built."""
    message = ""
    try:
        values.fit("t", {"c": type_name}, {"c": value})
    except values.Unfit as unfit:
        message = str(unfit)
    assert message == "" or message.startswith("t.c: ")


_STORED = {
    "i": "integer",
    "b": "bigint",
    "n": "numeric",
    "r": "real",
    "d": "double precision",
    "t": "text",
    "v": "character varying(5)",
    "j": "jsonb",
    "k": "json",
    "u": "uuid",
    "dt": "date",
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=st.sampled_from(sorted(_STORED)), value=ANY_JSON)
def test_every_value_fit_accepts_postgresql_stores(db: Database, column: str, value: Any) -> None:
    """The other half of the contract: what fit lets through never fails the batch in PostgreSQL."""
    columns = ", ".join(f"{name} {type_name}" for name, type_name in _STORED.items())
    db.run(f"create table if not exists hostile ({columns})")
    try:
        row = values.fit("hostile", _STORED, {column: value})
    except values.Unfit:
        return
    event("stored")
    with db.connect() as conn:
        conn.execute(f"insert into hostile ({column}) values (%s)", [row[column]])


@pytest.mark.parametrize(
    "type_name",
    ["smallint", "integer", "bigint", "text", "character varying", "numeric", "boolean", "double precision", None],
)
def test_unchanged_only_when_the_converter_returns_every_value_as_it_is(type_name: str | None) -> None:
    """`values.unchanged` lets WritePlan.fit skip a column: it must never say so for a value the
    converter would change or refuse (a bool, a float, an int out of range, NUL, a lone surrogate)."""
    samples: list[Any] = [0, 1, -1, 2**15, -(2**15) - 1, 2**31, 2**63, -(2**63), True, False, 1.0, 2.5, 1e308,
                          float("nan"), float("inf"), "7", "a", "", "a\x00b", "x\ud800", "é", "true", None, [1],
                          {"a": 1}]  # fmt: skip
    convert = values.converter(type_name)
    for first in samples:
        for second in samples:
            column = [first, second, None]
            if not values.unchanged(type_name, column):
                continue
            for value in column:
                if value is not None and convert is not None:
                    assert convert(value) is value, (type_name, value)
    assert values.unchanged("integer", [1, None, 2])
    assert values.unchanged("text", ["a", None])
    assert not values.unchanged("integer", [1, True])
    assert not values.unchanged("text", ["a", "\x00"])
    assert not values.unchanged("text", ["a", "\udfff"])  # not ASCII: searched for surrogates
    assert values.unchanged("text", ["a", "é\U0001f600"])
    assert values.unchanged("boolean", [True, None, False])
    assert not values.unchanged("boolean", [True, 1])
    assert values.unchanged("double precision", [1.5, None])
    assert not values.unchanged("double precision", [1.5, float("nan")])
    assert not values.unchanged("double precision", [1.5, 2])
