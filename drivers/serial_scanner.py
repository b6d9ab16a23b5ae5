"""A serial barcode scanner (RS-232, or USB in CDC-ACM / virtual COM mode): one scan per line.

    serial:///dev/serial/by-id/usb-Honeywell_Imaging_1900-if00?baudrate=9600&bytesize=8&parity=N&stopbits=1

Name the port by its udev by-id path: it stays the same when the scanner is replugged into another socket and
comes back as /dev/ttyACM1. Unplugging closes the port; the reader reopens the path when it exists again.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from typing import Any, NamedTuple

import serial

from drivers.backoff import Backoff
from drivers.base import (
    DeviceError,
    DeviceState,
    DeviceUnavailable,
    ScannerReader,
    ScanSink,
    StatusSink,
    UnsupportedDeviceUrl,
)
from drivers.urls import DeviceUrl, parse_device_url

log = logging.getLogger(__name__)

DEFAULT_MAX_LINE = 512
# Only a safety net: stop() wakes a blocked read at once through pyserial's cancel_read.
DEFAULT_READ_TIMEOUT = 1.0

# C0, DEL and C1 controls: NULs and stray prefixes some scanners send are no part of a code.
_CONTROLS = dict.fromkeys([*range(0x20), 0x7F, *range(0x80, 0xA0)])
_TERMINATOR = re.compile(rb"[\r\n]")


class SerialSettings(NamedTuple):
    """The URL's query: how the port is framed, and the longest line accepted."""

    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    max_line: int = DEFAULT_MAX_LINE

    @classmethod
    def from_query(cls, url: DeviceUrl) -> SerialSettings:
        query = dict(url.query)
        unknown = set(query) - set(cls._fields)
        if unknown:
            raise UnsupportedDeviceUrl(
                f"{url.text}: unknown option {', '.join(sorted(unknown))}; serial scanners take {', '.join(cls._fields)}"
            )
        values: dict[str, Any] = {}
        for key, allowed, convert, example in (
            ("baudrate", None, int, "9600"),
            ("bytesize", (5, 6, 7, 8), int, "8"),
            ("parity", tuple(serial.PARITY_NAMES), str.upper, "N"),
            ("stopbits", (1, 1.5, 2), float, "1"),
            ("max_line", None, int, "512"),
        ):
            if key not in query:
                continue
            try:
                value = convert(query[key])
            except ValueError:
                value = None
            # Options without a list of choices are positive whole numbers.
            ok = value is not None and (value in allowed if allowed else isinstance(value, int) and value > 0)
            if not ok:
                choices = ", ".join(str(a) for a in allowed) if allowed else "a positive whole number"
                raise UnsupportedDeviceUrl(
                    f"{url.text}: {key}={query[key]!r} is not valid; use {choices}, e.g. {key}={example}"
                )
            values[key] = value
        if values.get("stopbits") in (1.0, 2.0):
            values["stopbits"] = int(values["stopbits"])
        return cls(**values)


class LineFramer:
    """Cuts a byte stream into scans at CR, LF or CRLF.

    A line without its terminator yet is kept for the next bytes (pyserial hands back partial lines when a read
    times out). Empty lines are skipped, which also makes CRLF one terminator. A line over `max_line` bytes is
    dropped with one warning and the framer resyncs at the next terminator, so the scans after it survive.
    """

    def __init__(self, max_line: int = DEFAULT_MAX_LINE, device_id: str = ""):
        self.max_line = max_line
        self.device_id = device_id
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[str]:
        *complete, rest = _TERMINATOR.split(data)
        lines = []
        for piece in complete:
            self._add(piece)
            if not self._discarding and (text := _text(self._buffer)):
                lines.append(text)
            self._buffer.clear()
            self._discarding = False
        self._add(rest)
        return lines

    def _add(self, piece: bytes) -> None:
        if self._discarding:
            return
        self._buffer += piece
        if len(self._buffer) > self.max_line:
            # Never the content: an overlong line may still hold an auth code.
            log.warning(
                "scanner line longer than %d bytes dropped; resyncing at the next line end",
                self.max_line,
                extra={"device": self.device_id},
            )
            self._buffer.clear()
            self._discarding = True


def _text(raw: bytes | bytearray) -> str:
    text = bytes(raw).decode("utf-8", errors="replace").translate(_CONTROLS)
    return text if text.strip() else ""


class SerialScanner(ScannerReader):
    def __init__(
        self,
        device_id: str,
        on_scan: ScanSink,
        on_status: StatusSink,
        path: str,
        settings: SerialSettings = SerialSettings(),
        *,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        backoff: Backoff | None = None,
    ):
        super().__init__(device_id, on_scan, on_status, backoff)
        self.path = path
        self.settings = settings
        self._read_timeout = read_timeout
        # Guards _port between the reader thread (open/close) and stop() (cancel_read): cancelling a port
        # being closed would write to a closed, perhaps reused, file descriptor.
        self._port_lock = threading.Lock()
        self._port: serial.Serial | None = None

    @classmethod
    def from_url(
        cls, url: DeviceUrl | str, device_id: str, on_scan: ScanSink, on_status: StatusSink, **options: Any
    ) -> SerialScanner:
        if isinstance(url, str):
            url = parse_device_url(url)
        return cls(device_id, on_scan, on_status, url.path, SerialSettings.from_query(url), **options)

    def run_once(self, stop: threading.Event) -> bool | None:
        port = self._open()
        with self._port_lock:
            self._port = port
        try:
            if stop.is_set():
                return None
            s = self.settings
            self.set_status(
                DeviceState.CONNECTED, f"{self.path} at {s.baudrate} baud {s.bytesize}{s.parity}{s.stopbits}"
            )
            framer = LineFramer(s.max_line, self.device_id)
            while not stop.is_set():
                for line in framer.feed(self._read(port)):
                    self.emit(line)
        finally:
            with self._port_lock:
                self._port = None
            port.close()
        return None

    def _interrupt(self) -> None:
        with self._port_lock:
            if self._port is not None and self._port.is_open:
                self._port.cancel_read()

    def _open(self) -> serial.Serial:
        if not os.path.exists(self.path):
            raise DeviceUnavailable(f"serial port {self.path} not found")
        s = self.settings
        try:
            # exclusive: a second program reading the same port would steal half the scans.
            return serial.Serial(
                self.path,
                baudrate=s.baudrate,
                bytesize=s.bytesize,
                parity=s.parity,
                stopbits=s.stopbits,
                timeout=self._read_timeout,
                exclusive=True,
            )
        except (serial.SerialException, OSError) as exc:
            raise self._open_error(exc) from exc

    def _open_error(self, exc: Exception) -> DeviceError:
        code = getattr(exc, "errno", None)
        if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            return DeviceUnavailable(f"serial port {self.path} not found")
        if code in (errno.EACCES, errno.EPERM):
            return DeviceError(
                f"permission denied on serial port {self.path}: the agent's user needs the 'dialout' group "
                "(SupplementaryGroups=dialout in its systemd unit) or a udev rule giving it the port; then restart the agent"
            )
        if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
            return DeviceError(
                f"serial port {self.path} is in use by another program; stop it (e.g. ModemManager, a terminal)"
            )
        return DeviceUnavailable(f"serial port {self.path} cannot be opened: {exc}")

    def _read(self, port: serial.Serial) -> bytes:
        try:
            # Block for the first byte (up to the timeout), then take whatever else has arrived.
            return port.read(port.in_waiting or 1)
        except (serial.SerialException, OSError) as exc:
            # pyserial reports an unplugged port as EIO, or as "readiness to read but returned no data".
            raise DeviceUnavailable(f"serial port {self.path} disconnected ({exc})") from exc
