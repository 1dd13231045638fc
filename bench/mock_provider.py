"""The bare ceiling's provider: one aiohttp route that reads the body and answers a small JSON at once.

It answers in the simulator's native dialect, so the dispatch scenario can point a real worker at it
too and compare with the ceiling against the same provider process.

python -m bench.mock_provider --port 8123
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time

import uvloop
from aiohttp import web

_ids = itertools.count(1)
_received: list[float] = []  # wall time of each start request, for the dispatch scenario's checks


async def start_call(request: web.Request) -> web.Response:
    await request.read()
    _received.append(time.time())
    return web.Response(
        body=b'{"call_id":"CA%d","status":"queued"}' % next(_ids), content_type="application/json"
    )


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def log(request: web.Request) -> web.Response:
    return web.json_response({"received": _received})


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/calls", start_call)
    app.router.add_get("/healthz", ok)
    app.router.add_get("/v1/log", log)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
