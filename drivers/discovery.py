"""What is attached to this host, each with the URL to put in settings.

Read from /dev and /sys directly (the roots are parameters so tests build a tree of their own): serial ports
with their stable by-id names, input devices that look like barcode scanners, video devices, and USB
printers (interface class 7) with their line-printer device files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

USB_PRINTER_CLASS = "07"
# Keyboard-wedge scanners announce themselves as keyboards; these words in the name single them out.
SCANNER_WORDS = (
    "scanner",
    "barcode",
    "bar code",
    "honeywell",
    "symbol",
    "zebra",
    "datalogic",
    "newland",
    "netum",
    "scan",
)


@dataclass(frozen=True)
class FoundDevice:
    kind: str  # serial, hid, camera, printer
    url: str
    description: str
    path: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _by_id(dev: Path, folder: str) -> dict[str, str]:
    """real device path -> its stable /dev/<folder>/by-id/... symlink."""
    links = {}
    directory = dev / folder / "by-id"
    if directory.is_dir():
        for link in sorted(directory.iterdir()):
            links[str(link.resolve())] = str(link)
    return links


def _usb_product(device_link: Path) -> str:
    """The USB product name above a tty's or input's sysfs device (a few levels up, depending on the driver)."""
    here = device_link.resolve()
    for _ in range(4):
        if product := _read(here / "product"):
            return " ".join(filter(None, (_read(here / "manufacturer"), product)))
        here = here.parent
    return ""


def serial_ports(dev: Path = Path("/dev"), sys: Path = Path("/sys")) -> list[FoundDevice]:
    by_id = _by_id(dev, "serial")
    tty_class = sys / "class" / "tty"
    found = []
    for name in sorted(p.name for p in tty_class.iterdir()) if tty_class.is_dir() else []:
        device = str((dev / name).resolve())
        # USB, CDC-ACM and the Pi's UART exist only with hardware; the dozens of ttyS/ttyN stubs are left out
        # unless udev gave them a by-id name.
        if not (name.startswith(("ttyUSB", "ttyACM", "ttyAMA")) or device in by_id):
            continue
        stable = by_id.get(device, str(dev / name))
        found.append(
            FoundDevice(
                "serial", f"serial://{stable}?baudrate=9600", _usb_product(tty_class / name / "device") or name, device
            )
        )
    return found


def usb_printers(dev: Path = Path("/dev"), sys: Path = Path("/sys")) -> list[FoundDevice]:
    found: list[FoundDevice] = []
    devices = sys / "bus" / "usb" / "devices"
    if not devices.is_dir():
        return found
    for interface in sorted(devices.iterdir()):
        if _read(interface / "bInterfaceClass") != USB_PRINTER_CLASS:
            continue
        parent = interface.resolve().parent
        vid, pid = _read(parent / "idVendor"), _read(parent / "idProduct")
        name = " ".join(filter(None, (_read(parent / "manufacturer"), _read(parent / "product")))) or "USB printer"
        found.append(FoundDevice("printer", f"usb://{vid}:{pid}", name, str(parent)))
        usbmisc = interface / "usbmisc"
        if usbmisc.is_dir():
            for lp in sorted(usbmisc.iterdir()):
                found.append(
                    FoundDevice(
                        "printer",
                        f"file://{dev / 'usb' / lp.name}",
                        f"{name} (line-printer device)",
                        str(dev / "usb" / lp.name),
                    )
                )
    return found


def video_devices(dev: Path = Path("/dev"), sys: Path = Path("/sys")) -> list[FoundDevice]:
    by_id = _by_id(dev, "v4l")
    found = []
    v4l = sys / "class" / "video4linux"
    for node in sorted(v4l.iterdir()) if v4l.is_dir() else []:
        # A UVC camera exposes a metadata node next to each capture node: index 0 is the one that captures.
        if _read(node / "index") not in ("", "0"):
            continue
        device = str((dev / node.name).resolve())
        stable = by_id.get(device)
        url = f"camera://{stable}" if stable else f"camera:{node.name.removeprefix('video')}"
        found.append(FoundDevice("camera", url, _read(node / "name") or node.name, device))
    return found


def input_scanners(dev: Path = Path("/dev"), sys: Path = Path("/sys")) -> list[FoundDevice]:
    """Keyboard-like input devices whose name says scanner (other keyboards are left out on purpose)."""
    found = []
    inputs = sys / "class" / "input"
    for node in sorted(inputs.iterdir()) if inputs.is_dir() else []:
        if not node.name.startswith("event"):
            continue
        device_dir = node / "device"
        name = _read(device_dir / "name")
        if not any(word in name.lower() for word in SCANNER_WORDS):
            continue
        vid, pid = _read(device_dir / "id" / "vendor"), _read(device_dir / "id" / "product")
        found.append(FoundDevice("hid", f"hid://{vid}:{pid}", name, str(dev / "input" / node.name)))
    return found


def discover(dev: Path = Path("/dev"), sys: Path = Path("/sys")) -> list[FoundDevice]:
    return [
        *serial_ports(dev, sys),
        *input_scanners(dev, sys),
        *video_devices(dev, sys),
        *usb_printers(dev, sys),
    ]
