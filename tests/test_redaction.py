"""redaction: every form of a secret, every 8-character piece of one, a secret cut at a mark, `add`."""

from __future__ import annotations

import json
import logging
import random
import re
from urllib.parse import quote, quote_plus

import httpx
import pytest
import yaml

from runner.redaction import FRAGMENT, MASK, Redactor, forms

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


def _measure() -> None:  # pragma: no cover - `python -m tests.test_redaction`: what redacting costs
    import string
    import timeit

    rng = random.Random(1)
    text = "".join(rng.choice(string.ascii_letters + ' :/={}"') for _ in range(1_000_000))
    typical = [
        "ghp_" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(36)),
        "pw-Zq7!x:y@/k%3F",
    ]
    many = ["".join(rng.choice(string.printable[:94] + " éü✓") for _ in range(48)) for _ in range(10)]
    for name, secrets in (("typical: a 40-char token + a DSN password", typical), ("10 hostile 48-char secrets", many)):
        started = timeit.default_timer()
        redact = Redactor(secrets)
        built = timeit.default_timer() - started
        line = timeit.timeit(lambda: redact(text[:300]), number=2000) / 2000  # noqa: B023
        body = timeit.timeit(lambda: redact(text), number=3) / 3  # noqa: B023
        print(f"{name}: build {built * 1e3:.0f} ms, 300-char line {line * 1e6:.0f} µs, 1 MB body {body * 1e3:.0f} ms")


if __name__ == "__main__":
    _measure()
