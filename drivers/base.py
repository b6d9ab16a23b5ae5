"""What every device driver shares: the scan it emits, the status it reports, the errors it raises, and the
reader thread that keeps a scanner open across unplugs.

Drivers wrap their library's errors (SerialException, OSError, USBError, ...) at their own edge into the
tree below, so the agent handles "printer unavailable" once for every transport.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Self

from drivers.backoff import Backoff

if TYPE_CHECKING:
    from drivers.urls import DeviceUrl

log = logging.getLogger(__name__)


class DeviceError(Exception):
    """A device cannot do what was asked; the message says which device and what to check."""


class DeviceUnavailable(DeviceError):
    """Not there: unplugged, powered off, refused the connection, or the path does not exist."""


class DeviceTimeout(DeviceError):
    """There, but did not answer or accept data in time."""


class PaperOut(DeviceError):
    """The printer reports no paper (or its cover open)."""


class UnsupportedDeviceUrl(DeviceError, ValueError):
    """The URL's scheme or form is not one this agent knows."""


@dataclass(frozen=True, slots=True)
class Scan:
    """One code read by one device. `text` is what the device delivered, before classification."""

    device_id: str
    text: str
    symbology: str | None
    at: datetime

    def __repr__(self) -> str:
        # Scans carry auth codes: never let a stray log line print one whole.
        shown = self.text if len(self.text) <= 8 else f"{self.text[:4]}…{self.text[-2:]}"
        return (
            f"Scan(device_id={self.device_id!r}, text={shown!r} ({len(self.text)} chars), symbology={self.symbology!r})"
        )


class DeviceState(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    device_id: str
    state: DeviceState
    reason: str | None
    since: datetime


ScanSink = Callable[[Scan], None]
StatusSink = Callable[[DeviceStatus], None]


def utcnow() -> datetime:
    return datetime.now(UTC)


class ScannerReader(ABC):
    """A scanner read on its own thread.

    `run_once` opens the device, reads until it fails or `stop` is set, and closes it; the thread calls it again
    after a back-off (drivers/backoff.py: 0.5 s doubling to 10 s unless given), so an unplugged scanner comes
    back by itself. Scans and status changes go to the sinks,
    which are called on the reader's thread: the agent makes them hand over to its event loop.
    """

    def __init__(self, device_id: str, on_scan: ScanSink, on_status: StatusSink, backoff: Backoff | None = None):
        self.device_id = device_id
        self._on_scan = on_scan
        self._on_status = on_status
        self._backoff = backoff or Backoff()
        self._failures = 0  # runs in a row that ended without a scan: how long the next reopening waits
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = DeviceStatus(device_id, DeviceState.DISCONNECTED, "not started", utcnow())

    @classmethod
    @abstractmethod
    def from_url(cls, url: DeviceUrl, device_id: str, on_scan: ScanSink, on_status: StatusSink, **options: Any) -> Self:
        """The reader for a device URL (its scheme picked this class); options come from settings."""

    @property
    def status(self) -> DeviceStatus:
        return self._status

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"scanner-{self.device_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._interrupt()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _interrupt(self) -> None:  # noqa: B027 -- a hook with nothing to do by default, not an abstract method
        """Wake a blocked read so `stop` does not wait for the next scan. Override where a read can block."""

    def worked(self) -> None:
        """The device delivers: a later failure retries quickly again."""
        self._failures = 0

    def emit(self, text: str, symbology: str | None = None) -> None:
        self.worked()
        self._on_scan(Scan(self.device_id, text, symbology, utcnow()))

    def set_status(self, state: DeviceState, reason: str | None = None) -> None:
        if (state, reason) == (self._status.state, self._status.reason):
            return
        self._status = DeviceStatus(self.device_id, state, reason, utcnow())
        # Log changes of state only: a scanner left unplugged must not fill the journal.
        level = logging.INFO if state is DeviceState.CONNECTED else logging.WARNING
        log.log(level, "scanner %s", state.value, extra={"device": self.device_id, "reason": reason or ""})
        self._on_status(self._status)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.run_once(self._stop) is True:
                    self.set_status(DeviceState.DISCONNECTED, "source ended")
                    return
            except DeviceError as exc:
                self.set_status(
                    DeviceState.ERROR if not isinstance(exc, DeviceUnavailable) else DeviceState.DISCONNECTED, str(exc)
                )
            except Exception as exc:  # a driver bug must not kill the thread: report it and reopen
                log.exception("scanner reader failed", extra={"device": self.device_id})
                self.set_status(DeviceState.ERROR, f"{type(exc).__name__}: {exc}")
            self._failures += 1
            if self._stop.wait(self._backoff.delay(self._failures)):
                break
        self.set_status(DeviceState.DISCONNECTED, "stopped")

    @abstractmethod
    def run_once(self, stop: threading.Event) -> bool | None:
        """Open, read until failure or `stop`, close. Raise DeviceError subclasses for device problems.

        Return True when the source has ended for good (a video file played to its end): no reopening."""
