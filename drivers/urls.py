"""Every device is named by one URL, the same in settings and on the command line (docs/devices.md).

    serial:///dev/serial/by-id/usb-...?baudrate=9600    hid://0c2e:0b61            camera:0
    camera:///path/clip.mp4                              tcp://192.168.1.50:9100    usb://04b8:0202
    file:///dev/usb/lp0                                  sim://name (simulated devices for the demo and tests)

The scheme picks the driver from one explicit table; the rest of the URL is that driver's business. Driver
modules are imported only when used, so a till without a camera never loads OpenCV.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from drivers.base import ScannerReader, UnsupportedDeviceUrl

if TYPE_CHECKING:
    from drivers.escpos_printer import PrinterConnection


@dataclass(frozen=True)
class DeviceUrl:
    text: str
    scheme: str
    host: str  # "VID:PID" for usb/hid, HOST for tcp, NAME for sim, "" otherwise
    port: int | None
    path: str  # a file system path (serial, file, camera file) or ""
    query: dict[str, str] = field(default_factory=dict)

    @property
    def vid_pid(self) -> tuple[int, int]:
        """`usb://04b8:0202` and `hid://0c2e:0b61` name a device by USB vendor and product id (hex)."""
        try:
            vid, pid = self.host.split(":")
            return int(vid, 16), int(pid, 16)
        except ValueError:
            raise UnsupportedDeviceUrl(
                f"{self.text}: expected {self.scheme}://VID:PID in hex, e.g. {self.scheme}://04b8:0202"
            ) from None


def parse_device_url(text: str) -> DeviceUrl:
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query))
    if scheme in ("usb", "hid"):
        # urlsplit reads "04b8:0202" as host:port; keep it whole.
        return DeviceUrl(text, scheme, parts.netloc.lower(), None, "", query)
    if scheme == "tcp":
        if not parts.hostname:
            raise UnsupportedDeviceUrl(f"{text}: expected tcp://HOST:PORT, e.g. tcp://192.168.1.50:9100")
        return DeviceUrl(text, scheme, parts.hostname, parts.port or 9100, "", query)
    if scheme == "camera":
        # camera:0 (an index) or camera:///dev/video0, camera:///path/clip.mp4, camera:///path/frames_%04d.png;
        # an image-sequence pattern is OpenCV's printf form, not percent-encoding.
        path = parts.path if re.search(r"%(0\d+)?d", parts.path) else unquote(parts.path)
        return DeviceUrl(text, scheme, "", None, path, query)
    if scheme in ("serial", "file"):
        if not parts.path:
            raise UnsupportedDeviceUrl(f"{text}: expected {scheme}:///absolute/path")
        return DeviceUrl(text, scheme, "", None, unquote(parts.path), query)
    if scheme == "sim":
        return DeviceUrl(text, scheme, parts.netloc or parts.path, None, "", query)
    raise UnsupportedDeviceUrl(
        f"{text}: unknown device URL scheme {scheme or '(none)'!r}; see `pos-edge devices` for the URLs of what is attached"
    )


# scheme -> "module:Class" implementing `from_url(url, device_id, on_scan, on_status, **options)`.
SCANNERS = {
    "serial": "drivers.serial_scanner:SerialScanner",
    "hid": "drivers.hid_scanner:HidScanner",
    "camera": "drivers.camera:CameraScanner",
    "sim": "drivers.simulated:SimulatedScanner",
}
# scheme -> "module:Class" implementing `from_url(url, **options)`, a PrinterConnection.
PRINTERS = {
    "tcp": "drivers.escpos_printer:NetworkConnection",
    "usb": "drivers.escpos_printer:UsbConnection",
    "serial": "drivers.escpos_printer:SerialConnection",
    "file": "drivers.escpos_printer:FileConnection",
    "sim": "drivers.simulated:SimulatedPrinter",
}


def driver_class(table: dict[str, str], url: DeviceUrl) -> type:
    """The class the table names for this URL's scheme."""
    target = table.get(url.scheme)
    if target is None:
        raise UnsupportedDeviceUrl(
            f"{url.text}: a {url.scheme}:// device cannot be used here; use one of {', '.join(table)}"
        )
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def scanner_class(url: DeviceUrl) -> type[ScannerReader]:
    """The scanner reader for this URL's scheme (SCANNERS)."""
    found = driver_class(SCANNERS, url)
    if not issubclass(found, ScannerReader):
        raise TypeError(f"{found.__qualname__} is not a ScannerReader")  # a wrong table entry, not a wrong URL
    return found


def printer_class(url: DeviceUrl) -> type[PrinterConnection]:
    """The printer connection for this URL's scheme (PRINTERS)."""
    from drivers.escpos_printer import PrinterConnection  # imported when a printer is used: it loads Pillow

    found = driver_class(PRINTERS, url)
    if not issubclass(found, PrinterConnection):
        raise TypeError(f"{found.__qualname__} is not a PrinterConnection")  # a wrong table entry, not a wrong URL
    return found
