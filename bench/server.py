"""The benchmark API: a fast aiohttp.web server on 127.0.0.1, run in its own OS process.

    python -m bench.server [--port 0]      # prints "PORT <n>" on stdout once it listens

Routes (latency is part of the path, so one server serves every scenario):
    GET /l{ms}/apps/{appid}        one app record, ~1 KB of JSON, after `ms` milliseconds
    GET /l{ms}/bulk/{page}         {"data": [1,000 records]} with ids page*1000 .. page*1000+999
    POST /_reset                   forget the arrivals
    POST /_prepare/bulk/{pages}    render bulk pages 1..pages now, so that serving one costs no JSON work
    GET /_stats                    {"arrivals": [monotonic seconds...], "keys": [appid or page...]}

Every API request is timestamped on arrival (time.monotonic, which is system-wide on Linux), before
any latency, so the sliding-window checks measure what an upstream API would count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from aiohttp import web

BULK_SIZE = 1000
_FILLER = "lorem ipsum dolor sit amet " * 24  # pads a record to ~1 KB, like a real detail response
TYPES = ("game", "dlc", "demo", "music")


def app_record(appid: int) -> dict[str, object]:
    return {
        "name": f"  App {appid}  ",
        "type": TYPES[appid % 4].upper(),
        "is_free": appid % 7 == 0,
        "price": {"cents": (appid * 37) % 6000, "currency": "USD"},
        "release_date": f"20{10 + appid % 15}-0{1 + appid % 9}-1{appid % 10}",
        "tags": ["Action", "Indie", "Co-op"][: 1 + appid % 3],
        "description": _FILLER,
    }


def bulk_record(item_id: int) -> dict[str, object]:
    return {"id": item_id, "name": f"item {item_id}", "price": {"cents": item_id % 10000}, "score": item_id % 97}


class State:
    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.keys: list[int] = []


def bulk_body(page: int) -> bytes:
    first = page * BULK_SIZE
    return json.dumps({"data": [bulk_record(i) for i in range(first, first + BULK_SIZE)]}).encode()


def make_app() -> web.Application:
    state = State()
    # Rendering a page is ~5 ms of this process's CPU, which on a 2-core machine competes with the
    # client being measured (50 pages: ~0.25 s, as long as the raw COPY + upsert scenario 5 compares
    # against). A real API renders on its own machine; the bench prepares the pages before the run.
    bulk_pages: dict[int, bytes] = {}

    def arrive(key: int) -> None:
        state.arrivals.append(time.monotonic())
        state.keys.append(key)

    async def apps(request: web.Request) -> web.Response:
        appid = int(request.match_info["appid"])
        arrive(appid)
        if latency := int(request.match_info["ms"]):
            await asyncio.sleep(latency / 1000)
        body = json.dumps({"success": True, "data": app_record(appid)})
        return web.Response(text=body, content_type="application/json")

    async def bulk(request: web.Request) -> web.Response:
        page = int(request.match_info["page"])
        arrive(page)
        if latency := int(request.match_info["ms"]):
            await asyncio.sleep(latency / 1000)
        body = bulk_pages.get(page) or bulk_body(page)
        return web.Response(body=body, content_type="application/json")

    async def prepare_bulk(request: web.Request) -> web.Response:
        for page in range(1, int(request.match_info["pages"]) + 1):
            bulk_pages.setdefault(page, bulk_body(page))
        return web.json_response({"ok": True})

    async def reset(request: web.Request) -> web.Response:
        state.arrivals, state.keys = [], []
        return web.json_response({"ok": True})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"arrivals": state.arrivals, "keys": state.keys})

    app = web.Application()
    app.router.add_get(r"/l{ms:\d+}/apps/{appid:\d+}", apps)
    app.router.add_get(r"/l{ms:\d+}/bulk/{page:\d+}", bulk)
    app.router.add_post("/_reset", reset)
    app.router.add_post(r"/_prepare/bulk/{pages:\d+}", prepare_bulk)
    app.router.add_get("/_stats", stats)
    return app


async def serve(port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None, handle_signals=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"PORT {bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
