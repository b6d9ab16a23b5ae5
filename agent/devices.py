"""The station's devices, opened from settings at start and closed in reverse at stop: scanners (each on its
own thread, feeding the scan router on the event loop) and the receipt printer behind its durable queue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from agent.print_queue import PrintQueue
from agent.scans import ScanRouter
from agent.settings import PrinterSettings, Settings
from drivers.base import ScannerReader
from drivers.document import COLUMNS_BY_PAPER_MM, Document
from drivers.escpos_printer import PrinterConnection, PrinterProfile, print_job, render
from drivers.urls import parse_device_url, printer_class, scanner_class

log = logging.getLogger(__name__)

DOTS_BY_PAPER_MM = {58: 384, 80: 576}


def printer_profile(printer: PrinterSettings) -> PrinterProfile:
    return PrinterProfile(
        escpos_profile=printer.profile,
        text_encoding=printer.text_encoding,
        native_qr=printer.native_qr,
        dots_per_line=DOTS_BY_PAPER_MM[printer.paper_width_mm],
        cut=printer.cut,
    )


def preview_folder(settings: Settings) -> Path:
    """Where a simulated printer keeps its jobs and previews: next to the database."""
    return settings.storage.database.parent / "receipts"


def open_printer_connection(printer: PrinterSettings, sim_folder: Path) -> PrinterConnection:
    url = parse_device_url(printer.url)
    options = {}
    if url.scheme == "sim":
        options = {
            "folder": sim_folder,
            "codec": "gb18030" if printer.text_encoding == "raster" else printer.text_encoding,
            "escpos_profile": printer.profile,
            "width_dots": DOTS_BY_PAPER_MM[printer.paper_width_mm],
        }
    return printer_class(url).from_url(url, **options)


def open_scanner(url_text: str, device_id: str, router: ScanRouter, **options) -> ScannerReader:
    url = parse_device_url(url_text)
    # Each reader keeps (and logs) its own status; the API reads it from the reader.
    return scanner_class(url).from_url(url, device_id, router.submit_threadsafe, lambda status: None, **options)


@dataclass
class StationDevices:
    settings: Settings
    engine: sa.Engine
    router: ScanRouter
    scanners: dict[str, ScannerReader] = field(default_factory=dict)
    printer: PrintQueue | None = None
    printer_connection: PrinterConnection | None = None

    @property
    def columns(self) -> int:
        printer = self.settings.devices.printer
        return COLUMNS_BY_PAPER_MM[printer.paper_width_mm if printer else 80]

    def render(self, document: Document) -> bytes:
        if self.settings.devices.printer is None:
            raise RuntimeError("no printer configured")
        return render(document, printer_profile(self.settings.devices.printer))

    def start(self) -> None:
        devices = self.settings.devices
        for scanner in devices.scanners:
            self.scanners[scanner.id] = open_scanner(scanner.url, scanner.id, self.router)
        if devices.camera is not None:
            camera = devices.camera
            self.scanners[camera.id] = open_scanner(
                camera.url, camera.id, self.router, decoder=camera.decoder, formats=camera.formats, roi=camera.roi
            )
        for reader in self.scanners.values():
            reader.start()
        if devices.printer is not None:
            self.printer_connection = open_printer_connection(devices.printer, preview_folder(self.settings))
            connection = self.printer_connection
            self.printer = PrintQueue(self.engine, devices.printer.id, lambda job_id, data: print_job(connection, data))
            self.printer.start()
        log.info(
            "devices started",
            extra={
                "scanners": ",".join(self.scanners) or "none",
                "printer": devices.printer.id if devices.printer else "none",
            },
        )

    def stop(self, print_deadline: float = 10.0) -> None:
        # Scanners first (no new work), then the receipt being printed may finish within the deadline.
        for reader in self.scanners.values():
            reader.stop()
        if self.printer is not None:
            self.printer.stop(print_deadline)
