"""A fault-injecting HTTP/1.1 proxy for the chaos run: it sits between the agent and central and, per request, picks
a fault at random (seeded) or forwards the request untouched.

It reads each request whole before deciding (headers, then the body by Content-Length or chunked framing) and
each answer whole before relaying it, so it knows exactly what the other side has seen:

| fault | what the agent sees | what central did |
|---|---|---|
| `reset_before` | its request sent, then a connection reset | nothing: the request was never forwarded |
| `reset_after_forward` | its request sent, then a reset: no answer byte | handled the request (the reset comes at once, or once central's answer is in) |
| `reset_after_answer` | the whole answer, then the connection is reset | handled it |
| `delay` | a slow answer, or none in time | got the request 0.5–3.5 s late (even if the agent gave up meanwhile) |
| `blackhole` | nothing: no answer, until it gives up | nothing; for a few seconds every request goes the same way |

A connection the agent opens gets its own connection to central; when central closes its side (a keep-alive
connection timing out, central stopping) the proxy closes the agent's side too, so a stopped central looks
to the agent as it would without the proxy. `refuse(True)` stops listening altogether (connections refused),
which is what the run does while central is stopped.

The proxy runs on its own asyncio loop in a thread (`ProxyThread`); its control methods are thread-safe.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

FAULTS = ("reset_before", "reset_after_forward", "reset_after_answer", "delay", "blackhole")
# Requests that move money: they get their own fault rates, since they are few among the background traffic.
MONEY_PATH = re.compile(r"^/v1/payments(/|$|\?)")
# Ids in paths, folded so that faults can be counted per route.
_ID_IN_PATH = re.compile(r"/(?=[0-9A-Za-z_-]*[0-9])[0-9A-Za-z_-]{12,}")
HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Request:
    head: bytes
    body: bytes
    method: str
    path: str
    close: bool  # the client asked to close after this exchange

    @property
    def route(self) -> str:
        return f"{self.method} {_ID_IN_PATH.sub('/{id}', self.path.split('?', 1)[0])}"

    @property
    def moves_money(self) -> bool:
        return self.method == "POST" and MONEY_PATH.match(self.path) is not None


class ProtocolError(Exception):
    """Bytes that are not HTTP/1.1 as this proxy understands it."""


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line!r}")
        name = name.strip().lower()
        fields[name] = f"{fields[name]}, {value.strip()}" if name in fields else value.strip()
    return lines[0], fields


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The header block (through the blank line), or None when the peer closed before sending a byte."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolError("the peer closed in the middle of a header block") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError("header block too large") from None


async def _read_body(reader: asyncio.StreamReader, fields: Mapping[str, str], until_close: bool) -> bytes:
    """The body's bytes with their framing, exactly as they came (chunked stays chunked)."""
    if "chunked" in fields.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            parts.append(size_line)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:  # trailers, up to the blank line
                    trailer = await reader.readuntil(b"\r\n")
                    parts.append(trailer)
                    if trailer == b"\r\n":
                        return b"".join(parts)
            parts.append(await reader.readexactly(size + 2))
    if "content-length" in fields:
        return await reader.readexactly(int(fields["content-length"]))
    return await reader.read() if until_close else b""


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    head = await _read_head(reader)
    if head is None:
        return None
    start, fields = _headers(head)
    parts = start.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ProtocolError(f"bad request line {start!r}")
    body = await _read_body(reader, fields, until_close=False)
    close = fields.get("connection", "").lower() == "close" or parts[2] == "HTTP/1.0"
    return Request(head, body, parts[0].upper(), parts[1], close)


async def read_response(reader: asyncio.StreamReader, method: str) -> tuple[bytes, bool]:
    """A whole answer (interim 1xx answers included) and whether the connection ends with it."""
    out = []
    while True:
        head = await _read_head(reader)
        if head is None:
            raise ConnectionResetError("upstream closed before answering")
        start, fields = _headers(head)
        parts = start.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {start!r}")
        status = int(parts[1])
        out.append(head)
        if 100 <= status < 200:
            continue
        bodyless = method == "HEAD" or status in (204, 304)
        framed = "content-length" in fields or "chunked" in fields.get("transfer-encoding", "").lower()
        if not bodyless:
            out.append(await _read_body(reader, fields, until_close=not framed))
        close = fields.get("connection", "").lower() == "close" or (not framed and not bodyless)
        return b"".join(out), close


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed box or a dropped NAT entry does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


async def _flushed(writer: asyncio.StreamWriter, within: float = 5.0) -> None:
    """Wait until the transport has handed every byte to the kernel."""
    await writer.drain()
    deadline = time.monotonic() + within
    while writer.transport.get_write_buffer_size() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


class FaultProxy:
    """The proxy's logic on one asyncio loop. Use `ProxyThread` to run it beside synchronous code."""

    def __init__(
        self,
        upstream_port: int,
        *,
        seed: int = 0,
        upstream_host: str = "127.0.0.1",
        host: str = "127.0.0.1",
        port: int = 0,
        delay_s: tuple[float, float] = (0.5, 3.5),
        blackhole_s: tuple[float, float] = (2.0, 5.0),
        hold_limit_s: float = 60.0,
    ):
        self.upstream = (upstream_host, upstream_port)
        self.host, self.port = host, port
        self.delay_s, self.blackhole_s, self.hold_limit_s = delay_s, blackhole_s, hold_limit_s
        self._rng = random.Random(f"fault-proxy {seed}")
        self._lock = threading.Lock()
        self._rates: dict[str, float] = {}
        self._money_rates: dict[str, float] = {}
        self._counts: Counter[str] = Counter()
        self._routes: Counter[tuple[str, str]] = Counter()
        self._blackhole_until = 0.0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()

    # --- control (any thread) ---------------------------------------------------------------------------------

    def set_rates(self, rates: Mapping[str, float], money: Mapping[str, float] | None = None) -> None:
        """Probability of each fault per request; `money`: for POST /v1/payments... (default: the same)."""
        for table in (rates, money or {}):
            unknown = set(table) - set(FAULTS)
            if unknown:
                raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {', '.join(FAULTS)}")
            if sum(table.values()) > 1 or min(table.values(), default=0) < 0:
                raise ValueError("fault rates are probabilities that add up to at most 1")
        with self._lock:
            self._rates = dict(rates)
            self._money_rates = dict(money if money is not None else rates)

    def off(self) -> None:
        """No more faults (a blackhole in progress ends now)."""
        with self._lock:
            self._rates, self._money_rates, self._blackhole_until = {}, {}, 0.0

    def counts(self) -> dict[str, int]:
        """Faults injected so far by kind, plus `requests` (all requests read) and `upstream_refused`."""
        with self._lock:
            return dict(self._counts)

    def route_counts(self) -> dict[tuple[str, str], int]:
        """Faults injected so far by (kind, route), e.g. ("reset_after_forward", "POST /v1/payments")."""
        with self._lock:
            return dict(self._routes)

    # --- serving (the loop) -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self, refusing: bool) -> None:
        """Stop listening (new connections are refused), or listen again on the same port."""
        if refusing and self._server is not None:
            self._server.close()
            self._server = None
        elif not refusing and self._server is None:
            await self.start()

    async def stop(self) -> None:
        await self.refuse(True)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    def _count(self, what: str, request: Request | None = None) -> None:
        with self._lock:
            self._counts[what] += 1
            if request is not None and what in FAULTS:
                self._routes[(what, request.route)] += 1

    def _coin(self) -> bool:
        with self._lock:
            return self._rng.random() < 0.5

    def _choose(self, request: Request) -> str | None:
        with self._lock:
            if time.monotonic() < self._blackhole_until:
                return "blackhole"
            rates = self._money_rates if request.moves_money else self._rates
            draw, total = self._rng.random(), 0.0
            for fault in FAULTS:
                total += rates.get(fault, 0.0)
                if draw < total:
                    if fault == "blackhole":
                        self._blackhole_until = time.monotonic() + self._rng.uniform(*self.blackhole_s)
                    return fault
            return None

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            await self._connection(client_reader, client_writer)
        except asyncio.CancelledError:
            _reset(client_writer)
        finally:
            self._connections.discard(task)

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        client_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._count("upstream_refused")
            _reset(client_writer)
            return
        graceful = False
        try:
            while True:
                request = await self._next_request(client_reader, upstream_reader)
                if request is None:
                    graceful = True
                    return
                self._count("requests")
                fault = self._choose(request)
                if fault is not None:
                    self._count(fault, request)
                if fault == "blackhole":
                    await self._hold(client_reader)
                    return
                if fault == "reset_before":
                    return
                if fault == "delay":
                    await asyncio.sleep(self._rng.uniform(*self.delay_s))
                upstream_writer.write(request.head + request.body)
                await upstream_writer.drain()
                if fault == "reset_after_forward" and self._coin():
                    # The client hears of it at once, while central is still working on the request: its next
                    # question may reach central before this request is done.
                    _reset(client_writer)
                    await asyncio.wait_for(read_response(upstream_reader, request.method), self.hold_limit_s)
                    return
                response, upstream_closes = await read_response(upstream_reader, request.method)
                if fault == "reset_after_forward":
                    return
                client_writer.write(response)
                await _flushed(client_writer)
                if fault == "reset_after_answer":
                    await asyncio.sleep(0.05)  # the answer is the agent's before the connection dies
                    return
                if request.close or upstream_closes:
                    graceful = True
                    return
        except (OSError, asyncio.IncompleteReadError, ProtocolError, ValueError, TimeoutError):
            return
        finally:
            upstream_writer.transport.abort()
            if graceful:
                client_writer.close()
            else:
                _reset(client_writer)

    async def _next_request(
        self, client_reader: asyncio.StreamReader, upstream_reader: asyncio.StreamReader
    ) -> Request | None:
        """The client's next request; None when either side closes the idle connection."""
        reading = asyncio.ensure_future(read_request(client_reader))
        upstream_gone = asyncio.ensure_future(upstream_reader.read(1))
        try:
            await asyncio.wait({reading, upstream_gone}, return_when=asyncio.FIRST_COMPLETED)
            if upstream_gone.done() and not reading.done():
                return None  # central closed its side (or sent bytes nobody asked for): close ours
            return reading.result()
        finally:
            for task in (reading, upstream_gone):
                if not task.done():
                    task.cancel()
            await asyncio.gather(reading, upstream_gone, return_exceptions=True)

    async def _hold(self, client_reader: asyncio.StreamReader) -> None:
        """Never answer: wait for the client to give up (or the hold limit), reading and dropping what it sends."""
        try:
            await asyncio.wait_for(self._drain_until_eof(client_reader), self.hold_limit_s)
        except TimeoutError:
            pass

    @staticmethod
    async def _drain_until_eof(reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass


class ProxyThread:
    """A FaultProxy on its own loop in a daemon thread, controlled from any thread."""

    def __init__(self, upstream_port: int, **options):
        self.proxy = FaultProxy(upstream_port, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def url(self) -> str:
        return f"http://{self.proxy.host}:{self.proxy.port}"

    def start(self) -> ProxyThread:
        self._thread.start()
        self._call(self.proxy.start())
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self.proxy.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def refuse(self, refusing: bool) -> None:
        self._call(self.proxy.refuse(refusing))

    def set_rates(self, rates: Mapping[str, float], money: Mapping[str, float] | None = None) -> None:
        self.proxy.set_rates(rates, money)

    def off(self) -> None:
        self.proxy.off()

    def counts(self) -> dict[str, int]:
        return self.proxy.counts()

    def route_counts(self) -> dict[tuple[str, str], int]:
        return self.proxy.route_counts()

    def _call(self, coroutine, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)
