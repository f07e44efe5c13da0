"""mapping: a value no function can handle is the entity's MappingError, naming the column and the
fault, never an exception that ends the run."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner import cli, mapping, spec
from runner.errors import MappingError
from tests.apiserver import ApiServer, Reply
from tests.pg import Database, expr, make_source
from tests.test_engine import env, seed, write_source

__all__ = ["env"]  # the fixture, shared with test_engine

HUGE = 10**4000  # JSON carries up to 4300 digits; str() of its square raises ValueError


def rows_of(record: dict[str, Any], **columns: str) -> list[mapping.Row]:
    fields = tuple(spec.Field(c, expr(e)) for c, e in {"appid": "entity.appid", **columns}.items())
    write = spec.Write(table=spec.QualifiedName(None, "apps"), key=("appid",), columns=fields)
    base = {"entity": {"appid": 1}, "body": record, "response": {}, "run": {}}
    return mapping.rows(make_source(writes=(write,)), base)[0]


@pytest.mark.parametrize(
    ("expression", "value", "expected"),
    [
        ("as_int(record.n)", "9" * 400 + ".0", None),
        ("as_int(record.n)", "9" * 5000, None),
        ("from_unix(record.n)", 1e20, None),
        ("from_unix(record.n)", -1e15, None),
        ("from_unix_ms(record.n)", float("inf"), None),
        ("unix_date(record.n)", float("nan"), None),
        ("concat(mul(record.n, record.n))", HUGE, ""),  # mul is null; concat of only nulls is ""
        ("mul(record.n, record.n)", HUGE, None),
        ("concat('#', record.n)", 10**4400, None),
        ("to_json(record.n)", float("nan"), None),
    ],
    ids=lambda part: part if isinstance(part, str) and len(part) < 40 else type(part).__name__,
)
def test_the_testers_values_map_to_null(expression: str, value: Any, expected: Any) -> None:
    """Each reproduction from the report: the custom function is total and gives null, no exception."""
    assert rows_of({"n": value}, n=expression) == [{"appid": 1, "n": expected}]


def test_a_builtin_that_raises_is_the_entitys_error_naming_column_and_fault() -> None:
    """jmespath's own to_string is not total (json.dumps of a 4301-digit int): a MappingError with
    the column, the expression and the exception's type and text."""
    with pytest.raises(MappingError) as caught:
        rows_of({"n": 10**4400}, label="to_string(record.n)")
    message = str(caught.value)
    assert message.startswith("apps.label: 'to_string(record.n)' failed: ValueError: ")
    assert "4300" in message


def test_the_records_expression_is_guarded_the_same_way() -> None:
    """A fault in `records` is a MappingError naming `records`."""
    source = spec_with_records(make_source(), "to_string(body.n)")
    with pytest.raises(MappingError, match=r"^records: 'to_string\(body.n\)' failed: ValueError"):
        mapping.records(source, {"body": {"n": 10**4400}})


def spec_with_records(source: spec.Source, text: str) -> spec.Source:
    return replace(source, records=expr(text))


def test_an_unshowable_value_in_a_message_is_named_not_raised() -> None:
    """`records` finding nothing quotes the body; a body json cannot write is described instead."""
    source = spec_with_records(make_source(), "body.missing")
    with pytest.raises(MappingError, match="<dict that cannot be shown>"):
        mapping.records(source, {"body": {"n": 10**4400}})


# --- end to end: `syncrun run` against a loopback API, one hostile value per entity ------------------
COLUMNS = """name: record.name
      price_cents: record.s && floor(to_number(record.s)) || as_int(record.price)
      review_count: record.reviews
      updated_at: from_unix(record.t)"""


def _body(appid: int, extra: str = "") -> Reply:
    text = f'{{"name": "App {appid}"{extra}}}'.encode()
    return Reply(200, body=text, headers={"Content-Type": "application/json"})


def test_hostile_values_fail_only_their_entity_and_the_run_completes(
    env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """The tester's values through `syncrun run`: the custom functions give null (the entity
    succeeds with null columns); a jmespath built-in that raises, a 4300-digit integer for an int
    column, a NUL in text, or a lone surrogate (the client refuses that JSON) is that entity's error
    with a message and a backoff; an unreadable Retry-After is the normal backoff. The others are
    written and the run exits 0 (4 of 10 failed, under the default fail_ratio 0.5)."""
    source = write_source(tmp_path, columns=COLUMNS)
    seed(env, source, appids=range(1, 11))
    api.route("/apps/1", _body(1, ', "price": 12'))
    api.route("/apps/2", _body(2, ', "price": "' + "9" * 400 + '.0", "t": 1e20'))  # as_int / from_unix: null
    api.route("/apps/3", _body(3, ', "t": -1e15'))  # year -31686769: null
    api.route("/apps/4", _body(4, ', "reviews": ' + "9" * 4300))  # JSON's largest integer, for an int column
    api.route("/apps/5", _body(5, ', "name": "a\\u0000b"'))  # NUL in text
    api.route("/apps/6", _body(6, ', "name": "a\\ud800b"'))  # a lone surrogate in text
    api.route("/apps/7", _body(7, ', "s": "1.0e400"'))  # floor(infinity): OverflowError in jmespath
    api.route(
        "/apps/8",
        Reply(503, headers={"Retry-After": "Mon, 01 Jan 99999999999 00:00:00 GMT"}),
        _body(8, ', "price": 80'),
    )
    for appid in (9, 10):
        api.route(f"/apps/{appid}", _body(appid, f', "price": {appid}'))

    assert cli.main(["run", str(source)]) == 0

    assert env.rows("select appid, name, price_cents, updated_at from apps order by appid") == [
        (1, "App 1", 12, None),
        (2, "App 2", None, None),
        (3, "App 3", None, None),
        (8, "App 8", 80, None),
        (9, "App 9", 9, None),
        (10, "App 10", 10, None),
    ]
    errors = dict(
        env.rows(
            "select entity_key::int, last_error from syncrun_state where source = 'alpha'"
            " and consecutive_errors = 1 and next_attempt_at > now() order by 1"
        )
    )
    assert sorted(errors) == [4, 5, 6, 7]
    assert errors[4] == "apps.review_count: " + "9" * 57 + "... is out of range for integer"
    assert errors[5] == "apps.name: 'a\\x00b' contains a NUL character, which PostgreSQL text cannot store"
    assert "a string holds a lone UTF-16 surrogate" in errors[6]  # the client refuses it already
    assert errors[7] == (
        "apps.price_cents: 'record.s && floor(to_number(record.s)) || as_int(record.price)' failed:"
        " OverflowError: cannot convert float infinity to integer"
    )
    assert env.rows("select status, items_succeeded, items_failed from sync_jobs") == [("completed", 6, 4)]


def test_entity_numerics_that_are_not_finite_do_not_raise() -> None:
    """A numeric entity column holding 'Infinity' or 'NaN' (PostgreSQL allows both) becomes a float."""
    entity = mapping.context(None, 200, {}, {"a": Decimal("Infinity"), "b": Decimal("NaN"), "c": Decimal("2")}, {})
    assert entity["entity"]["a"] == float("inf")
    assert entity["entity"]["b"] != entity["entity"]["b"]  # NaN
    assert entity["entity"]["c"] == 2


def test_when_with_rows_is_asked_per_item() -> None:
    """With rows:, `when` picks items (it may read `item`); records still pick as before."""
    fields = (spec.Field("appid", expr("entity.appid")), spec.Field("tag", expr("item.name")))
    write = spec.Write(
        table=spec.QualifiedName(None, "tags"),
        key=("appid", "tag"),
        columns=fields,
        rows=expr("record.tags"),
        when=expr("item.visible && record.listed"),
    )
    record = {"listed": True, "tags": [{"name": "a", "visible": True}, {"name": "b", "visible": False}]}
    base = {"entity": {"appid": 1}, "body": record, "response": {}, "run": {}}
    assert mapping.rows(make_source(writes=(write,)), base)[0] == [{"appid": 1, "tag": "a"}]
    base["body"] = {**record, "listed": False}
    assert mapping.rows(make_source(writes=(write,)), base)[0] == []


def _slow(source: spec.Source, base: dict[str, Any]) -> dict[int, list[mapping.Row]]:
    """mapping.rows the general way: a document per record, every value searched from the top."""
    out: dict[int, list[mapping.Row]] = {index: [] for index in range(len(source.writes))}
    for record in mapping.records(source, base):
        document = {**base, "record": record}
        for index, write in enumerate(source.writes):
            out[index].extend(mapping._write_rows(write, document, index))
    return out


def test_rows_of_plain_paths_read_from_the_record_match_the_general_path() -> None:
    """A write whose values are all plain paths maps each record without a document per record
    (`_over_record`): same rows, same column order, for odd records too (not objects, missing and
    nested fields, a field named like a document key), with entity values read once."""
    columns = {"appid": "entity.appid", "id": "record.id", "deep": "record.a.b.c", "whole": "record",
               "odd": "record.entity", "deeper": "record.a.b.c.d", "status": "status", "run": "run.x"}  # fmt: skip
    fields = tuple(spec.Field(c, expr(e)) for c, e in columns.items())
    keyless = spec.Write(table=spec.QualifiedName(None, "apps"), key=(), columns=fields)
    keyed = replace(keyless, key=("appid",))
    records = [{"id": 1, "a": {"b": {"c": {"d": 4}}}, "entity": "x"}, {"a": {"b": 2}}, 3, None, "s", [1], {}]
    base = {"entity": {"appid": 7}, "body": records, "status": 200, "run": {"x": "y"}, "response": {}}
    for write in (keyless, keyed):
        source = make_source(writes=(write, keyless))
        got, expected = mapping.rows(source, base), _slow(source, base)
        assert got == expected
        assert [list(row) for row in got[0]] == [list(row) for row in expected[0]]
    assert got[0][0] == {"appid": 7, "id": 1, "deep": {"d": 4}, "whole": records[0], "odd": "x", "deeper": 4,
                         "status": 200, "run": "y"}  # fmt: skip


def test_a_null_key_from_a_plain_path_is_the_same_error() -> None:
    """The first record with a null key column raises the message the general path raises."""
    with pytest.raises(MappingError, match=r"apps\.appid: key column is null \('record\.id' found nothing\)"):
        rows_of_key({"data": [{"id": 1}, {"id": None}]})


def rows_of_key(body: dict[str, Any]) -> list[mapping.Row]:
    write = spec.Write(
        table=spec.QualifiedName(None, "apps"), key=("appid",), columns=(spec.Field("appid", expr("record.id")),)
    )
    base = {"entity": {"appid": 1}, "body": body, "response": {}, "run": {}}
    return mapping.rows(replace(make_source(writes=(write,)), records=expr("body.data")), base)[0]


def test_field_and_column_names_never_become_code() -> None:
    """The generated row maker binds every name from the YAML as a value: quotes, brackets and code in
    a quoted field name are only a key to look up."""
    odd = "x'): __import__('os') #\"\n"
    write = spec.Write(
        table=spec.QualifiedName(None, "apps"),
        key=(),
        columns=(
            spec.Field("a", expr(f"record.{json.dumps(odd)}")),
            spec.Field("b", expr(f"record.{json.dumps(odd)}.c")),
        ),
    )
    base = {"entity": {}, "body": {"data": [{odd: {"c": 1}}, {odd: 2}, 5]}, "response": {}, "run": {}}
    got = mapping.rows(replace(make_source(writes=(write,)), records=expr("body.data")), base)[0]
    assert got == [{"a": {"c": 1}, "b": 1}, {"a": 2, "b": None}, {"a": None, "b": None}]


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.dictionaries(
            st.sampled_from(["id", "page", "name"]),
            st.none() | st.just(0) | st.just(False) | st.just("") | st.just(0.0) | st.just([]) | st.just({}),
        ),
        max_size=6,
    ),
    key=st.sampled_from([("id",), ("id", "page"), ("page", "name")]),
)
def test_a_null_key_is_found_as_row_by_row(rows: list[dict[str, Any]], key: tuple[str, ...]) -> None:
    """`_null_key` (a column at a time) says what `row.get(column) is None` over every row and key
    column says: a missing column is null; 0, False, "" and empty containers are not."""
    assert mapping._null_key(rows, key) == any(row.get(column) is None for row in rows for column in key)
