"""`python -m bench.aiohttp_shim ARGS`: `syncrun ARGS` with httpx-aiohttp's transport.

syncrun has no switch for its transport yet (runner.client.build takes `aiohttp=`, the engine does
not pass it); this shim flips the default so scenario T can show what the switch would buy.
"""

from __future__ import annotations

import functools

from runner import cli, client

client.build = functools.partial(client.build, aiohttp=True)  # type: ignore[assignment]

if __name__ == "__main__":
    raise SystemExit(cli.main())
