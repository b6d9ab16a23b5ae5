"""Telling systemd how the agent is: the sd_notify(3) protocol, written as its man page suggests.

A `Type=notify` unit gives the process `$NOTIFY_SOCKET`, an `AF_UNIX` datagram socket (a path, or an abstract
name written with a leading `@`). Each message is one datagram of `KEY=value` lines: `READY=1` once the till can
sell, `STATUS=` for `systemctl status`, `WATCHDOG=1` at least every `$WATCHDOG_USEC` or systemd restarts the
service, `STOPPING=1` when shutting down. Outside systemd there is no socket and every call does nothing, so the
same agent runs by hand, in the demo and in tests. No libsystemd: the protocol is one `sendto`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

log = logging.getLogger(__name__)


class Notifier:
    """One process's channel to systemd. Sends are best effort: a lost status line must never stop a sale."""

    def __init__(self, environ: Mapping[str, str] = os.environ):
        self.address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send `KEY=value` lines as one datagram; False when there is no socket or the send failed."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as exc:
            # systemd gone (the unit is being torn down) or its queue full: say so and go on selling.
            log.warning("systemd notification not sent", extra={"error": f"{type(exc).__name__}: {exc}"})
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={_one_line(status)}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={_one_line(status)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={_one_line(status)}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval_s(environ: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """How often to ping: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises, or None when the watchdog
    is off or meant for another process (`$WATCHDOG_PID` names the process it watches)."""
    watched = environ.get("WATCHDOG_PID")
    if watched and watched != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


async def keep_alive(
    notifier: Notifier, interval_s: float, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> None:
    """Ping the watchdog from this event loop for as long as it runs. A loop that is blocked (a stuck call, a
    busy database on the loop) cannot run this task, so it stops pinging and systemd restarts the agent."""
    while True:
        notifier.watchdog()
        await sleep(interval_s)


class StatusSink(Protocol):
    """Where a changed status line goes: systemd (`Notifier`), or the screens' event stream."""

    def status(self, status: str) -> bool: ...


async def report_status(
    notifier: StatusSink,
    read_status: Callable[[], Awaitable[str]],
    every_s: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Keep `systemctl status` current: send the status line whenever it changes, checking every `every_s`."""
    shown = None
    while True:
        try:
            line = await read_status()
        except Exception as exc:  # the status is for people: a failed read is shown, never fatal
            line = f"status unknown: {type(exc).__name__}"
        if line != shown and notifier.status(line):
            shown = line
        await sleep(every_s)


def status_line(online: bool, outbox_pending: int, printer: str | None, sale_open: bool) -> str:
    """What a person reading `systemctl status pos-edge` needs first: can the till reach central, is anything
    waiting to be sent, can it print."""
    parts = [
        "online" if online else "OFFLINE (selling offline)",
        f"outbox {outbox_pending} waiting" if outbox_pending else "outbox empty",
        "no printer" if printer is None else f"printer {printer}",
    ]
    if sale_open:
        parts.append("sale open")
    return " · ".join(parts)


def _socket_address(value: str) -> str | bytes | None:
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()  # an abstract name: a leading NUL byte instead of '@'
    return None  # unset, or a kind this agent does not speak (vsock:, for a VM's manager)


def _one_line(text: str) -> str:
    return " ".join(text.split())
