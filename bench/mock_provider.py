"""The bare ceiling's provider: one aiohttp route that reads the body and answers a small JSON at once.

python -m bench.mock_provider --port 8123
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

import uvloop
from aiohttp import web

_ids = itertools.count(1)


async def start_call(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(
        body=b'{"call_id":"CA%d","status":"queued"}' % next(_ids), content_type="application/json"
    )


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/calls", start_call)
    app.router.add_get("/healthz", ok)
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
