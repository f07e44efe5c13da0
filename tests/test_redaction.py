"""redaction: every form of a secret, every 8-character piece of one, a secret cut at a mark, `add`."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import os
import random
import re
import tracemalloc
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.escapes import views
from runner.redaction import FRAGMENT, MASK, Redactor, _html_escaped, encodings, forms

HOSTILE = 'tok\\en"/%2F+~ spa cé ✓ü-9f3b2c71'  # \ " / % + ~, spaces, non-ASCII: 31 characters
SECRETS = [HOSTILE, "line one\nline two!", "plain-9f3b2c71e8a4d6ab"]


def fragments(text: str) -> set[str]:
    return {text[i : i + FRAGMENT] for i in range(len(text) - FRAGMENT + 1)} if len(text) >= FRAGMENT else {text}


def assert_clean(text: str, secrets: list[str] = SECRETS) -> None:
    for secret in secrets:
        for form in forms(secret):
            leaked = [piece for piece in fragments(form) if piece in text]
            assert not leaked, f"{leaked[0]!r} of {form!r} in {text!r}"


def escapes(secret: str) -> list[str]:
    """How code outside the redactor may write a secret, nothing around it (tests/test_security.py
    searches for every 8-character piece of these). Independent of `forms`, on purpose."""
    url = str(httpx.URL("http://h/p", params={"key": secret})).split("key=", 1)[1]
    return [
        secret,
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
        repr(secret.encode())[2:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret),
        quote(secret, safe=""),
        quote_plus(secret),
        re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), quote(secret, safe="")),
        url,
        yaml.safe_dump(secret, width=2**31 - 1).removesuffix("\n...\n").strip().strip("'\""),
        yaml.safe_dump(secret, allow_unicode=True, width=2**31 - 1).removesuffix("\n...\n").strip().strip("'\""),
        yaml.safe_dump(secret, default_style='"', width=2**31 - 1).strip().strip('"'),
        secret.replace("|", "\\|").replace("\n", " "),
    ]


def written(secret: str) -> list[str]:
    """The secret inside the containers outputs use: reprs, JSON documents, YAML files, URLs."""
    return [
        *escapes(secret),
        repr(secret),
        f"{secret!r:>10}",
        json.dumps({"k": [secret]}, default=str),
        str(httpx.URL("http://h/p", params={"key": secret})),
        yaml.safe_dump({"body": {"string": secret}}, width=2**31 - 1),
        yaml.safe_dump({"body": {"string": secret}}, allow_unicode=True, width=2**31 - 1),
    ]


@pytest.mark.parametrize("secret", SECRETS)
def test_every_escaped_form_is_masked(secret: str) -> None:
    """Raw, repr, ascii, bytes repr, JSON (both), percent (both ways, both hex cases), httpx's URL, YAML
    (plain, double-quoted, \\u escapes): none keeps any 8-character piece of any form of the secret."""
    redact = Redactor(SECRETS)
    for text in written(secret):
        said = f"HTTP 400 {{'error': 'bad key {text}'}} (GET /x)"
        clean = redact(said)
        assert MASK in clean
        assert_clean(clean)
        assert clean.startswith("HTTP 400 {'error': 'bad key ")  # nothing around it is eaten


@pytest.mark.parametrize("secret", SECRETS)
def test_a_cut_piece_of_a_secret_is_masked_in_any_form(secret: str) -> None:
    """The #10 leak: an 80-byte excerpt ending 13 characters into a token, then repr'd, then redacted.
    Every prefix and suffix of at least 8 characters, in every escape, is masked."""
    redact = Redactor(SECRETS)
    for length in range(FRAGMENT, len(secret) + 1):
        for piece in (secret[:length], secret[-length:]):
            for text in written(piece):
                assert_clean(redact(f"x {text} y"))


def test_a_secret_cut_at_a_mark_keeps_not_even_a_short_start() -> None:
    """Before a cut mark (… or ...), even 3–7 characters of a secret's start are masked (1–2 are not:
    that would mask every word ending in the secret's first letter)."""
    redact = Redactor(SECRETS)
    for length in range(3, FRAGMENT):
        head = HOSTILE[:length]
        assert redact(f"HTTP 503 'upstream said {head}…'") == f"HTTP 503 'upstream said {MASK}…'"
        assert redact(repr(f"upstream said {head}...")).endswith(f"{MASK}...'")
    assert redact("unrelated text…") == "unrelated text…"
    assert redact("unrelated to…") == "unrelated to…"


def test_excerpt_redacts_before_it_cuts() -> None:
    """`excerpt` masks first, so the cut can never leave a piece of a secret behind."""
    redact = Redactor([HOSTILE])
    for cut in range(1, 60):
        text = redact.excerpt(f"prefix {HOSTILE} and {HOSTILE} again", cut)
        assert len(text) <= cut
        assert_clean(text, [HOSTILE])


def test_short_secrets_are_masked_whole_only_and_tiny_ones_not_at_all() -> None:
    """A secret shorter than FRAGMENT has no fragments worth matching: masked whole (all its forms);
    one or two characters are not masked at all (they would shred every message)."""
    redact = Redactor(["a b/c", "xy"])
    assert redact("k=a b/c&u=a%20b%2Fc&v=a+b%2Fc") == f"k={MASK}&u={MASK}&v={MASK}"
    assert redact("a b and b/c") == "a b and b/c"  # pieces of a short secret are left alone
    assert redact("xy") == "xy"


def test_whole_only_values_do_not_mask_their_pieces() -> None:
    """A DSN is masked whole; its host and database names elsewhere stay readable."""
    dsn = "postgresql://app:pa%20ss@db.example.com:5432/app"
    redact = Redactor(["pa ss-long-password"], whole=[dsn])
    assert redact(f"cannot reach {dsn}; db.example.com:5432/app is down") == (
        f"cannot reach {MASK}; db.example.com:5432/app is down"
    )


def test_a_very_long_whole_value_is_masked_and_still_longest_first() -> None:
    """A 5,000-character DSN (client certificates inline, say) is masked whole, before the shorter
    password inside it would leave its head and tail readable."""
    dsn = "postgresql://u:" + "pw-0123456789" + "@h/db?options=" + "x" * 5000
    redact = Redactor(["pw-0123456789"], whole=[dsn])
    assert redact(f"at {dsn} and pw-0123456789") == f"at {MASK} and {MASK}"


def test_add_masks_a_secret_learnt_at_run_time_from_then_on() -> None:
    """`add` is the seam for tokens obtained mid-run (OAuth2): later outputs honour it."""
    redact = Redactor(["first-secret-value"])
    fetched = "access-token-from-oauth-0123"
    assert redact(f"got {fetched}") == f"got {fetched}"
    redact.add(fetched)
    assert redact(f"got {fetched[:12]}") == f"got {MASK}"
    assert redact("first-secret-value") == MASK


def test_value_redacts_strings_inside_structures_before_they_are_dumped() -> None:
    """Dict keys and values, lists and tuples: strings redacted, other values kept."""
    redact = Redactor([HOSTILE])
    value = {HOSTILE: [HOSTILE[:12], 3, None, (HOSTILE, True)], "n": 1.5}
    assert redact.value(value) == {MASK: [MASK, 3, None, (MASK, True)], "n": 1.5}


def test_text_without_secrets_is_unchanged() -> None:
    """Random text that shares characters (but no 8-character piece) with the secrets is untouched."""
    redact = Redactor(SECRETS)
    rng = random.Random(7)
    alphabet = "".join(sorted(set("".join(SECRETS)))) + "abc{}[]:,"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
        assert redact(text) == text
    assert redact("GET https://api.example.com/items/1?key=ok (HTTP 200)") == (
        "GET https://api.example.com/items/1?key=ok (HTTP 200)"
    )


def test_log_records_are_redacted_in_message_args_and_extras(capsys: pytest.CaptureFixture[str]) -> None:
    """logs.configure: %-args (repr'd), string and structured extras, and other libraries' warnings."""
    from runner import logs

    for fmt in ("text", "json"):
        logs.configure(fmt, Redactor([HOSTILE]))
        logging.getLogger("syncrun").warning("said %r", HOSTILE[:14], extra={"body": {"k": [HOSTILE]}, "u": HOSTILE})
        logging.getLogger("some.library").warning("oops %s", json.dumps(HOSTILE))
        err = capsys.readouterr().err
        assert err.count(MASK) >= 4, err
        assert_clean(err, [HOSTILE])
    learnt = "oauth-access-token-5e6f7a8b"
    redact = Redactor([HOSTILE])
    logs.configure("text", redact)
    redact.add(learnt)  # after configure: the handler's redactor is the same object
    logging.getLogger("syncrun").info("token %s", learnt)
    assert learnt[:8] not in capsys.readouterr().err


# Echoes in escape styles no list of forms knows, mixed per character (an outside tester's finding).
TESTER = 'p/Q"r/s+t/u~v/w%x/y\\z/A B/C D/E-F/G'
NON_ASCII = "é/ü/ß/ñ/ø/å/ç/ë/ï/ô/ž/ł-token-9f3b"
NAMED = {'"': "&quot;", "&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&#39;"}


def _utf16(char: str, order: str) -> str:
    return char.encode(f"utf-16-{order}").decode("latin-1")  # a UTF-16 body read as Latin-1


STYLES: dict[str, Any] = {
    "raw": lambda c: c,
    "php": lambda c: json.dumps(c)[1:-1].replace("/", "\\/"),  # PHP's json_encode: `\/`, \u for non-ASCII
    "dotnet": lambda c: c if c.isascii() and c.isalnum() else "".join(f"\\u{ord(u):04X}" for u in _units(c)),
    "json-lower": lambda c: "".join(f"\\u{ord(u):04x}" for u in _units(c)),
    "utf16-le": lambda c: _utf16(c, "le"),
    "utf16-be": lambda c: _utf16(c, "be"),
    "utf16-repr": lambda c: repr(_utf16(c, "le"))[1:-1],  # an excerpt repr'd: literal `\x00` text
    "html-decimal": lambda c: f"&#{ord(c)};",
    "html-hex": lambda c: f"&#x{ord(c):X};",
    "html-hex-lower": lambda c: f"&#x{ord(c):x};",
    "html-named": lambda c: NAMED.get(c, c),
    "percent": lambda c: quote(c, safe=""),
    "percent-lower": lambda c: "".join(f"%{b:02x}" for b in c.encode()),
}


def _units(char: str) -> list[str]:
    """UTF-16 code units, as JSON's \\u escapes write a character beyond the BMP (a surrogate pair)."""
    data = char.encode("utf-16-be", "surrogatepass")
    return [chr(int.from_bytes(data[i : i + 2], "big")) for i in range(0, len(data), 2)]


def echo(secret: str, style: str | list[str]) -> str:
    """`secret` escaped character by character, each in its own style (one style: all the same)."""
    chosen = [style] * len(secret) if isinstance(style, str) else style
    return "".join(STYLES[name](char) for char, name in zip(secret, chosen, strict=True))


def assert_unreadable(text: str, secret: str) -> None:
    """No FRAGMENT-character piece of `secret` in `text` nor in any decoding of it."""
    for reading in views(text):
        leaked = [piece for piece in fragments(secret) if piece in reading]
        assert not leaked, f"{leaked[0]!r} of {secret!r} readable in {reading!r} (from {text!r})"


def test_the_testers_echoes_are_masked() -> None:
    """The four echo styles that reached test-read, --dry-run and cassettes, exactly as reported."""
    redact = Redactor([TESTER])
    echoes = [
        'p\\/Q\\"r\\/s+t\\/u~v\\/w%x\\/y\\\\z\\/A B\\/C D\\/E-F\\/G',  # PHP: escaped slashes
        "p\\u002FQ\\u0022r\\u002Fs\\u002Bt\\u002Fu~v\\u002Fw%x\\u002Fy\\u005Cz\\u002FA B\\u002FC D\\u002FE-F\\u002FG",
        "".join(char + "\x00" for char in TESTER),  # UTF-16 LE read as UTF-8
        "".join("\x00" + char for char in TESTER),  # UTF-16 BE
        repr("".join(char + "\x00" for char in TESTER)),  # ... in a repr'd excerpt: literal \x00
        "p&#47;Q&quot;r&#x2F;s+t&#x2f;u~v&#47;w%x&#47;y\\z&#x2F;A B&#47;C D&#47;E-F&#47;G",
    ]
    for text in echoes:
        said = f"HTTP 400 {{'error': 'bad key {text}'}} (GET /x)"
        clean = redact(said)
        assert_unreadable(clean, TESTER)
        assert clean.startswith("HTTP 400 {'error': 'bad key ")
        assert clean.endswith("'} (GET /x)")


@pytest.mark.parametrize("secret", [TESTER, NON_ASCII, HOSTILE, "plain-9f3b2c71e8a4d6ab", "a&amp;b%41c\\u0041d-e𝄞f"])
@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_echo_style_is_masked(secret: str, style: str) -> None:
    """Each style alone: .NET upper-case \\u (punctuation too), PHP `\\/`, UTF-16 both orders (and
    repr'd), HTML numeric (decimal, hex both cases) and named, percent (both cases, UTF-8 bytes)."""
    clean = Redactor([secret])(f"said <{echo(secret, style)}> ok")
    assert_unreadable(clean, secret)
    assert clean.startswith("said <")
    assert clean.endswith("> ok")


@pytest.mark.parametrize("secret", [TESTER, NON_ASCII, HOSTILE])
def test_mixed_per_character_escaping_is_masked(secret: str) -> None:
    """Every character in a style of its own: no list of forms could enumerate these."""
    redact = Redactor([secret])
    rng = random.Random(11)
    for _ in range(200):
        chosen = [rng.choice(sorted(STYLES)) for _ in secret]
        assert_unreadable(redact(f"x {echo(secret, chosen)} y"), secret)


@pytest.mark.parametrize("secret", [TESTER, NON_ASCII, HOSTILE])
def test_escapes_of_escapes_are_masked(secret: str) -> None:
    """A JSON string escaped again (`\\\\/`, `\\\\u002F`), percent-encoded JSON, HTML-escaped JSON, a
    repr of JSON: decoded in rounds."""
    redact = Redactor([secret])
    php = echo(secret, "php")
    dotnet = echo(secret, "dotnet")
    for text in (
        json.dumps(php)[1:-1],
        json.dumps(dotnet)[1:-1],
        json.dumps(json.dumps(php)[1:-1])[1:-1],
        quote(php, safe=""),
        quote(dotnet),
        echo(php, "html-decimal"),
        repr(json.dumps(secret)),
        echo(echo(secret, "html-hex"), "percent-lower"),
    ):
        assert_unreadable(redact(f"x {text} y"), secret)


def test_decoded_views_leave_other_text_alone() -> None:
    """Text with escapes but no secret is unchanged (tests/test_escapes.py: the views themselves)."""
    redact = Redactor([TESTER, NON_ASCII])
    for text in ("50% done & \\o/", "a=1&b=%2F&c=\\u002F &#47; &amp; p\\/Q", "p/Q x\x00y", "\\x00\\x41%00&#0;"):
        assert redact(text) == text


def test_a_mask_never_cuts_an_escape_in_two() -> None:
    """Review revH F1: a secret right before an escape (`\\"`, `\\u0022`, `%22`, `&quot;`) keeps the escape
    whole, and so does a piece of a secret's escaped form that ends or starts inside an escape that is
    not the secret's: the JSON body stays JSON, the URL stays percent-encoded."""
    token, quoted = "s3cretTokenValue42", 'abcdefg"hijk-0123'
    redact = Redactor([token, quoted])
    for after in ('\\"', "\\\\", "\\n", "\\u0022", "\\x22", "%22", "&quot;", "&#34;"):
        assert redact(f"<{token}{after}>") == f"<{MASK}{after}>"
    assert redact(f"<\\u0022{token}>") == f"<\\u0022{MASK}>"
    # pieces of `abcdefg\\"hijk-0123` ending or starting inside another escape
    for value in ("abcdefg\n", "abcdefg\u00e9", "abcdefg\\u0022", 'Xbcdefg"hijk-Y', 'say "cdefg"hijk-0', "\\"):
        text = json.dumps({"k": [value, token + value]})
        clean = redact(text)
        assert MASK in clean, text
        json.loads(clean)
        assert_unreadable(clean, quoted)
    assert redact("k=abcdefg%0A&x=1") == f"k={MASK}%0A&x=1"


def test_a_cut_escape_holding_a_fragment_of_the_secret_is_masked_whole() -> None:
    """Review revJ F9: shrinking a stretch back to whole escapes left a 10-character `\\U0001F600`
    showing `\\U0001F6`, the last 8 characters of a secret that ends in them."""
    secret = "abcdefghij\\U0001F6"
    text = f'"{secret}00"'
    clean = Redactor([secret])(text)
    assert clean == f'"{MASK}"', clean  # a Python-style escape, no JSON: the text is not JSON either
    assert_unreadable(clean, secret)
    secret = "0001F600abcdefghij"  # the same at the start: the secret begins inside an escape
    clean = Redactor([secret])('"\\U0001F600abcdefghij"')
    assert clean == f'"{MASK}"', clean
    assert_unreadable(clean, secret)


@settings(
    max_examples=int(os.environ.get("REDACTION_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    secret=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters='"'), min_size=8),
    data=st.data(),
    around=st.lists(st.text(max_size=6), min_size=2, max_size=2),
)
def test_a_json_body_stays_json_whatever_piece_of_a_secret_it_holds(
    secret: str, data: st.DataObject, around: list[str]
) -> None:
    """Any piece of any secret (but one holding a `"`, which can meet the document's own quotes) inside
    a JSON string next to any text: the redacted body still parses, and holds no piece of the secret."""
    start = data.draw(st.integers(0, len(secret) - 1))
    piece = secret[start : data.draw(st.integers(start + 1, len(secret)))]
    text = json.dumps([around[0] + piece + around[1]], ensure_ascii=data.draw(st.booleans()))
    clean = Redactor([secret])(text)
    json.loads(clean)
    assert_unreadable(clean, secret)


_HOSTILE_CHARS = st.sampled_from(list("\\/\"'%&#;+ ~<>ux0A\x00é✓ž𝄞"))  # escape starters, hex, NUL, non-ASCII
_SECRETS = st.text(
    st.one_of(_HOSTILE_CHARS, st.characters(codec="utf-8", exclude_categories=("Cs",))), min_size=FRAGMENT, max_size=24
)
_AROUND = st.text(st.sampled_from(list("ab /\\%&#;x0\x00\"'uU")), max_size=12)


@settings(
    max_examples=int(os.environ.get("REDACTION_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(secret=_SECRETS, data=st.data(), before=_AROUND, after=_AROUND)
def test_random_secrets_in_random_mixed_escapes_never_stay_readable(
    secret: str, data: st.DataObject, before: str, after: str
) -> None:
    """Any secret, any per-character mix of the styles, any text around: after redacting, no decoding
    of the output reads any FRAGMENT-character piece of the secret."""
    chosen = data.draw(st.lists(st.sampled_from(sorted(STYLES)), min_size=len(secret), max_size=len(secret)))
    clean = Redactor([secret])(before + echo(secret, chosen) + after)
    assert_unreadable(clean, secret)


def _measure() -> None:  # pragma: no cover - `python -m tests.test_redaction`: what redacting costs
    import string
    import timeit

    rng = random.Random(1)
    plain = "".join(rng.choice(string.ascii_letters + ' :/={}"') for _ in range(1_000_000))
    # JSON-ish text with an escape every ~10 characters: every line gets decoded views (and a 2nd round)
    tokens = [*string.ascii_letters, " ", ":", "\\/", '\\"', "\\u00e9", "%2F", "&amp;", "&#47;", "\\\\n"]
    weights = [1] * 54 + [1] * 7
    escaped = "".join(rng.choices(tokens, weights, k=700_000))[:1_000_000]
    typical = [
        "ghp_" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(36)),
        "pw-Zq7!x:y@/k%3F",
    ]
    many = ["".join(rng.choice(string.printable[:94] + " éü✓") for _ in range(48)) for _ in range(10)]
    for name, secrets in (("typical: a 40-char token + a DSN password", typical), ("10 hostile 48-char secrets", many)):
        started = timeit.default_timer()
        redact = Redactor(secrets)
        print(f"{name}: build {(timeit.default_timer() - started) * 1e3:.0f} ms")
        for kind, text in (("plain", plain), ("escaped", escaped)):
            line = timeit.timeit(lambda: redact(text[:300]), number=2000) / 2000  # noqa: B023
            body = timeit.timeit(lambda: redact(text), number=3) / 3  # noqa: B023
            print(f"  {kind} text: 300-char line {line * 1e6:.0f} µs, 1 MB body {body * 1e3:.0f} ms")


if __name__ == "__main__":
    _measure()


def test_every_run_time_token_stays_masked_and_a_renewal_costs_only_its_own_pieces() -> None:
    """An 8-hour run renewing its token every 120 s: every token stays masked to the end (an early one
    can come back late: a next link echoing it, a slow answer), whole, cut to 8 characters, escaped
    and cut before a mark; and no renewal rebuilds anything: the configured secrets' pattern is the
    same object throughout, and the run-time index grows by what each token brings, the same for the
    240th as for the 1st (counted, not timed)."""
    redact = Redactor(["configured-Secret-Xy12Zw34"])
    pattern = redact._pattern
    issued = ["at-" + hashlib.sha256(str(n).encode()).hexdigest()[:48] for n in range(240)]  # no shared piece
    sizes = [len(redact._tokens)]
    for token in issued:
        redact.add(token, run_time=True)
        sizes.append(len(redact._tokens))
    assert redact._pattern is pattern  # never rebuilt for a token
    growth = [after - before for before, after in itertools.pairwise(sizes)]
    assert max(growth) <= 2 * len(issued[0])  # its pieces, their probes and heads: nothing of the others
    for token in (issued[0], issued[1], issued[120], issued[-1]):
        assert redact(f"x {token} y") == "x *** y"
        assert redact(f"x {token[20:28]} y") == "x *** y"
        escaped = "".join(f"\\u{ord(char):04x}" if i % 3 == 0 else char for i, char in enumerate(token))
        assert redact(f'"{escaped}"') == '"***"'  # a decoded view reads the echo back
        assert redact(f"next?access_token={token[:5]}…") == "next?access_token=***…"
    assert redact("configured-Secret-Xy12Zw34") == "***"
    assert redact("plain text, 300 characters of it " * 9) == "plain text, 300 characters of it " * 9


def test_a_short_run_time_value_is_masked_whole() -> None:
    redact = Redactor()
    redact.add("at-Qw3", run_time=True)
    assert redact("token at-Qw3 here") == "token *** here"
    assert redact("at-Q") == "at-Q"


def test_idle_until_a_secret_is_added() -> None:
    """`idle` (the engine then skips redacting rows) only while there is nothing to mask: it turns
    off the moment a secret is added mid-run, and an idle redactor returns every text as it is."""
    redactor = Redactor()
    assert redactor.idle
    assert redactor("any text") == "any text"
    redactor.add("tok-abcdefgh-1234", run_time=True)
    assert not redactor.idle
    assert "abcdefgh" not in redactor("echo tok-abcdefgh-1234")
    assert not Redactor(["s3cr3t-value"]).idle


@given(st.text())
def test_the_html_form_is_what_html_escape_writes(text: str) -> None:
    """`forms` writes a secret's HTML form itself (importing `html` cost every start ~7M instructions):
    the same text as `html.escape`."""
    import html

    assert _html_escaped(text) == html.escape(text)


def test_redacting_a_large_body_echoing_a_secret_takes_a_small_multiple_of_its_size() -> None:
    """A 3 MB JSON body (an escape every ~20 characters, so it has decoded views) echoing a secret
    5,000 times, raw and percent-encoded: the peak memory redaction allocates (tracemalloc counts
    allocations, not time) stays under 4× the body (~2×: the output, and the pieces it is joined
    from). Searched whole, with every piece's span kept as a tuple, it took 20× (a 7.8 MB body
    echoing a secret densely peaked at 1.2 GB of RSS, ~160×)."""
    secret = "s3cr3t-T0ken-abcdefghijkLMNOP"
    redact = Redactor([secret, "other-Secret-0123456789"])
    note = "lorem ipsum dolor sit amet \\/ caf\\u00e9 &amp; " * 24
    row = (
        '{"id": %d, "token": "' + secret + '", "note": "' + note + '", "url": "https://h/x?key=' + quote(secret) + '"}'
    )
    body = "[" + ", ".join(row % i for i in range(2_500)) + "]"
    assert len(body) > 3_000_000
    clean, peak = _traced(redact, body)
    assert peak < 4 * len(body), f"redacting {len(body):,} bytes peaked at {peak:,} ({peak / len(body):.1f}×)"
    assert clean.count(MASK) == 5_000
    assert_clean(clean, [secret])
    json.loads(clean)


_PARTS = st.lists(
    st.one_of(
        _AROUND,
        st.tuples(st.sampled_from(sorted(STYLES)), st.integers(0, 20), st.integers(1, 40)),
    ),
    max_size=60,
)


@settings(
    max_examples=int(os.environ.get("REDACTION_EXAMPLES", "300")) // 3,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(secret=_SECRETS, parts=_PARTS)
def test_a_text_searched_a_window_at_a_time_is_masked_as_if_searched_whole(
    secret: str, parts: list[str | tuple[str, int, int]]
) -> None:
    """Windows of 40 characters (and the margin a match may need) give exactly what one search of
    the whole text gives: a match across a window's edge is found by the window it starts in."""

    text = "".join(part if isinstance(part, str) else echo(secret[part[1] : part[2]], part[0]) for part in parts)
    redact = Redactor([secret, "plain-9f3b2c71e8a4d6ab"])
    whole = redact(text)
    assert _in_small_windows(redact, text) == whole


@pytest.mark.parametrize("secret", [HOSTILE, "plain-9f3b2c71e8a4d6ab", "pw-Zq7!x:y@/k%3F", "passwd"])
def test_base64_encodings_of_a_secret_are_masked(secret: str) -> None:
    """Standard and URL-safe base64, padded or not, alone or 0, 1 or 2 bytes into a longer encoded
    value, raw, percent-encoded or PHP-escaped: no FRAGMENT characters of the encoded secret stay.
    Only the characters that carry the secret's bits alone are masked, so what surrounds it decodes."""
    redact = Redactor([secret])
    data = secret.encode()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        alone = encode(data).decode()
        assert redact(f"x {alone} y") == "x *** y"
        assert redact(f"x {alone.rstrip('=')} y") == "x *** y"
        for before in (b"", b"A", b"AB", b"ABC-prefix", b"ABCD-prefix"):
            for after in (b"", b"Z", b"-suffix"):
                encoded = encode(before + data + after).decode()
                inside = encoded[len(before) * 4 // 3 + 1 : (len(before) + len(data)) * 4 // 3]
                for text in (encoded, quote(encoded, safe=""), encoded.replace("/", "\\/")):
                    clean = redact(f"value={text};")
                    assert clean.endswith(";")
                    if len(secret) >= FRAGMENT:
                        leaked = [piece for piece in fragments(inside) if piece in clean]
                    else:  # a short secret is masked whole: its encoding alone, whole
                        leaked = [alone] if before + after == b"" and alone in clean else []
                    assert not leaked, f"{leaked[0]!r} of {inside!r} in {clean!r}"
                    assert clean.startswith(f"value={text[: max(0, len(before) * 4 // 3 - 1)]}")


def test_encodings_are_what_an_encoder_writes_around_the_secret() -> None:
    """Each alignment's characters appear in every longer encoded value holding the secret there."""
    rng = random.Random(5)
    for secret in ("plain-9f3b2c71e8a4d6ab", HOSTILE, "12345678"):
        found = encodings(secret)
        for shift in range(3):
            for _ in range(20):
                before = rng.randbytes(shift + 3 * rng.randrange(3))
                after = rng.randbytes(rng.randrange(4))
                for encode in (base64.b64encode, base64.urlsafe_b64encode):
                    encoded = encode(before + secret.encode() + after).decode()
                    assert any(form in encoded for form in found if len(form) >= FRAGMENT), (secret, shift)


def test_a_run_time_token_s_base64_encodings_are_not_masked() -> None:
    """Documented limit (docs/reliability.md): run-time tokens' encodings would triple the memory an
    8-hour run's 240 tokens take; no syncrun path base64-encodes a bearer token."""
    token = "tok-9f3b2c71e8a4d6ab0011"
    redact = Redactor()
    redact.add(token, run_time=True)
    encoded = base64.b64encode(token.encode()).decode()
    assert redact(f"x {encoded} y") == f"x {encoded} y"
    assert redact(f"x {token} y") == "x *** y"


# What a decoded view reads as nothing, in one round or more: NULs raw and escaped, escaped again.
DROPPED = ["\x00", "\\u0000", "\\x00", "%00", "&#0;", "&#x0;", "\\0", "\\\\u0000", "%5Cu0000", "%2500", "&amp;#0;"]


@settings(
    max_examples=int(os.environ.get("REDACTION_EXAMPLES", "300")) // 3,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    secret=st.sampled_from([HOSTILE, "plain-9f3b2c71e8a4d6ab", "Zq7Kx9Wm3Pv2"]),
    data=st.data(),
    before=st.integers(0, 120),
)
def test_a_secret_kept_apart_by_long_dropped_runs_is_masked_in_windows_as_whole(
    secret: str, data: st.DataObject, before: int
) -> None:
    """A secret cut in parts of at most 7 characters, each pair kept apart by a run of what a decoded
    view drops (mixed NUL escapes, up to ~2,700 characters: longer than a window and its margin),
    reads whole in a view: searched a window at a time (40 characters here) it is masked exactly as
    a search of the whole text masks it (review revN F2: no window found it, each 8-character piece
    spanning more than a window)."""

    cuts = sorted(data.draw(st.sets(st.integers(1, len(secret) - 1), min_size=len(secret) // 7)))
    parts = [secret[a:b] for a, b in itertools.pairwise([0, *cuts, len(secret)])]
    long_parts = [part for part in parts if len(part) >= FRAGMENT]
    runs = [
        "".join(data.draw(st.lists(st.sampled_from(DROPPED), min_size=1, max_size=4)) * data.draw(st.integers(1, 300)))
        for _ in parts[1:]
    ]
    text = "y" * before + "".join(p + r for p, r in zip(parts, [*runs, ""], strict=True)) + "y" * 50
    redact = Redactor([secret])
    whole = redact(text)
    if not long_parts:  # the whole text's search masks it: every part was read as one secret
        assert_unreadable(whole, secret)
    assert _in_small_windows(redact, text) == whole


@pytest.mark.parametrize("gap", ["\x00" * 2100, "\\u0000" * 400, "%00" * 800, "&#0;" * 600, "%5Cu0000" * 300])
@pytest.mark.parametrize("at", [0, 32768 - 5, 32768 - 2200])
def test_a_secret_cut_by_dropped_runs_longer_than_a_window_is_masked(gap: str, at: int) -> None:
    """Review revN F2 as reported: a 12-character secret cut after 5 by a run of dropped escapes, at a
    window's edge or not, in a text longer than a window, is masked."""
    secret = "Zq7Kx9Wm3Pv2"
    text = "y" * at + secret[:5] + gap + secret[5:] + "y" * 40_000
    clean = Redactor([secret])(text)
    assert MASK in clean
    assert_unreadable(clean, secret)


def test_a_short_text_with_nothing_to_mask_costs_one_call() -> None:
    """A mapped page calls the redactor for every string of every row once a secret is configured:
    a text of one window with nothing in it is checked in C (the pattern, the base64 pieces' probes,
    escapes, cut marks) and returned, with no Python call besides the redactor's own and the run-time
    tokens' emptiness (review revN F3: the window loop, its generators and the base64 scan made such a
    call 2.5-5× dearer)."""
    import sys

    redact = Redactor(['Zq7Kx9Wm3Pv2"\tok', "plain-9f3b2c71e8a4d6ab"])
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            calls.append(frame.f_code.co_name)

    for text in ("item name 12345", "item-12345", "some text here, a bit longer than the others"):
        redact(text)  # the probe getter for this length made once
        calls.clear()
        sys.setprofile(profile)
        try:
            assert redact(text) == text
        finally:
            sys.setprofile(None)
        assert [name for name in calls if name != "profile"] == ["__call__", "_short", "__bool__", "_probed"], calls


def test_a_long_text_is_scanned_for_base64_pieces_only_where_a_probe_is() -> None:
    """The base64 pieces' scan (runner/fragments.py, a Python loop: ~100 ms per MB) runs only on a
    window where one of their probes is, looked up in C first (review revN F5: a 4.4 MB body with no
    secret took 2.5× as long to redact as before base64 encodings were masked)."""
    import sys

    secret = "plain-9f3b2c71e8a4d6ab"
    redact = Redactor([secret])
    encoded = base64.b64encode(secret.encode()).decode()
    scanned: list[int] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_name == "spans" and frame.f_locals.get("self") is redact._encoded:
            scanned.append(len(frame.f_locals["text"]))

    plain = json.dumps([{"id": i, "name": f"item number {i}"} for i in range(5_000)])
    for text, windows in ((plain, 0), (plain[:80_000] + encoded + plain[80_000:], 1)):
        sys.setprofile(profile)
        try:
            clean = redact(text)
        finally:
            sys.setprofile(None)
        assert len(scanned) == windows, scanned
        assert encoded not in clean
        scanned.clear()


def test_a_very_long_dropped_run_costs_a_small_multiple_of_its_size() -> None:
    """A 2.4 MB run of `\\u0000` keeping a secret's parts apart: masked, and the peak memory the
    redaction allocates stays under 4× the text (the run is read a bounded part at a time: one
    regular expression over all of it kept a mark per token, 57× the text)."""
    secret = "Zq7Kx9Wm3Pv2"
    text = "y" * 100 + secret[:5] + "\\u0000" * 400_000 + secret[5:] + "y" * 100
    redact = Redactor([secret])
    clean, peak = _traced(redact, text)
    assert peak < 4 * len(text), f"{peak / len(text):.1f}×"
    assert clean == "y" * 100 + MASK + "y" * 100


def _traced(redact: Redactor, text: str) -> tuple[str, int]:
    """`redact(text)` and the peak of the memory Python allocated meanwhile (tracemalloc: counted, not
    timed, so the bound holds on a busy machine)."""
    tracemalloc.start()
    try:
        clean = redact(text)
        return clean, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _in_small_windows(redact: Redactor, text: str) -> str:
    """`redact(text)` searched in windows of 40 characters (no extra margin, dropped runs kept to 12):
    every window edge a short text has is crossed."""
    import runner.redaction as redaction

    chunk, least, stretch = redaction._CHUNK, redaction._MARGIN, redaction._STRETCH
    try:
        redaction._CHUNK, redaction._MARGIN, redaction._STRETCH = 40, 0, 12
        return redact(text)
    finally:
        redaction._CHUNK, redaction._MARGIN, redaction._STRETCH = chunk, least, stretch
