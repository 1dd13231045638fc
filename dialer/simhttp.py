"""The provider simulator's callback client: plain HTTP/1.1 POSTs over kept-alive connections.

The simulator stands in for a provider that runs on other machines; in the tests, the demo and the
benchmark it shares the dialer's cores, so whatever it burns per call is taken from the system under
test. aiohttp's client spends about 140 µs of CPU per POST here, this about 40 µs (measured with
uvloop against an aiohttp server on loopback), which is a tenth of the full loop's CPU per attempt.

It speaks only what a callback needs: `http://` URLs, a bytes body, a response framed by its status
(204, 304), Content-Length, chunked encoding or the connection's end. `https://` URLs go through aiohttp.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from urllib.parse import urlsplit

import aiohttp

_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ProtocolError(ConnectionError):
    """The URL or the server's answer is not HTTP/1.x as framed above."""


class _Unanswered(ConnectionError):
    """The connection closed before the first byte of an answer: the request was not read."""


class CallbackClient:
    """POST with a connection pool per host, at most `limit` requests in flight, a total timeout each.

    Raises OSError (ConnectionError, ProtocolError), TimeoutError or aiohttp.ClientError (https only).
    """

    def __init__(self, limit: int, timeout_seconds: float) -> None:
        self._limit = asyncio.Semaphore(limit)
        self._timeout = timeout_seconds
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._targets: dict[str, tuple[str, int, str, bytes]] = {}
        self._tls: aiohttp.ClientSession | None = None
        self._closed = False

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """The response's status code; the body is read and discarded."""
        if self._closed:
            raise ConnectionError("callback client closed")
        if url.startswith("https://"):
            return await self._post_tls(url, body, headers)
        host, port, target, host_header = self._target(url)
        head = b"".join(
            (
                b"POST ",
                target.encode("ascii"),
                b" HTTP/1.1\r\nHost: ",
                host_header,
                b"\r\nContent-Length: ",
                str(len(body)).encode(),
                b"\r\n",
                *(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items()),
                b"\r\n",
            )
        )
        async with self._limit, asyncio.timeout(self._timeout):
            pool = self._idle.setdefault((host, port), [])
            while pool:
                conn = pool.pop()
                if conn[0].at_eof() or conn[1].is_closing():
                    conn[1].close()
                    continue
                try:
                    return await self._exchange(conn, head, body, pool)
                except _Unanswered:
                    # A kept-alive connection the server closed while idle fails before any byte of
                    # an answer; such a request was never read, so it goes again on another one.
                    continue
            return await self._exchange(await asyncio.open_connection(host, port), head, body, pool)

    def _target(self, url: str) -> tuple[str, int, str, bytes]:
        found = self._targets.get(url)
        if found is not None:
            return found
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ProtocolError(f"callback URL must be http:// or https://, got {parts.scheme!r}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        found = (parts.hostname, parts.port or 80, target, parts.netloc.encode("idna"))
        # Callback URLs are per attempt: only a bounded number is remembered, for retries.
        if len(self._targets) >= 10_000:
            self._targets.clear()
        self._targets[url] = found
        return found

    async def _exchange(self, conn: _Conn, head: bytes, body: bytes, pool: list[_Conn]) -> int:
        """One request on `conn`: back to the pool after a complete kept-alive answer, else closed."""
        try:
            status, keep_alive = await self._request(conn, head, body)
        except BaseException as exc:
            conn[1].close()
            if isinstance(exc, asyncio.IncompleteReadError | asyncio.LimitOverrunError | ValueError):
                raise ProtocolError(f"{type(exc).__name__} while reading the answer") from None
            raise
        if keep_alive and not self._closed:
            pool.append(conn)
        else:
            conn[1].close()
        return status

    @staticmethod
    async def _request(conn: _Conn, head: bytes, body: bytes) -> tuple[int, bool]:
        reader, writer = conn
        writer.write(head + body)
        try:
            status_line = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _Unanswered("connection closed before the answer") from None
            raise
        version, _, rest = status_line.partition(b" ")
        if not version.startswith(b"HTTP/1."):
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:40]!r}")
        status = int(rest[:3])
        length: int | None = None
        chunked = False
        keep_alive = version == b"HTTP/1.1"
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.endswith(b"chunked")
            elif name == b"connection":
                keep_alive = value == b"keep-alive" or (keep_alive and value != b"close")
        if status in (204, 304) or status < 200:
            pass  # no body by definition (RFC 9112 §6.3), whatever the headers say
        elif chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                await reader.readexactly(size + 2)  # the chunk and its CRLF; size 0 ends the body
                if size == 0:
                    break
        elif length is not None:
            await reader.readexactly(length)
        else:
            await reader.read()  # framed by the connection's end
            keep_alive = False
        return status, keep_alive

    async def _post_tls(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        if self._tls is None:
            self._tls = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        async with self._limit, self._tls.post(url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status

    async def close(self) -> None:
        self._closed = True
        for pool in self._idle.values():
            for _, writer in pool:
                writer.close()
        self._idle.clear()
        if self._tls is not None:
            await self._tls.close()
            self._tls = None

    @property
    def closed(self) -> bool:
        return self._closed
