"""`syncrun new`: a starter source file from a URL and a sample response (runner/scaffold.py, starters.py)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from runner.errors import UsageError


def handle(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from runner import samples, scaffold, starters

    out = args.out or Path("sources") / f"{args.name}.yaml"
    given = starters.parse_headers(args.header)
    url, keys = starters.credentials(args.url)  # the URL's credentials become ${secret.*}
    redact = starters.redactor(given, keys)  # no piece of a value given here reaches the file or an output
    try:
        sample, headers = (
            (samples.read_sample(args.sample), {}) if args.sample else samples.fetch_reply(args.url, args.id, given)
        )
        starter = starters.starter(args.name, given, args.auth, keys)
        reply_headers = {name: redact(value) for name, value in headers.items()}
        text = scaffold.source_text(args.name, url, redact.value(sample), out, reply_headers, starter)
    except UsageError as error:
        raise UsageError(redact(str(error))) from None
    scaffold.write(out, redact(text), force=args.force)
    print(f"wrote {out}: edit it, then {scaffold.next_steps(out, not samples.placeholders(url), args.name)}")
    if starter.secrets:
        print(f"it reads the secrets {', '.join(dict.fromkeys(starter.secrets))}: set them before running")
    return 0
