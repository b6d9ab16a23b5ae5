"""Simulated devices for the demo and tests: a scanner fed from the local API or kiosk, and a printer that keeps
each job's bytes in a folder with a PNG preview of the paper.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drivers.base import DeviceState, ScannerReader, ScanSink, StatusSink
from drivers.escpos_decode import decode, render_preview
from drivers.escpos_printer import PrinterConnection, PrinterStatus
from drivers.urls import DeviceUrl


class SimulatedScanner(ScannerReader):
    """`sim://NAME`: scans are handed in with `inject`, as if a scanner had read them."""

    def __init__(self, device_id: str, on_scan: ScanSink, on_status: StatusSink):
        super().__init__(device_id, on_scan, on_status)
        self._inbox: queue.SimpleQueue[tuple[str, str | None] | None] = queue.SimpleQueue()

    @classmethod
    def from_url(
        cls, url: DeviceUrl, device_id: str, on_scan: ScanSink, on_status: StatusSink, **options
    ) -> SimulatedScanner:
        return cls(device_id, on_scan, on_status)

    def inject(self, text: str, symbology: str | None = None) -> None:
        self._inbox.put((text, symbology))

    def _interrupt(self) -> None:
        self._inbox.put(None)

    def run_once(self, stop: threading.Event) -> bool | None:
        self.set_status(DeviceState.CONNECTED)
        while not stop.is_set():
            item = self._inbox.get()
            if item is None:
                continue
            self.emit(*item)
        return None


class SimulatedPrinter(PrinterConnection):
    """`sim://NAME`: a printer that keeps each job's bytes in a folder, and draws a PNG preview of the paper when
    one is asked for.

    The preview is drawn from the bytes themselves (decoded as a printer would read them), so it shows what a real
    printer would have printed. It is drawn on request, not while printing: drawing takes ~130 ms of CPU, which a
    real printer's thread never spends. `paper_out` lets the demo and tests take the paper away.
    """

    def __init__(
        self,
        url: DeviceUrl,
        folder: Path,
        codec: str = "gb18030",
        escpos_profile: str = "default",
        width_dots: int = 576,
        **options: Any,
    ):
        super().__init__(url, **options)
        self.folder = Path(folder)
        self.codec = codec  # the Chinese encoding of the printer this one stands in for
        self.escpos_profile = escpos_profile  # code page numbers differ by model
        self.width_dots = width_dots
        self.paper_out = False
        self._buffer: bytearray | None = None

    @classmethod
    def from_url(cls, url: DeviceUrl, **options: Any) -> SimulatedPrinter:
        return cls(url, **options)

    def open(self) -> None:
        # Receipts show members' names, points and totals: the agent's user's alone, whatever the umask.
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(self.folder.stat().st_mode) & 0o077:
            self.folder.chmod(0o700)
        self._buffer = bytearray()

    def status(self, timeout: float | None = None) -> PrinterStatus:
        return PrinterStatus(online=True, paper="out" if self.paper_out else "ok")

    def write(self, data: bytes) -> None:
        assert self._buffer is not None, "write before open"
        self._buffer += data

    def close(self) -> None:
        data, self._buffer = self._buffer, None
        if not data or self._abort:
            return
        fd = os.open(self.job_path(bytes(data)).with_suffix(".bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)

    def job_path(self, data: bytes) -> Path:
        """Where the job with these bytes is kept (without suffix): time-ordered, named by the bytes' hash."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        return self.folder / f"{stamp}-{job_digest(data)}"

    def preview_of(self, data: bytes) -> Path | None:
        """The PNG preview of a job printed with these bytes (drawn now if it was not yet), or None if no job
        with these bytes was printed."""
        printed = sorted(self.folder.glob(f"*-{job_digest(data)}.bin"))
        if not printed:
            return None
        path = printed[-1].with_suffix(".png")
        if not path.exists():
            elements = decode(data, codec=self.codec, escpos_profile=self.escpos_profile)
            render_preview(elements, path, width_dots=self.width_dots)
            path.chmod(0o600)  # inside the private folder, so never readable by others even before this
        return path


def job_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
