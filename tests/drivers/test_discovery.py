"""`pos-edge devices` finds scanners, cameras and printers by what Linux shows in /dev and /sys, each with its URL.

The tree here is built the way the kernel and udev lay it out for a Honeywell serial scanner, a keyboard-wedge
scanner, a UVC camera and an Epson USB printer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.discovery import discover

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def host(tmp_path: Path) -> tuple[Path, Path]:
    dev, sysfs = tmp_path / "dev", tmp_path / "sys"
    usb = sysfs / "devices/pci0000:00/0000:00:14.0/usb1"

    # Serial scanner (CDC-ACM) with its udev by-id link; a virtual console that must be left out.
    scanner = usb / "1-1"
    write(scanner / "manufacturer", "Honeywell Imaging & Mobility")
    write(scanner / "product", "1900G")
    (scanner / "1-1:1.0").mkdir(parents=True)
    (sysfs / "class/tty/ttyACM0").mkdir(parents=True)
    (sysfs / "class/tty/ttyACM0/device").symlink_to(scanner / "1-1:1.0")
    (sysfs / "class/tty/tty1").mkdir(parents=True)
    (dev / "serial/by-id").mkdir(parents=True)
    (dev / "ttyACM0").touch()
    (dev / "tty1").touch()
    (dev / "serial/by-id/usb-Honeywell_Imaging_1900G-if00").symlink_to(dev / "ttyACM0")

    # Keyboard-wedge scanner and an ordinary keyboard.
    for event, name, vendor, product in (
        ("event5", "Newland NLS-HR22 Barcode Scanner", "1eab", "1a03"),
        ("event2", "Dell KB216 Keyboard", "413c", "2113"),
    ):
        write(sysfs / f"class/input/{event}/device/name", name)
        write(sysfs / f"class/input/{event}/device/id/vendor", vendor)
        write(sysfs / f"class/input/{event}/device/id/product", product)

    # UVC camera: capture node and its metadata node.
    for node, index in (("video0", "0"), ("video1", "1")):
        write(sysfs / f"class/video4linux/{node}/name", "HD USB Camera")
        write(sysfs / f"class/video4linux/{node}/index", index)
        (dev / node).touch()
    (dev / "v4l/by-id").mkdir(parents=True)
    (dev / "v4l/by-id/usb-HD_USB_Camera-video-index0").symlink_to(dev / "video0")

    # USB receipt printer, interface class 07, with its usblp device.
    printer = usb / "1-2"
    write(printer / "idVendor", "04b8")
    write(printer / "idProduct", "0202")
    write(printer / "manufacturer", "EPSON")
    write(printer / "product", "TM-T88V")
    write(printer / "1-2:1.0/bInterfaceClass", "07")
    (printer / "1-2:1.0/usbmisc/lp0").mkdir(parents=True)
    (sysfs / "bus/usb/devices").mkdir(parents=True)
    (sysfs / "bus/usb/devices/1-2:1.0").symlink_to(printer / "1-2:1.0")
    return dev, sysfs


def test_each_device_is_listed_with_the_url_to_use(host):
    dev, sysfs = host
    found = {(d.kind, d.url): d.description for d in discover(dev, sysfs)}
    assert found == {
        (
            "serial",
            f"serial://{dev}/serial/by-id/usb-Honeywell_Imaging_1900G-if00?baudrate=9600",
        ): "Honeywell Imaging & Mobility 1900G",
        ("hid", "hid://1eab:1a03"): "Newland NLS-HR22 Barcode Scanner",
        ("camera", f"camera://{dev}/v4l/by-id/usb-HD_USB_Camera-video-index0"): "HD USB Camera",
        ("printer", "usb://04b8:0202"): "EPSON TM-T88V",
        ("printer", f"file://{dev}/usb/lp0"): "EPSON TM-T88V (line-printer device)",
    }


def test_every_listed_url_is_accepted_by_the_settings(host):
    from drivers.urls import parse_device_url

    for device in discover(*host):
        assert parse_device_url(device.url).scheme in ("serial", "hid", "camera", "usb", "file")


def test_cli_lists_devices_as_json_on_this_machine():
    result = subprocess.run(
        [sys.executable, "-m", "agent", "devices", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    devices = json.loads(result.stdout)
    assert isinstance(devices, list)
    assert all({"kind", "url", "description", "path"} <= set(d) for d in devices)
    human = subprocess.run(
        [sys.executable, "-m", "agent", "devices"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ},
    )
    assert human.returncode == 0 and human.stdout.strip()
