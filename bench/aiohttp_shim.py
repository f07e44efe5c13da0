"""`python -m bench.aiohttp_shim ARGS`: `syncrun ARGS` with httpx-aiohttp's transport (bench row T only).

syncrun deliberately has no switch for its transport: `runner.client.build` keeps httpx's own
transport because aiohttp re-parses the URL with yarl, which decodes `%2E%2E` and resolves dot
segments, so an entity value `..` could climb out of the templated path (see `client.build`'s
docstring and tests/test_fetch.py::test_entity_values_cannot_change_url_structure). This shim flips
`client.build(aiohttp=True)` so row T can still show, as information, what the other transport costs
or buys; it is not a supported configuration.
"""

from __future__ import annotations

import functools

from runner import cli, client

client.build = functools.partial(client.build, aiohttp=True)  # type: ignore[assignment]

if __name__ == "__main__":
    raise SystemExit(cli.main())
