"""The simulator's callback client against servers that frame their answers every legal way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from dialer.simhttp import CallbackClient, ProtocolError

Answer = Callable[[bytes], Awaitable[bytes | None]]  # request head+body → raw answer, None = hang up


class RawServer:
    """Answers each request on a connection with what `answer` returns, byte for byte."""

    def __init__(self, answer: Answer, hang_up_after: bool = False) -> None:
        self.answer = answer
        self.hang_up_after = hang_up_after  # close the connection after each answer
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/cb?attempt=a1&token=x%2By"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                raw = await self.answer(request)
                if raw is None:
                    break
                writer.write(raw)
                await writer.drain()
                if self.hang_up_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def drop_idle(self) -> None:
        """Close every connection from the server side, as a keep-alive timeout does."""
        for w in self.writers:
            w.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        self.drop_idle()
        await self.server.wait_closed()


@pytest.fixture
async def client() -> AsyncIterator[CallbackClient]:
    c = CallbackClient(limit=4, timeout_seconds=2.0)
    yield c
    await c.close()


async def serve(answer: Answer, hang_up_after: bool = False) -> tuple[RawServer, str]:
    server = RawServer(answer, hang_up_after)
    return server, await server.start()


def fixed(raw: bytes) -> Answer:
    async def answer(_: bytes) -> bytes:
        return raw

    return answer


@pytest.mark.parametrize(
    "raw",
    [
        b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"ok":true}',
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{"ok\r\n7\r\n":true}\r\n0\r\n\r\n',
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n",
    ],
    ids=["content-length", "chunked", "204-no-body", "lowercase-header"],
)
async def test_kept_alive_answers_reuse_one_connection(client: CallbackClient, raw: bytes) -> None:
    """Every keep-alive framing is read to its end, so three POSTs share one connection."""
    server, url = await serve(fixed(raw))
    try:
        statuses = [await client.post(url, b'{"n":%d}' % i, {"X-Sig": "v1=ab"}) for i in range(3)]
    finally:
        await server.stop()
    assert statuses == [int(raw[9:12])] * 3
    assert server.connections == 1
    head = server.requests[0]
    assert head.startswith(b"POST /cb?attempt=a1&token=x%2By HTTP/1.1\r\n")  # the target as given
    assert b"\r\nHost: 127.0.0.1:" in head and b"\r\nX-Sig: v1=ab\r\n" in head
    assert head.endswith(b'\r\n\r\n{"n":0}')


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_connections_the_server_closes_are_not_reused(client: CallbackClient, raw: bytes) -> None:
    server, url = await serve(fixed(raw))
    try:
        assert [await client.post(url, b"{}", {}) for _ in range(2)] == [200, 200]
    finally:
        await server.stop()
    assert server.connections == 2


async def test_body_framed_by_the_connection_end(client: CallbackClient) -> None:
    server, url = await serve(fixed(b"HTTP/1.1 500 Oops\r\n\r\nsomething broke"), hang_up_after=True)
    try:
        assert await client.post(url, b"{}", {}) == 500
    finally:
        await server.stop()


async def test_a_connection_closed_while_idle_is_replaced_without_failing(client: CallbackClient) -> None:
    """A server's keep-alive timeout closes idle connections; the next POST goes on a new one."""
    server, url = await serve(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    try:
        assert await client.post(url, b"{}", {}) == 200
        server.drop_idle()
        await asyncio.sleep(0)  # let the close reach the client's transport (no time is waited for)
        assert await client.post(url, b"{}", {}) == 200
    finally:
        await server.stop()
    assert server.connections == 2
    assert len(server.requests) == 2  # the request went once, not twice


async def test_hang_up_mid_answer_and_garbage_are_connection_errors(client: CallbackClient) -> None:
    for raw in (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", b"SMTP ready\r\n\r\n"):
        server, url = await serve(fixed(raw), hang_up_after=True)
        try:
            with pytest.raises(ProtocolError):
                await client.post(url, b"{}", {})
        finally:
            await server.stop()
    with pytest.raises(ProtocolError):
        await client.post("ftp://127.0.0.1/cb", b"{}", {})


async def test_a_server_that_never_answers_times_out() -> None:
    stall = asyncio.Event()

    async def never(_: bytes) -> bytes | None:
        await stall.wait()
        return None

    c = CallbackClient(limit=1, timeout_seconds=0.05)  # a real deadline: the stall is the server's
    server, url = await serve(never)
    try:
        with pytest.raises(TimeoutError):
            await c.post(url, b"{}", {})
    finally:
        stall.set()
        await c.close()
        await server.stop()


async def test_against_aiohttp_the_worker_server() -> None:
    """The server the workers actually run: responses with and without bodies, many in flight."""
    seen: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(await request.read())
        if request.query.get("empty"):
            return web.Response(status=204)
        return web.json_response({"result": "applied"})

    app = web.Application()
    app.router.add_post("/callbacks/simulator", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}/callbacks/simulator"
    c = CallbackClient(limit=8, timeout_seconds=5.0)
    try:
        statuses = await asyncio.gather(
            *(
                c.post(f"{base}?attempt={i}" + ("&empty=1" if i % 2 else ""), b"%d" % i, {})
                for i in range(200)
            )
        )
    finally:
        await c.close()
        await runner.cleanup()
    assert statuses == [204 if i % 2 else 200 for i in range(200)]
    assert sorted(seen, key=int) == [b"%d" % i for i in range(200)]
