"""config: YAML source files -> spec.Source, and every problem as `file:line: path: message`."""

from __future__ import annotations

import contextlib
import copy
import os
import re
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runner import config, schemacheck, sourcefile, spec
from runner.errors import ConfigError

INVALID = Path(__file__).parent / "data" / "invalid"
PROBLEM = re.compile(r"^[^:]+:\d+: [^:]*: .+")

MINIMAL = """\
name: t
entities: {columns: {appid: int}}
request: {url: "https://api.example/apps/{appid}"}
rate_limit: {requests: 1, per: 1s}
writes:
  - table: apps
    key: [appid]
    columns: {appid: entity.appid}
"""


def _load(tmp_path: Path, text: str, name: str = "s.yaml") -> spec.Source:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return config.load(path)


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    return [f"{p.line}: {p.path or '(top)'}: {p.message}" for p in caught.value.problems]  # no file name


# --- invalid configs as data ------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(INVALID.glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_config(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tests/data/invalid file reports exactly the problems its `# error:` lines list, in order."""
    expected = [
        line.removeprefix("# error: ") for line in case.read_text().splitlines() if line.startswith("# error: ")
    ]
    assert expected, f"{case.name} has no '# error:' lines"
    monkeypatch.chdir(INVALID)  # messages name the file as given: the expectations stay short
    with pytest.raises(ConfigError) as caught:
        config.load(Path(case.name))
    assert [str(p) for p in caught.value.problems] == expected


def test_there_are_enough_invalid_cases() -> None:
    """The invalid-config corpus covers the checks (one file per concern)."""
    assert len(list(INVALID.glob("*.yaml"))) >= 25


# --- what a valid file becomes -------------------------------------------------------------------------
def test_minimal_source_gets_defaults(tmp_path: Path) -> None:
    """Unset keys take the dataclass defaults, the project's status table and the name-based names."""
    source = _load(tmp_path, MINIMAL)
    assert source.job_type == "t"
    assert source.status == spec.Status(
        table=spec.QualifiedName(None, "sync_status"), key="appid", column="last_t_sync"
    )
    assert source.rate_limit == spec.RateLimit(requests=1, per=1.0, burst=1, bucket="t")
    assert source.request.timeout == 30.0
    assert source.request.max_body == 10_000_000
    assert source.request.verify_tls
    assert source.retry == spec.Retry()
    assert source.pagination == spec.Pagination()
    assert source.entities.key == "appid"
    assert source.entities.key_type == "int"
    assert source.entities.limit == 100
    assert source.records is None


def test_default_outcomes_follow_the_users(tmp_path: Path) -> None:
    """The user's rules come first, then 2xx success, 404 skip, other 4xx error 'HTTP {status}'."""
    source = _load(tmp_path, MINIMAL + 'outcomes:\n  - {when: "body.gone", outcome: skip, stamp: true}\n')
    names = [rule.name for rule in source.outcomes]
    assert names == ["rule 1", "default 2xx", "default 404", "default 4xx"]
    assert source.outcomes[0].stamp is True
    when = {rule.name: rule.when for rule in source.outcomes}
    assert [when["default 2xx"].search({"status": s}) for s in (199, 200, 299, 300)] == [False, True, True, False]
    assert when["default 404"].search({"status": 404})
    error = source.outcomes[-1]
    assert error.outcome is spec.Outcome.ERROR
    assert error.message is not None
    assert error.message.parts[0] == "HTTP "
    assert error.message.parts[1].search({"status": 418}) == 418


def test_example_source_in_full() -> None:
    """sources/example.yaml: durations, sizes, templates, settings and writes as the engine needs them."""
    source = config.load(Path(__file__).parent.parent / "sources" / "example.yaml")
    assert source.entities.refresh_interval == 86400.0
    assert source.entities.limit == 200
    assert source.request.timeout == 10.0
    assert source.request.max_body == 1_000_000
    assert source.rate_limit == spec.RateLimit(requests=20, per=1.0, burst=5, bucket="example-api")
    assert source.retry.initial == 0.2
    assert source.retry.max_wait == 30.0
    assert [(s.kind, s.name, s.secret) for s in source.settings] == [
        ("env", "EXAMPLE_API_URL", False),
        ("secret", "EXAMPLE_API_TOKEN", True),
    ]
    assert source.request.url.columns == {"appid"}
    tags = source.writes[1]
    assert tags.rows is not None
    assert tags.rows.text == "record.tags"
    assert tags.key == ("appid", "tag")
    assert source.writes[2].merge == (("ccu_peak", spec.Merge.GREATEST),)


def test_function_selection_args(tmp_path: Path) -> None:
    """`{param: limit}` is an engine parameter; anything else is a literal argument."""
    source = _load(
        tmp_path,
        MINIMAL.replace(
            "entities: {columns: {appid: int}}",
            "entities:\n  type: function\n  function: ops.get_apps\n"
            "  args: {p_source: {param: source}, p_limit: {param: limit}, p_tier: 2, p_x: null}",
        ),
    )
    assert source.entities.function == spec.QualifiedName("ops", "get_apps")
    assert source.entities.args == (
        ("p_source", spec.FunctionArg(parameter="source")),
        ("p_limit", spec.FunctionArg(parameter="limit")),
        ("p_tier", spec.FunctionArg(value=2)),
        ("p_x", spec.FunctionArg(value=None)),
    )


def test_status_false_disables_stamping(tmp_path: Path) -> None:
    """`status: false` means the source stamps nothing."""
    assert _load(tmp_path, MINIMAL + "status: false\n").status is None


def test_status_set_literals_become_expressions(tmp_path: Path) -> None:
    """A plain true/number in a `set:` map is that literal; a string is JMESPath."""
    source = _load(tmp_path, MINIMAL + "status:\n  set: {accessible: true, code: response.status}\n")
    assert source.status is not None
    assert [(f.column, f.expression.text) for f in source.status.set] == [
        ("accessible", "`true`"),
        ("code", "response.status"),
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("1m", 60.0), ("1h", 3600.0), ("7d", 604800.0), ("1.5s", 1.5), (2, 2.0)],
)
def test_durations(text: str | int, seconds: float) -> None:
    """Durations take ms/s/m/h/d suffixes or plain seconds."""
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("10MB", 10_000_000), ("512KB", 512_000), ("1GB", 10**9), ("1MiB", 2**20), (42, 42)]
)
def test_sizes(text: str | int, size: int) -> None:
    """Sizes are decimal KB/MB/GB (binary with KiB/MiB/GiB) or plain bytes."""
    assert config.parse_size(text) == size


@pytest.mark.parametrize("text", ["soon", "1 s", "-1s", "1w", True])
def test_bad_durations(text: str | bool) -> None:
    """Anything else is a ValueError with the allowed forms."""
    with pytest.raises(ValueError, match="is not a duration"):
        config.parse_duration(text)


# --- syncrun.yaml -------------------------------------------------------------------------------------------
def test_project_defaults_are_found_walking_up(tmp_path: Path) -> None:
    """syncrun.yaml in a parent directory sets the status table and entity key."""
    (tmp_path / "syncrun.yaml").write_text(
        "status: {table: ops.status, key: id}\nentities: {key: id, key_type: text}\n"
    )
    (tmp_path / "sources").mkdir()
    text = MINIMAL.replace("{appid: int}", "{id: text}").replace("{appid}", "{id}").replace("appid", "id")
    source = _load(tmp_path, text, "sources/s.yaml")
    assert source.status is not None
    assert source.status.table == spec.QualifiedName("ops", "status")
    assert (source.entities.key, source.entities.key_type, source.status.key) == ("id", "text", "id")


def test_without_project_file_builtin_defaults_apply(tmp_path: Path) -> None:
    """No syncrun.yaml anywhere up the tree: sync_status, appid, int."""
    assert config.find_project(tmp_path / "s.yaml") is None or (tmp_path / "syncrun.yaml").exists() is False
    assert config.Project() == config.Project(spec.QualifiedName(None, "sync_status"), "appid", "appid", "int")


def test_project_file_problems_are_reported(tmp_path: Path) -> None:
    """A wrong syncrun.yaml is reported with its own file name and line."""
    (tmp_path / "syncrun.yaml").write_text("status:\n  tabel: x\n")
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, MINIMAL)
    assert [p.message for p in caught.value.problems] == ["unknown key 'tabel' (did you mean 'table'?)"]
    assert caught.value.problems[0].file.endswith("syncrun.yaml")
    assert caught.value.problems[0].line == 2


# --- reading safely -------------------------------------------------------------------------------------
def test_file_size_limit(tmp_path: Path) -> None:
    """A file over 1 MB is refused before parsing."""
    problems = _problems(tmp_path, MINIMAL + "#" * sourcefile.MAX_FILE_BYTES)
    assert problems == ["1: (top): the file is larger than 1000 KB"]


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_endless_file_is_refused_without_reading_it_all() -> None:
    """A file that never ends (/dev/zero) is read only up to the limit: a problem, not all of memory."""
    with pytest.raises(ConfigError) as caught:
        config.load(Path("/dev/zero"))
    assert [p.message for p in caught.value.problems] == ["the file is larger than 1000 KB"]


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    """Pathological nesting is a problem, not a RecursionError."""
    assert _problems(tmp_path, "x: " + "[" * 5000) == ["1: (top): nested more than 32 levels deep"]


def test_missing_file(tmp_path: Path) -> None:
    """An unreadable file is a ConfigError naming the reason."""
    with pytest.raises(ConfigError, match="cannot read the file: No such file"):
        config.load(tmp_path / "missing.yaml")


def test_validate_collects_problems_per_file(tmp_path: Path) -> None:
    """validate returns every file's problems, an empty list for a good one."""
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(MINIMAL)
    bad.write_text(MINIMAL + "concurrency: 0\n")
    results = config.validate([good, bad])
    assert results[good] == []
    assert [str(p) for p in results[bad]] == [f"{bad}:9: concurrency: 0 is out of range: must be at least 1"]


def test_unexpected_errors_propagate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug is not a Problem: it propagates so the CLI exits 70."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(config._Builder, "entities", broken)
    (tmp_path / "s.yaml").write_text(MINIMAL)
    with pytest.raises(RuntimeError, match="bug"):
        config.validate([tmp_path / "s.yaml"])


def test_loading_does_not_mutate_the_document(tmp_path: Path) -> None:
    """Building the spec reads the parsed document and never changes it."""
    text = (Path(__file__).parent.parent / "sources" / "example.yaml").read_text()
    doc, problems = sourcefile.read(text, "example.yaml")
    assert doc is not None
    assert not problems
    before = copy.deepcopy(doc.data)
    _, blocked = schemacheck.check(doc, "source.schema.json")
    config._Builder(doc, Path("example.yaml"), config.Project(), [], blocked).source()
    assert doc.data == before


# --- fuzzing ----------------------------------------------------------------------------------------------
# Whatever a file holds, load ends in a Source or located problems: never another exception (which the
# CLI turns into exit 70). Every input a fuzzer ever found is pinned with @example, so a lucky run
# cannot hide it again; under CI the search is derandomised, so a red build is reproducible.
_FUZZ = settings(
    max_examples=int(os.environ.get("SYNCRUN_FUZZ_EXAMPLES", "1000")),
    derandomize=os.environ.get("CI", "").lower() == "true",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_BASE_TEXT = (Path(__file__).parent.parent / "sources" / "example.yaml").read_text()
_BASE = yaml.safe_load(_BASE_TEXT)
_DEEP = st.tuples(
    st.sampled_from(["(", "!", "[", "{a:", "a[*].", "a||", "`[", "&", "a[?", "length("]), st.integers(1, 6000)
).map(lambda t: t[0] * t[1])
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.integers(-(10**4000), 10**4000),  # beyond bigint, up to CPython's int-string limit
    st.floats(),  # nan and inf too
    st.text(max_size=20),
    st.text(st.characters(codec="utf-8"), max_size=20),  # every plane, controls and odd marks included
    st.sampled_from(["30s", "0s", "1MB", "{appid}", "${env.X}", "${x.Y}", "record.[", "entity.appid", "greatest", "%"]),
    st.sampled_from(["1e400s", "9" * 30 + "d", "9" * 30 + "MB", "http://[::1", "\n", "x" * 5000, "h\ud800"]),
    _DEEP,
    st.sampled_from(  # JMESPath syntax of every kind: slices once crashed the loader (their children are numbers)
        [
            *("body[0:1]", "body[::-1]", "body[-1]", "@", "body.*", "body[]", "{a: body}", "[body, status]"),
            *("body | [0]", "body[?a == `1`]", "sort_by(body, &a)[:2]", "!body", "body && status || `null`"),
            '`{"a": [1]}`',
        ]
    ),
)
_KEYS = st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none(), st.floats())
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=8,
)


def _paths(value: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += _paths(child, (*path, index))
    return out


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    """The example source with a few random edits: replaced values, deleted or added keys."""
    doc = copy.deepcopy(_BASE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]  # type: ignore[index]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(_VALUES)  # type: ignore[index]
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(_KEYS)] = draw(_VALUES)
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    if draw(st.booleans()):  # raw text damage too: what a careless edit does
        position = draw(st.integers(0, len(text)))
        text = (
            text[:position]
            + draw(st.sampled_from(["\n", ":", "- ", "{", "'", "  ", "&a ", "*a", "!!str "]))
            + text[position:]
        )
    return text


def _assert_spec_or_located_problems(text: str | bytes) -> None:
    problems = []
    try:
        source: spec.Source | None = config.loads(text, Path("sources/fuzz.yaml"))
    except ConfigError as error:
        source, problems = None, [str(problem) for problem in error.problems]
    assert isinstance(source, spec.Source) or problems
    for problem in problems:
        assert PROBLEM.match(problem), problem
        assert "\n" not in problem
        assert len(problem) < 1000, problem[:200]  # a huge value is shown clipped


def _edit(path: str, value: str) -> str:
    """The example source's text with the value at a dotted path replaced by raw YAML text."""
    *parents, key = path.split(".")
    lines, indent, at = _BASE_TEXT.splitlines(), "", 0
    for part in [*parents, key]:
        at = next(i for i in range(at, len(lines)) if lines[i].startswith(f"{indent}{part}:"))
        indent += "  "
    head = lines[at].split(":")[0]
    return "\n".join([*lines[:at], f"{head}: {value}", *lines[at + 1 :]]) + "\n"


@_FUZZ
@given(text=st.one_of(_mutated(), st.text(max_size=200)))
@example(text=_edit("request.max_body", "1.0"))  # found in a fresh-clone run: ValueError from parse_size
@example(text=_edit("entities.limit", "9" * 5000))  # CPython's int-string limit: ValueError
@example(text=_edit("entities.limit", "-" + "9" * 5000))
@example(text=_edit("entities.limit", "0x" + "f" * 5000))
@example(text=_edit("entities.limit", "1" + "0" * 5000 + ".5"))
@example(text=_edit("entities.limit", "200.0"))  # a float where a count belongs
@example(text=_edit("retry.initial", "1" + "0" * 400))  # OverflowError: int too large for float
@example(text=_edit("retry.initial", "1" + "0" * 400 + "d"))
@example(text=_edit("retry.max_wait", ".inf"))
@example(text=_edit("request.timeout", ".nan"))
@example(text=_BASE_TEXT.replace("  attempts: 4", "  attempts: 100\n  factor: 1.0e300"))  # overflow in backoff
@example(text=_edit("request.max_body", "9" * 5000 + "MB"))
@example(text=_edit("records", "'" + "(" * 5000 + "a" + ")" * 5000 + "'"))  # RecursionError in jmespath
@example(text=_edit("records", "'" + "!" * 20000 + "a'"))
@example(text=_edit("records", "'" + "[" * 5000 + "'"))
@example(text=_edit("records", "'" + "a[*]." * 900 + "a'"))
@example(text=_edit("records", "'" + "||".join("a" * 1500) + "'"))
@example(text=_edit("records", "'`" + "[" * 2000 + "`'"))  # json's recursion inside a `literal`
@example(text=_edit("request.query", "{1: us, true: x, null: y, 1.5: z}"))  # keys that are not text
@example(text=_edit("name", '"\\u202e\\u0000\\ud800"'))  # odd unicode: bidi override, NUL, lone surrogate
@example(text=_edit("description", "x" * 900_000))
@example(text=_edit("request.url", '"http://h/\\ud800/{appid}"'))
@example(text=_edit("records", "body.data[0:1]"))  # found: AttributeError, a slice's children are numbers
@example(
    text=_edit("outcomes", "[{when: 'body[::2] == `[]`', outcome: skip}]")
)  # found: UnicodeEncodeError parsing the URL
@example(text=_edit("rate_limit", "(" * 900))  # found: a oneOf message quoted the whole value (1,000+ chars)
def test_fuzz_every_config_is_a_spec_or_located_problems(text: str) -> None:
    """Whatever the text, load returns a Source or raises ConfigError with `file:line: path: message` lines."""
    _assert_spec_or_located_problems(text)


_DAMAGE = st.sampled_from(
    [
        b"\n",
        b"\r\n",
        b"\t",
        b"\x00",
        b"\xff\xfe",
        b"\xc3",  # a cut UTF-8 sequence
        "\u202e".encode(),
        b": ",
        b"- ",
        b"{",
        b"[",
        b"'",
        b'"',
        b"`",
        b"&a ",
        b"*a",
        b"!!binary ",
        b"!!python/object ",
        b"? ",
        b"|",
        b"%YAML 1.1\n---\n",
        b"---\n",
        b"9" * 5000,
        b"1e400",
        b".nan",
        b"-.inf",
        b"1.0",
        b"0x" + b"f" * 40,
        b"(" * 3000,
        b"[" * 100,
        b'"\\ud800"',  # a lone surrogate, by escape
        b"${env.X",
        b"${secret.Y}",
        b"{appid}",
    ]
)


@st.composite
def _damaged_bytes(draw: st.DrawFn) -> bytes:
    """The example source's bytes with a few byte-level edits: flips, inserts, deletions, repeats."""
    data = bytearray(_BASE_TEXT.encode())
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "random", "delete", "repeat"]))
        if action == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[at:at] = draw(_DAMAGE)
        elif action == "random":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        else:
            span = data[at : at + draw(st.integers(1, 40))]
            data[at:at] = span * draw(st.integers(1, 50))
    return bytes(data)


@_FUZZ
@given(data=_damaged_bytes())
@example(data=_BASE_TEXT.encode().replace(b"max_body: 1MB", b"max_body: 1.0"))
@example(data=_BASE_TEXT.encode().replace(b"limit: 200", b"limit: " + b"9" * 5000))
@example(data=_BASE_TEXT.encode().replace(b"records: body.data", b"records: " + b"(" * 3000))
@example(data=_BASE_TEXT.encode().replace(b"cc: us", b"cc: \xff\xfe"))
@example(data=_BASE_TEXT.encode().replace(b"name: example", b"name: \x00"))
@example(data=b")# yaml-language-server:" * 30 + _BASE_TEXT.encode())  # found: a 700-character key, printed whole
def test_fuzz_damaged_bytes_are_a_spec_or_located_problems(data: bytes) -> None:
    """Byte-level damage (not only well-formed YAML): still a Source or located problems, never a crash."""
    _assert_spec_or_located_problems(data)


def test_fuzz_examples_edit_what_they_say() -> None:
    """The pinned examples really change the value they name (a moved key would make them vacuous)."""
    assert "max_body: 1.0\n" in _edit("request.max_body", "1.0")
    assert f"  limit: {'9' * 5000}\n" in _edit("entities.limit", "9" * 5000)
    assert "records: 'x'\n" in _edit("records", "'x'")
    assert "  initial: 5s\n" in _edit("retry.initial", "5s")


def test_an_unknown_key_in_schedule_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    """Review revA F2: an unknown key is reported, and the section is still read (to find the rest of
    its problems); `schedule:` was read by splatting it into its spec, so `bogus: 1` raised TypeError
    (exit 70)."""
    text = MINIMAL + 'schedule: {cron: "0 * * * *", bogus: 1}\n'
    assert _problems(tmp_path, text) == [
        "9: schedule.bogus: unknown key 'bogus' (allowed: cron, partitions, timeout_minutes)"
    ]


def _mappings(node: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    if isinstance(node, dict):
        return [path] + [p for k, v in node.items() for p in _mappings(v, (*path, k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _mappings(v, (*path, i))]
    return []


@pytest.mark.parametrize(
    "bundled", sorted((Path(__file__).parent.parent / "sources").glob("*.yaml")), ids=lambda p: p.name
)
def test_an_unknown_key_in_any_mapping_of_a_bundled_source_is_a_problem(tmp_path: Path, bundled: Path) -> None:
    """Review revA F2, everywhere: `bogus: 1` added to each mapping of each bundled source, one at a
    time, loads or is a ConfigError (exit 2), never another exception (exit 70)."""
    document = yaml.safe_load(bundled.read_text())
    for path in _mappings(document):
        changed = yaml.safe_load(bundled.read_text())
        node = changed
        for step in path:
            node = node[step]
        node["bogus"] = 1
        target = tmp_path / bundled.name
        target.write_text(yaml.safe_dump(changed, sort_keys=False))
        with contextlib.suppress(ConfigError):  # many mappings take any key: columns, headers, params
            config.load(target)


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Connection", "TE", "Upgrade"])
def test_a_header_that_frames_the_request_is_refused(tmp_path: Path, name: str) -> None:
    """Review revC: a source's `Content-Length: "{appid}"` went out as written on a reused connection,
    so an entity's value could decide where the server thinks the next request begins."""
    text = MINIMAL.replace(
        'request: {url: "https://api.example/apps/{appid}"}',
        f'request: {{url: "https://api.example/apps/{{appid}}", headers: {{{name}: "{{appid}}"}}}}',
    )
    assert _problems(tmp_path, text) == [
        f"3: request.headers.{name}: frames the request: the HTTP client sets it, not a source"
    ]


def test_each_use_of_a_setting_with_its_own_default_is_resolved_and_masked(tmp_path: Path) -> None:
    """One secret with two defaults (a header and the query) is two uses: both defaults are masked; a
    variable used with a default and without one is missing when unset (review revG F1, F2: only the
    first use reached resolving, so the other default went out unmasked, and the use without a default
    crashed the run with a KeyError instead of exit 2)."""
    from runner import templating
    from runner.errors import SettingError

    source = _load(
        tmp_path,
        MINIMAL.replace(
            'request: {url: "https://api.example/apps/{appid}"}',
            'request: {url: "https://api.example/apps/{appid}", headers: {X-A: "${secret.K:-AAAAAAAAfirst1}"},'
            ' query: {k: "${secret.K:-BBBBBBBBsecond2}"}}',
        ),
    )
    settings = templating.resolve(source.settings, {})
    assert settings.redact("x-a: AAAAAAAAfirst1 k=BBBBBBBBsecond2") == "x-a: *** k=***"
    mixed = _load(
        tmp_path,
        MINIMAL.replace(
            'request: {url: "https://api.example/apps/{appid}"}',
            'request: {url: "${env.HOST:-https://api.example}/apps/{appid}", headers: {X-Host: "${env.HOST}"}}',
        ),
        "m.yaml",
    )
    with pytest.raises(SettingError, match="HOST"):
        templating.resolve(mixed.settings, {})


PAGED = """\
name: t
entities: {type: list}
request: {url: "https://api.example/list?cc=us&QUERY", query: {REQUEST}}
pagination: PAGINATION
rate_limit: {requests: 1, per: 1s}
status: false
writes:
  - table: apps
    key: [appid]
    columns: {appid: record.id}
"""


def _paged(query: str, request: str, pagination: str) -> str:
    return PAGED.replace("QUERY", query).replace("REQUEST", request).replace("PAGINATION", pagination)


@pytest.mark.parametrize(
    ("query", "pagination", "name", "setting"),
    [
        ("page=1", "{type: page, param: page}", "page", "param"),
        ("offset=50", "{type: offset, param: offset, page_size: 50}", "offset", "param"),
        ("limit=10", "{type: link, page_size: 10, size_param: limit}", "limit", "size_param"),
        ("per_page=5", "{type: page, param: page, page_size: 5, size_param: per_page}", "per_page", "size_param"),
    ],
)
def test_a_url_query_parameter_the_pagination_sets_is_refused(
    tmp_path: Path, query: str, pagination: str, name: str, setting: str
) -> None:
    """review revJ F7: `url: …/list?page=1` with `param: page` validated, and the requests went out with
    page=0, then page=1: the value written in the URL was replaced, though a URL's query is kept as
    written. Refused for each parameter a pagination sets, naming it, at the URL's line."""
    assert _problems(tmp_path, _paged(query, "", pagination)) == [
        f"3: request.url: the query parameter '{name}' is in the URL's own query, but pagination.{setting} sets"
        " it on the listing's requests, replacing the URL's value: remove it from the URL"
    ]
    _load(tmp_path, _paged("x=1", "", pagination))  # other parameters are kept as written


@pytest.mark.parametrize(
    ("query", "pagination", "problem"),
    [
        (
            "${env.QN:-page}=1",
            "{type: page, param: page}",
            "the query parameter 'page' is in the URL's own query, but pagination.param sets it on the listing's"
            " requests, replacing the URL's value: remove it from the URL",
        ),
        (
            "after=*&${env.QN:-after=b}",
            "{type: cursor, param: after, cursor: body.next}",
            "the query parameter 'after' is pagination.param, whose value in the URL is the first cursor, but it"
            " is there 2 times: the first request would send them all; write it once",
        ),
    ],
)
def test_a_pagination_param_from_a_written_default_is_refused_at_validate(
    tmp_path: Path, query: str, pagination: str, problem: str
) -> None:
    """review revK F4: `?${env.QN:-page}=1` with `param: page` passed validate and was refused only at
    run start. A default is the file's text: the URL is read with it, at the URL's line."""
    assert _problems(tmp_path, _paged(query, "", pagination)) == [
        f"3: request.url: is not a usable URL with the defaults written here (${{env.QN:-…}}): {problem}"
    ]
    _load(tmp_path, _paged("${env.QN:-x}=1", "", pagination))


def test_a_cursor_pagination_param_in_the_url_is_the_first_cursor(tmp_path: Path) -> None:
    """review revK F1: an API that starts a cursor listing at `?cursor=*` (Crossref, Solr) could no
    longer be configured: the first request is sent as written, so the URL's (or request.query's)
    value is the first cursor, and the later pages replace it."""
    pagination = "{type: cursor, param: after, cursor: body.next}"
    _load(tmp_path, _paged("after=*", "", pagination))
    _load(tmp_path, _paged("x=1", "after: '*'", pagination))


@pytest.mark.parametrize("query", ["after=a&after=b", "after=*&x=1&after", "after=a&%61fter=b"])
def test_a_cursor_param_twice_in_the_url_is_refused(tmp_path: Path, query: str) -> None:
    """review revL F2: `?cursor=a&cursor=b` went out as written on the first request (which value
    is the first cursor is the API's guess); refused at the URL's line, like the other pagination
    parameters the URL may not hold. Once is the first cursor; other names may repeat."""
    pagination = "{type: cursor, param: after, cursor: body.next}"
    assert _problems(tmp_path, _paged(query, "", pagination)) == [
        "3: request.url: the query parameter 'after' is pagination.param, whose value in the URL is the first"
        " cursor, but it is there 2 times: the first request would send them all; write it once"
    ]
    _load(tmp_path, _paged("after=a&tag=1&tag=2", "", pagination))


@pytest.mark.parametrize(
    ("pagination", "first"),
    [
        ("{type: page, param: page}", " (pagination.start sets the first one)"),
        ("{type: offset, param: page, page_size: 10}", " (pagination.start sets the first one)"),
    ],
)
def test_a_request_query_parameter_the_pagination_sets_is_refused(tmp_path: Path, pagination: str, first: str) -> None:
    """review revJ F7: `query: {page: 3}` with `param: page` was replaced on every request as silently."""
    assert _problems(tmp_path, _paged("x=1", "page: '3'", pagination)) == [
        "3: request.query.page: is pagination.param, which the pagination sets on the listing's requests,"
        f" replacing this value: remove it here{first}"
    ]
