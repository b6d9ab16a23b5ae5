"""udev rules that give the attached scanners, cameras and printers stable names and the agent's groups.

`pos-edge devices --udev` prints them for what discovery (drivers/discovery.py) found; store IT reviews them and
saves them as /etc/udev/rules.d/70-pos-edge.rules (the commented template is systemd/udev/70-pos-edge.rules).

Two steps: `usb_identity` reads the USB vendor, product, serial and port above a found device from sysfs (the
effect); `rules` turns identities into rule text (pure). A device is matched by vendor and product, plus its
serial number when it has one; two alike devices without serial numbers are told apart by the USB port they are
plugged into instead, since udev cannot tell them apart otherwise.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from drivers.discovery import FoundDevice


@dataclass(frozen=True)
class UdevDevice:
    """One found device, as udev can match it."""

    kind: str  # serial, hid, camera, printer (as in FoundDevice)
    node: str  # the device file it has now, e.g. /dev/ttyACM0, /dev/usb/lp0; a sysfs folder for a usb:// printer
    url: str  # the URL discovery proposed for settings
    description: str
    vendor: str | None  # USB idVendor, 4 hex digits
    product: str | None  # USB idProduct
    serial: str | None = None
    port: str | None = None  # the USB device's kernel name, e.g. 1-1.2: the physical port it is plugged into


@dataclass(frozen=True)
class _Match:
    subsystem: str
    extra: str  # matches on the device itself, before the USB parent's
    group: str
    name: str | None  # the /dev symlink, numbered per name ("pos-scanner-1"); None: no symlink
    on_usb_device: bool = False  # the rule is for the USB device itself (ATTR, KERNEL), not a child (ATTRS, KERNELS)


# What each kind of device is in udev, the group the agent's service has for it (SupplementaryGroups= in
# pos-edge.service), and the stable name it gets.
_SERIAL = _Match("tty", "", "dialout", "pos-scanner")
_HID = _Match("input", 'KERNEL=="event*", ', "input", "pos-scanner")
_CAMERA = _Match("video4linux", 'ATTR{index}=="0", ', "video", "pos-camera")
_LINE_PRINTER = _Match("usbmisc", 'KERNEL=="lp*", ', "lp", "pos-printer")
# libusb opens /dev/bus/usb/BBB/DDD itself, by vendor and product: a group, no name.
_USB_PRINTER = _Match("usb", 'ENV{DEVTYPE}=="usb_device", ', "lp", None, on_usb_device=True)

# udev compares with shell-style globs inside double quotes: a serial's other characters become `?`
# (which matches any one character, including the one it replaces).
_UNSAFE_IN_MATCH = re.compile(r"[^A-Za-z0-9 ._:/+-]")
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")


def _match_for(device: UdevDevice) -> _Match | None:
    if device.kind == "printer":
        return _USB_PRINTER if device.url.startswith("usb://") else _LINE_PRINTER
    return {"serial": _SERIAL, "hid": _HID, "camera": _CAMERA}.get(device.kind)


def _quoted(value: str) -> str:
    return '"' + _UNSAFE_IN_MATCH.sub("?", value) + '"'


def _usb_ids(device: UdevDevice) -> tuple[str, str] | None:
    """The device's USB vendor and product ids; None when it is not a USB device."""
    if device.vendor and device.product and _HEX4.fullmatch(device.vendor) and _HEX4.fullmatch(device.product):
        return device.vendor, device.product
    return None


def rules(devices: list[UdevDevice]) -> str:
    """The rules file for these devices: a comment per device saying what it is and what to put in settings."""
    lines = [
        "# /etc/udev/rules.d/70-pos-edge.rules, written by `pos-edge devices --udev` for the devices attached then.",
        "# Review it, save it, then: udevadm control --reload && udevadm trigger (or unplug and plug in again).",
        "# A serial port may be a scanner or a printer: rename pos-scanner-N to pos-printer for a serial printer.",
    ]
    # Alike devices without serial numbers cannot be told apart by their ids: those are matched by USB port.
    alike = Counter((d.kind, d.url.split(":")[0], d.vendor, d.product) for d in devices if not d.serial)
    numbers: Counter[str] = Counter()
    for device in devices:
        match = _match_for(device)
        lines += ["", f"# {device.description} ({device.node})"]
        ids = _usb_ids(device)
        if match is None or ids is None:
            lines.append("# not a USB device: it keeps its own name; use the URL `pos-edge devices` shows")
            continue
        vendor, product = ids
        attr, kernel = ("ATTR", "KERNEL") if match.on_usb_device else ("ATTRS", "KERNELS")
        keys = [
            f'SUBSYSTEM=="{match.subsystem}"',
            f'{match.extra}{attr}{{idVendor}}=="{vendor.lower()}"',
            f'{attr}{{idProduct}}=="{product.lower()}"',
        ]
        if device.serial:
            keys.append(f"{attr}{{serial}}=={_quoted(device.serial)}")
        elif alike[(device.kind, device.url.split(":")[0], device.vendor, device.product)] > 1:
            if device.port is None:
                lines.append(
                    "# WARNING: an alike device has no serial number either, and no USB port is known: this rule matches both"
                )
            else:
                # udev wants KERNELS and ATTRS to match on the same parent: the USB device, named after its port.
                keys.append(f"{kernel}=={_quoted(device.port)}")
                lines.append(
                    f"# matched by the USB port it is plugged into ({device.port}): an alike device has no serial number either"
                )
        if match.name is None:
            lines.append(f"# settings: {device.url}")
        else:
            numbers[match.name] += 1
            # One receipt printer is the usual case: /dev/pos-printer; scanners and cameras are numbered.
            single = match is _LINE_PRINTER and numbers[match.name] == 1
            name = match.name if single else f"{match.name}-{numbers[match.name]}"
            keys.append(f'SYMLINK+="{name}"')
            lines.append(f"# settings: {_url_with_name(device, name)}")
        keys.append(f'GROUP="{match.group}", MODE="0660"')
        lines.append(", ".join(keys))
    return "\n".join(lines) + "\n"


def _url_with_name(device: UdevDevice, name: str) -> str:
    if device.kind == "serial":
        query = device.url.partition("?")[2]
        return f"serial:///dev/{name}" + (f"?{query}" if query else "")
    if device.kind == "camera":
        return f"camera:///dev/{name}"
    if device.kind == "printer":
        return f"file:///dev/{name}"
    return device.url  # a HID scanner is opened by vendor and product (hid://VID:PID); the name is for people


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip() or None
    except OSError:
        return None


def _usb_parent(start: Path) -> Path | None:
    """The USB device (the folder with idVendor) at or above a sysfs device folder."""
    here = start.resolve()
    for _ in range(8):
        if (here / "idVendor").is_file():
            return here
        if here.parent == here:
            break
        here = here.parent
    return None


def _class_device(found: FoundDevice, sys: Path) -> Path | None:
    """The sysfs device folder behind a found device file."""
    node = Path(found.path).name
    folder = {"serial": "tty", "hid": "input", "camera": "video4linux", "printer": "usbmisc"}.get(found.kind)
    if folder is None:
        return None
    device = sys / "class" / folder / node / "device"
    return device if device.exists() else None


def usb_identity(found: FoundDevice, sys: Path = Path("/sys")) -> UdevDevice:
    """What udev can match this found device by, read from sysfs (vendor and product unknown: not USB)."""
    usb: Path | None
    if found.kind == "printer" and found.url.startswith("usb://"):
        folder = Path(found.path)  # discovery gives the USB device folder itself
        usb = folder if (folder / "idVendor").is_file() else None
    else:
        device = _class_device(found, sys)
        usb = _usb_parent(device) if device is not None else None
    if usb is not None:
        return UdevDevice(
            found.kind,
            found.path,
            found.url,
            found.description,
            _read(usb / "idVendor"),
            _read(usb / "idProduct"),
            _read(usb / "serial"),
            usb.name,
        )
    # Not USB (the Pi's UART, a Bluetooth scanner): nothing stable to match it by here.
    return UdevDevice(found.kind, found.path, found.url, found.description, None, None)
