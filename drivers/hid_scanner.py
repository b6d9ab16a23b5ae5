"""A USB keyboard-wedge scanner, read through the Linux input subsystem (python-evdev, the `hid` extra).

    hid://0c2e:0b61                      the first keyboard interface with that USB vendor:product (hex)
    hid://0c2e:0b61?name=Honeywell       ... whose name contains "Honeywell" (case-insensitive)
    hid://0c2e:0b61?layout=de            the scanner types for a German keyboard (default: us)
    hid://0c2e:0b61?phys=usb-0000:00:14.0-2   ... plugged into that port (two identical scanners on one till)

The device is grabbed, so its keystrokes reach this agent only and never the focused window. Devices are
found through sysfs, which anyone may read: a scanner the agent may not open is reported as a permission
problem with its fix rather than as "not found".
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import threading
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

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
from drivers.keymaps import KEY_1, KEY_ENTER, KeystrokeDecoder, layout_named
from drivers.urls import DeviceUrl, parse_device_url

log = logging.getLogger(__name__)

SYSFS_INPUT = "/sys/class/input"
DEV_INPUT = "/dev/input"
DEFAULT_MAX_LINE = 512
OPTIONS = ("name", "phys", "layout", "max_line")
PERMISSION_FIX = (
    "the agent's user needs the 'input' group (SupplementaryGroups=input in its systemd unit, and "
    "DeviceAllow=char-input r if DevicePolicy=closed) or a udev rule giving it {label}; then restart the agent"
)


@dataclass(frozen=True)
class InputDeviceInfo:
    """What sysfs says about one /dev/input/event* node, read without opening it."""

    path: str
    name: str
    vendor: int
    product: int
    phys: str = ""
    keyboard: bool = True  # has Enter and the digit keys: the interface a wedge scanner types on


def select_device(
    infos: Iterable[InputDeviceInfo], vid: int, pid: int, name: str | None = None, phys: str | None = None
) -> InputDeviceInfo | None:
    """The scanner's keyboard interface, or None.

    Scanners are composite devices: besides the keyboard they may expose consumer-control or vendor
    interfaces with the same vendor:product, which never type a code. Among several keyboards the lowest
    event number wins, so the choice is the same on every start.
    """
    matches = [
        info
        for info in infos
        if info.vendor == vid
        and info.product == pid
        and info.keyboard
        and (not name or name.casefold() in info.name.casefold())
        and (not phys or phys in info.phys)
    ]
    return min(matches, key=lambda info: _event_number(info.path), default=None)


def _event_number(path: str) -> tuple[int, str]:
    found = re.search(r"(\d+)$", path)
    return (int(found.group(1)) if found else -1, path)


def list_input_devices(sysfs: str | os.PathLike[str] = SYSFS_INPUT, dev: str = DEV_INPUT) -> list[InputDeviceInfo]:
    """Every event device sysfs knows, with its USB ids, name, physical path and whether it is a keyboard."""
    infos = []
    for node in sorted(Path(sysfs).glob("event*")):
        device = node / "device"
        try:
            infos.append(
                InputDeviceInfo(
                    path=f"{dev}/{node.name}",
                    name=_read(device / "name"),
                    vendor=int(_read(device / "id" / "vendor"), 16),
                    product=int(_read(device / "id" / "product"), 16),
                    phys=_read(device / "phys", default=""),
                    keyboard=_is_keyboard(_read(device / "capabilities" / "key", default="0")),
                )
            )
        except (OSError, ValueError):
            continue  # went away while listing, or not a device with ids (e.g. a virtual one): not ours
    return infos


def _read(path: Path, default: str | None = None) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        if default is None:
            raise
        return default


def _is_keyboard(key_bitmap: str) -> bool:
    # sysfs prints the key bitmap as hex words, most significant first. Words are 32 or 64 bits depending on
    # the kernel, but Enter (28) and 1 (2) are in the lowest 32 bits of the last word either way.
    words = key_bitmap.split()
    low = int(words[-1], 16) if words else 0
    return bool(low >> KEY_ENTER & 1 and low >> KEY_1 & 1)


class _InputDevice(Protocol):
    """The part of evdev.InputDevice used here."""

    info: Any
    name: str

    def fileno(self) -> int: ...
    def grab(self) -> None: ...
    def ungrab(self) -> None: ...
    def read(self) -> Iterable[Any]: ...
    def close(self) -> None: ...


def _evdev() -> ModuleType:
    try:
        import evdev
    except ImportError as exc:
        raise DeviceError(
            "hid:// scanners need python-evdev, which is not installed: pip install 'pos-edge-agent[hid]'"
        ) from exc
    return evdev


class HidScanner(ScannerReader):
    def __init__(
        self,
        device_id: str,
        on_scan: ScanSink,
        on_status: StatusSink,
        vid: int,
        pid: int,
        *,
        name: str | None = None,
        phys: str | None = None,
        layout: str = "us",
        max_line: int = DEFAULT_MAX_LINE,
        backoff: Backoff | None = None,
        sysfs: str = SYSFS_INPUT,
    ):
        super().__init__(device_id, on_scan, on_status, backoff)
        self.vid, self.pid, self.name, self.phys = vid, pid, name, phys
        self.decoder = KeystrokeDecoder(layout, max_line, device_id)
        self._sysfs = sysfs
        # The wake pipe lets stop() interrupt select(); the lock keeps stop() from writing to it while closed.
        self._wake_lock = threading.Lock()
        self._wake_w: int | None = None

    @classmethod
    def from_url(
        cls, url: DeviceUrl | str, device_id: str, on_scan: ScanSink, on_status: StatusSink, **options: Any
    ) -> HidScanner:
        if isinstance(url, str):
            url = parse_device_url(url)
        vid, pid = url.vid_pid
        query = dict(url.query)
        unknown = set(query) - set(OPTIONS)
        if unknown:
            raise UnsupportedDeviceUrl(
                f"{url.text}: unknown option {', '.join(sorted(unknown))}; hid scanners take {', '.join(OPTIONS)}"
            )
        layout = query.get("layout", "us")
        try:
            layout_named(layout)
        except ValueError as exc:
            raise UnsupportedDeviceUrl(f"{url.text}: {exc}") from None
        max_line = query.get("max_line", str(DEFAULT_MAX_LINE))
        if not max_line.isdigit() or int(max_line) <= 0:
            raise UnsupportedDeviceUrl(
                f"{url.text}: max_line={max_line!r} is not valid; use a positive whole number, e.g. max_line=512"
            )
        _evdev()  # fail at start, not on the first read, when the extra is missing
        return cls(
            device_id,
            on_scan,
            on_status,
            vid,
            pid,
            name=query.get("name") or None,
            phys=query.get("phys") or None,
            layout=layout,
            max_line=int(max_line),
            **options,
        )

    @property
    def label(self) -> str:
        return f"{self.vid:04x}:{self.pid:04x}" + (f" named {self.name!r}" if self.name else "")

    # Seams: how devices are listed and opened. Tests replace these; everything else is the real driver.
    def _list_devices(self) -> list[InputDeviceInfo]:
        return list_input_devices(self._sysfs)

    def _open_device(self, path: str) -> _InputDevice:
        return _evdev().InputDevice(path)

    def run_once(self, stop: threading.Event) -> bool | None:
        info = select_device(self._list_devices(), self.vid, self.pid, self.name, self.phys)
        if info is None:
            raise DeviceUnavailable(
                f"no input device {self.label} (is the scanner plugged in? is the agent in the input group?)"
            )
        with ExitStack() as cleanup:
            device = self._open(info)
            # Released at once on any exit: a dead device fd stays readable for ever and would spin select().
            cleanup.callback(self._release, device)
            wake_r = self._open_wake_pipe()
            cleanup.callback(self._close_wake_pipe, wake_r)
            self._grab(device, info)
            self.decoder.reset()
            self.set_status(DeviceState.CONNECTED, f"{info.name} ({info.path})")
            while not stop.is_set():
                # No timeout: stop() wakes us through the pipe, so an idle scanner costs nothing.
                ready, _, _ = select.select([device.fileno(), wake_r], [], [])
                if wake_r in ready:
                    os.read(wake_r, 64)
                    continue
                for event in self._events(device):
                    code = self.decoder.feed(event.type, event.code, event.value)
                    if code is not None:
                        self.emit(code)
        return None

    def _open_wake_pipe(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        with self._wake_lock:
            self._wake_w = wake_w
        return wake_r

    def _close_wake_pipe(self, wake_r: int) -> None:
        with self._wake_lock:
            if self._wake_w is not None:
                os.close(self._wake_w)
            self._wake_w = None
        os.close(wake_r)

    def _interrupt(self) -> None:
        with self._wake_lock:
            if self._wake_w is not None:
                try:
                    os.write(self._wake_w, b"x")
                except BlockingIOError:
                    pass  # already woken

    def _open(self, info: InputDeviceInfo) -> _InputDevice:
        try:
            device = self._open_device(info.path)
        except PermissionError as exc:
            raise DeviceError(
                f"permission denied on {info.path} ({info.name}): " + PERMISSION_FIX.format(label=self.label)
            ) from exc
        except OSError as exc:
            raise DeviceUnavailable(
                f"input device {self.label} at {info.path} cannot be opened ({exc.strerror or exc})"
            ) from exc
        # The node may have been reused by another device between listing and opening.
        if (device.info.vendor, device.info.product) != (self.vid, self.pid):
            device.close()
            raise DeviceUnavailable(f"no input device {self.label} at {info.path} any more")
        return device

    def _grab(self, device: _InputDevice, info: InputDeviceInfo) -> None:
        try:
            device.grab()
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise DeviceError(
                    f"{info.path} ({info.name}) is grabbed by another program; stop it (another agent? a kiosk tool?)"
                ) from exc
            raise DeviceUnavailable(f"input device {self.label} cannot be grabbed ({exc.strerror or exc})") from exc

    def _events(self, device: _InputDevice) -> list[Any]:
        try:
            return list(device.read())
        except BlockingIOError:
            return []
        except OSError as exc:
            # ENODEV on unplug; anything else on a read means the fd is no good either.
            raise DeviceUnavailable(f"input device {self.label} disconnected ({exc.strerror or exc})") from exc

    @staticmethod
    def _release(device: _InputDevice) -> None:
        try:
            device.ungrab()
        except OSError:
            pass  # unplugged: the kernel dropped the grab with the device
        try:
            device.close()
        except OSError:
            pass
