"""A network receipt printer on 127.0.0.1 for tests: real TCP, one connection at a time, like the real thing.

Each connection is one job: its bytes are captured (minus the DLE EOT status queries it starts with, which are
answered, or not). The printer can be told to report paper out, to stay silent, to die after N bytes of a job, to
stop reading (a jammed printer) or to refuse connections (switched off).

Use the `printer_server` fixture (register this module with `pytest_plugins = ["tests.printer_server"]`, or import
the fixture into a test module), or `with PrinterServer(...) as server:` for a server with small socket buffers.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Self

import pytest

DLE_EOT = b"\x10\x04"
# DLE EOT answers: fixed bits 0x12; printer status bit 3 = offline; paper status bits 2-3 near end, 5-6 paper end.
ONLINE, OFFLINE = 0x12, 0x1A
PAPER = {"ok": 0x12, "low": 0x1E, "out": 0x72}


@dataclass
class Connection:
    queries: list[int] = field(default_factory=list)  # n of each DLE EOT n asked
    data: bytearray = field(default_factory=bytearray)  # the job's bytes
    complete: bool = False  # the client finished the job (closed its side); False: dropped or abandoned


class PrinterServer:
    def __init__(self, *, receive_buffer: int | None = None):
        self.receive_buffer = receive_buffer
        self.online = True
        self.paper: Literal["ok", "low", "out"] = "ok"
        self.silent = False
        self.stalled = False  # accept, then never read: a jammed printer with a full buffer
        self.drop_after: int | None = None  # the next job dies after this many bytes
        self.connections: list[Connection] = []
        self._changed = threading.Condition()
        self._listener: socket.socket | None = None
        self._current: socket.socket | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def jobs(self) -> list[bytes]:
        """The complete jobs received, in order."""
        with self._changed:
            return [bytes(c.data) for c in self.connections if c.complete and c.data]

    def start(self) -> PrinterServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.receive_buffer:
            # Set before listen() so accepted sockets inherit it (and a small TCP window).
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        listener.bind(("127.0.0.1", self.port))  # 0 the first time; the same port when switched on again
        listener.listen(4)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name="test-printer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.refuse()
        current = self._current
        if current is not None:
            try:
                current.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)

    def refuse(self) -> None:
        """Switch the printer off: the port stops accepting connections."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes accept() in the server thread
            except OSError:
                pass
            listener.close()

    def switch_on(self) -> None:
        """Power the printer back on at the same address after `refuse`."""
        if self._thread is not None:
            self._thread.join(5)
        self.start()

    def wait_for_connections(self, count: int, timeout: float = 5.0) -> list[Connection]:
        """Wait until `count` connections have ended (completed, dropped or closed by the client)."""
        with self._changed:
            ok = self._changed.wait_for(
                lambda: sum(1 for c in self.connections if c is not self._open) >= count, timeout
            )
        assert ok, f"the test printer saw {len(self.connections)} connection(s), not {count} finished ones"
        return list(self.connections)

    def wait_for_jobs(self, count: int, timeout: float = 5.0) -> list[bytes]:
        with self._changed:
            ok = self._changed.wait_for(lambda: len(self.jobs) >= count, timeout)
        assert ok, f"the test printer received {len(self.jobs)} complete job(s), not {count}"
        return self.jobs

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the printer --

    _open: Connection | None = None

    def _serve(self) -> None:
        while not self._stopping.is_set():
            listener = self._listener
            if listener is None:
                return
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            record = Connection()
            with self._changed:
                self.connections.append(record)
                self._open = record
            self._current = sock
            try:
                self._handle(sock, record)
            finally:
                self._current = None
                with self._changed:
                    self._open = None
                    self._changed.notify_all()

    def _handle(self, sock: socket.socket, record: Connection) -> None:
        drop_after, self.drop_after = self.drop_after, None
        if self.stalled:
            self._stopping.wait()  # never read; hold the connection open until the test ends
            sock.close()
            return
        prefix = True  # status queries come before the job's first byte
        pending = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    record.complete = True
                    break
                if prefix:
                    pending += chunk
                    while len(pending) >= 3 and pending.startswith(DLE_EOT):
                        self._answer(sock, record, pending[2])
                        pending = pending[3:]
                    if pending and not DLE_EOT.startswith(pending[:2]):
                        prefix = False
                        chunk, pending = pending, b""
                    else:
                        continue
                record.data += chunk
                if drop_after is not None and len(record.data) >= drop_after:
                    del record.data[drop_after:]
                    # Die: a reset, as a printer that loses power mid-job looks to the client once it comes back.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
        except OSError:
            pass
        finally:
            sock.close()

    def _answer(self, sock: socket.socket, record: Connection, n: int) -> None:
        record.queries.append(n)
        if self.silent:
            return
        if n == 1:
            sock.sendall(bytes([ONLINE if self.online else OFFLINE]))
        elif n == 4:
            sock.sendall(bytes([PAPER[self.paper]]))


@pytest.fixture
def printer_server() -> Iterator[PrinterServer]:
    server = PrinterServer().start()
    yield server
    server.stop()
