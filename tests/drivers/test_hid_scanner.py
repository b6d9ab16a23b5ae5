"""Keyboard-wedge scanners: keystroke decoding from recorded evdev event streams, device selection, and the
reader's connect / unplug / reconnect cycle against a stand-in for the kernel's event device (no uinput on CI)."""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest

from drivers import keymaps
from drivers.base import Backoff, DeviceState, DeviceStatus, Scan, UnsupportedDeviceUrl
from drivers.hid_scanner import HidScanner, InputDeviceInfo, list_input_devices, select_device
from drivers.keymaps import (
    EV_KEY,
    EV_MSC,
    EV_SYN,
    KEY_0,
    KEY_1,
    KEY_2,
    KEY_4,
    KEY_8,
    KEY_A,
    KEY_B,
    KEY_BACKSPACE,
    KEY_CAPSLOCK,
    KEY_DOT,
    KEY_ENTER,
    KEY_ESC,
    KEY_F1,
    KEY_GRAVE,
    KEY_KP0,
    KEY_KP5,
    KEY_KP9,
    KEY_KPDOT,
    KEY_KPENTER,
    KEY_KPMINUS,
    KEY_LEFTCTRL,
    KEY_LEFTSHIFT,
    KEY_Q,
    KEY_RIGHTALT,
    KEY_RIGHTSHIFT,
    KEY_SPACE,
    KEY_Y,
    KEY_Z,
    SYN_DROPPED,
    SYN_REPORT,
    KeystrokeDecoder,
)

DATA = Path(__file__).parent / "data" / "hid"
WAIT = 5.0
HONEYWELL = (0x0C2E, 0x0B61)
WECHAT = "134611987654321098"


def recording(name: str) -> tuple[str, list[tuple[int, int, int]]]:
    """(layout, events as (type, code, value)) from a JSON recording of python-evdev InputEvents."""
    data = json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))
    return data["layout"], [(etype, code, value) for _sec, _usec, etype, code, value in data["events"]]


def tap(code: int, *mods: int) -> list[tuple[int, int, int]]:
    """One key press as a device reports it: modifiers down, key down, key up, modifiers up, each with a SYN."""
    events = []
    for key, value in [*((m, 1) for m in mods), (code, 1), (code, 0), *((m, 0) for m in reversed(mods))]:
        events += [(EV_MSC, 4, 0x70000), (EV_KEY, key, value), (EV_SYN, SYN_REPORT, 0)]
    return events


def typed(*taps: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    return [event for t in taps for event in t]


def decode(events, layout: str = "us", **kwargs) -> list[str]:
    return list(KeystrokeDecoder(layout, **kwargs).decode(events))


# --- recordings -------------------------------------------------------------------------------------------


def test_honeywell_scanning_a_wechat_auth_code():
    layout, events = recording("honeywell_wechat_us")
    assert decode(events, layout) == [WECHAT]


def test_keypad_digits_ended_by_keypad_enter():
    layout, events = recording("keypad_alipay_us")
    assert decode(events, layout) == ["286543210987654321"]


def test_us_shift_dollar_and_capslock_recording():
    layout, events = recording("us_mixed_case")
    assert decode(events, layout) == ["CP8K2$Ab-9x", "G12345"]


def test_german_layout_decodes_its_own_recording():
    layout, events = recording("de_member_url")
    assert layout == "de"
    assert decode(events, layout) == ["https://m.example.cn/k?z=Zy-42&q=7#Ü"]
    # The same keystrokes read as US would be garbage: the layout setting matters.
    assert decode(events, "us") != ["https://m.example.cn/k?z=Zy-42&q=7#Ü"]


# --- US layout --------------------------------------------------------------------------------------------


def test_dollar_is_shift_4_on_us():
    assert decode(typed(tap(KEY_4, KEY_LEFTSHIFT), tap(KEY_1), tap(KEY_ENTER))) == ["$1"]


def test_either_shift_key_shifts():
    assert decode(typed(tap(KEY_A, KEY_LEFTSHIFT), tap(KEY_B, KEY_RIGHTSHIFT), tap(KEY_A), tap(KEY_ENTER))) == ["ABa"]


def test_capslock_shifts_letters_only_and_shift_undoes_it():
    events = typed(
        tap(KEY_CAPSLOCK),
        tap(KEY_A),
        tap(KEY_1),
        tap(KEY_B, KEY_LEFTSHIFT),
        tap(KEY_1, KEY_LEFTSHIFT),
        tap(KEY_CAPSLOCK),
        tap(KEY_A),
        tap(KEY_ENTER),
    )
    assert decode(events) == ["A1b!a"]


def test_keypad_keys():
    events = typed(tap(KEY_KP9), tap(KEY_KPMINUS), tap(KEY_KP0), tap(KEY_KPDOT), tap(KEY_KP5), tap(KEY_KPENTER))
    assert decode(events) == ["9-0.5"]
    # On a German layout the keypad's decimal key types a comma.
    assert decode(events, "de") == ["9-0,5"]


def test_autorepeat_and_key_up_type_nothing():
    events = [(EV_KEY, KEY_A, 1), (EV_KEY, KEY_A, 2), (EV_KEY, KEY_A, 2), (EV_KEY, KEY_A, 2), (EV_KEY, KEY_A, 0)]
    events += [(EV_KEY, KEY_LEFTSHIFT, 1), (EV_KEY, KEY_LEFTSHIFT, 2), (EV_KEY, KEY_B, 1), (EV_KEY, KEY_B, 0)]
    events += [(EV_KEY, KEY_LEFTSHIFT, 0), (EV_KEY, KEY_B, 1), (EV_KEY, KEY_ENTER, 1), (EV_KEY, KEY_ENTER, 2)]
    assert decode(events) == ["aBb"]


def test_unknown_and_non_text_keys_are_ignored(caplog):
    caplog.set_level(logging.DEBUG, logger="drivers.keymaps")
    events = typed(tap(KEY_ESC), tap(KEY_1), tap(KEY_F1), tap(KEY_BACKSPACE), tap(0x2FF), tap(KEY_2), tap(KEY_ENTER))
    assert decode(events) == ["12"]
    assert caplog.records  # each ignored key leaves a debug line for whoever sets the scanner up


def test_keys_typed_with_ctrl_held_are_not_text():
    assert decode(typed(tap(KEY_1), tap(KEY_A, KEY_LEFTCTRL), tap(KEY_2), tap(KEY_ENTER))) == ["12"]


def test_two_codes_back_to_back_and_empty_enters():
    _, wechat = recording("honeywell_wechat_us")
    _, alipay = recording("keypad_alipay_us")
    assert decode(wechat + typed(tap(KEY_ENTER), tap(KEY_KPENTER)) + alipay) == [WECHAT, "286543210987654321"]


def test_an_overlong_code_is_dropped_once_and_the_next_survives(caplog):
    caplog.set_level(logging.WARNING, logger="drivers.keymaps")
    long_code = typed(*[tap(KEY_1)] * 600, tap(KEY_ENTER))
    _, wechat = recording("honeywell_wechat_us")
    assert decode(long_code + wechat) == [WECHAT]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_events_dropped_by_the_kernel_lose_that_code_only(caplog):
    caplog.set_level(logging.WARNING, logger="drivers.keymaps")
    _, wechat = recording("honeywell_wechat_us")
    half = wechat[: len(wechat) // 2]
    # The interrupted code ends at its Enter without being emitted; the next full one comes through.
    assert decode(half + [(EV_SYN, SYN_DROPPED, 0)] + typed(tap(KEY_ENTER)) + wechat) == [WECHAT]
    assert any("dropped" in r.getMessage() for r in caplog.records)


# --- German layout ----------------------------------------------------------------------------------------


def test_german_swaps_y_and_z():
    assert decode(typed(tap(KEY_Y), tap(KEY_Z), tap(KEY_Y, KEY_LEFTSHIFT), tap(KEY_ENTER)), "de") == ["zyZ"]


def test_german_shifted_digit_row():
    digits = [KEY_1 + i for i in range(9)] + [KEY_0]
    events = typed(*[tap(code, KEY_LEFTSHIFT) for code in digits], tap(KEY_ENTER))
    assert decode(events, "de") == ['!"§$%&/()=']
    assert decode(events, "us") == ["!@#$%^&*()"]


def test_german_altgr_and_dead_keys():
    events = typed(
        tap(KEY_Q, KEY_RIGHTALT),
        tap(KEY_8, KEY_RIGHTALT),
        tap(KEY_GRAVE),
        tap(KEY_SPACE),
        tap(KEY_GRAVE),
        tap(KEY_A),
        tap(KEY_DOT),
        tap(KEY_ENTER),
    )
    assert decode(events, "de") == ["@[^â."]


def test_keymap_codes_are_the_kernels():
    ecodes = pytest.importorskip("evdev.ecodes")
    for name in dir(keymaps):
        if name.startswith(("KEY_", "EV_", "SYN_")) and name not in ("KEY_UP", "KEY_DOWN", "KEY_REPEAT"):
            assert getattr(keymaps, name) == getattr(ecodes, name), name


# --- finding the device -----------------------------------------------------------------------------------


def info(
    path, name="Honeywell Imaging & Mobility 1900", ids=HONEYWELL, keyboard=True, phys="usb-0000:00:14.0-2/input0"
):
    return InputDeviceInfo(path, name, ids[0], ids[1], phys, keyboard)


def test_select_device_by_vendor_and_product():
    infos = [info("/dev/input/event0", "AT Translated Set 2 keyboard", (0x0001, 0x0001)), info("/dev/input/event5")]
    assert select_device(infos, *HONEYWELL) == infos[1]
    assert select_device(infos, 0x05F9, 0x2206) is None


def test_select_device_takes_the_keyboard_interface_of_a_composite_scanner():
    infos = [info("/dev/input/event4", "Honeywell Consumer Control", keyboard=False), info("/dev/input/event5")]
    assert select_device(infos, *HONEYWELL) == infos[1]
    assert select_device(infos[:1], *HONEYWELL) is None


def test_select_device_by_name_and_port_and_in_event_number_order():
    infos = [
        info("/dev/input/event10", "Honeywell 1900 Keyboard", phys="usb-0000:00:14.0-1/input0"),
        info("/dev/input/event9", "Honeywell 1900 Keyboard", phys="usb-0000:00:14.0-3/input0"),
        info("/dev/input/event2", "Other Wedge"),
    ]
    assert select_device(infos, *HONEYWELL, name="honeywell") == infos[1]  # event9 before event10
    assert select_device(infos, *HONEYWELL, name="HONEYWELL", phys="14.0-1/") == infos[0]
    assert select_device(infos, *HONEYWELL, name="Zebra") is None


def _sysfs_device(root: Path, event: str, name: str, vendor: str, product: str, key_bits: str) -> None:
    device = root / event / "device"
    (device / "id").mkdir(parents=True)
    (device / "capabilities").mkdir()
    (device / "name").write_text(name + "\n")
    (device / "phys").write_text("usb-0000:00:14.0-2/input0\n")
    (device / "id" / "vendor").write_text(vendor + "\n")
    (device / "id" / "product").write_text(product + "\n")
    (device / "capabilities" / "key").write_text(key_bits + "\n")


def test_devices_are_listed_from_sysfs(tmp_path):
    # Key bitmaps as a 64-bit kernel prints them for a full keyboard and for a consumer-control interface.
    _sysfs_device(
        tmp_path,
        "event3",
        "Honeywell Imaging & Mobility 1900",
        "0c2e",
        "0b61",
        "1000000000007 ff9f207ac14057ff febeffdfffefffff fffffffffffffffe",
    )
    _sysfs_device(
        tmp_path,
        "event4",
        "Honeywell Imaging & Mobility 1900 Consumer Control",
        "0c2e",
        "0b61",
        "1 0 0 0 0 0 0 0 0 0 0 0 0",
    )
    (tmp_path / "mouse0").mkdir()  # not an event node
    infos = list_input_devices(tmp_path)
    assert infos == [
        InputDeviceInfo(
            "/dev/input/event3", "Honeywell Imaging & Mobility 1900", 0x0C2E, 0x0B61, "usb-0000:00:14.0-2/input0", True
        ),
        InputDeviceInfo(
            "/dev/input/event4",
            "Honeywell Imaging & Mobility 1900 Consumer Control",
            0x0C2E,
            0x0B61,
            "usb-0000:00:14.0-2/input0",
            False,
        ),
    ]


# --- the reader -------------------------------------------------------------------------------------------


def _cpu_ticks(thread: threading.Thread) -> int:
    fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks (proc(5) fields 14, 15)


DevInfo = namedtuple("DevInfo", "bustype vendor product version")
Event = namedtuple("Event", "sec usec type code value")


class FakeEventDevice:
    """Stands in for evdev.InputDevice over a pipe. Unplugged, it behaves as the kernel's device does: its fd
    stays readable for ever and every read fails with ENODEV, so a reader that kept it would spin."""

    def __init__(self, vid: int, pid: int, name: str):
        self.info = DevInfo(3, vid, pid, 0x110)
        self.name = name
        self._r, self._w = os.pipe()
        self._pending: queue.SimpleQueue[list[Event]] = queue.SimpleQueue()
        self.grabbed = False
        self.closed = False
        self.unplugged = False

    def type(self, events: list[tuple[int, int, int]]) -> None:
        self._pending.put([Event(0, 0, *e) for e in events])
        os.write(self._w, b".")

    def unplug(self) -> None:
        self.unplugged = True
        os.close(self._w)

    def fileno(self) -> int:
        return self._r

    def grab(self) -> None:
        self.grabbed = True

    def ungrab(self) -> None:
        if self.unplugged:
            raise OSError(errno.ENODEV, "No such device")
        self.grabbed = False

    def read(self):
        if self.unplugged:
            raise OSError(errno.ENODEV, "No such device")
        os.read(self._r, 1)
        return iter(self._pending.get_nowait())

    def close(self) -> None:
        self.closed = True
        os.close(self._r)
        if not self.unplugged:
            os.close(self._w)


class FakeInput:
    """The machine's input devices: what sysfs lists, and what opening a node gives."""

    def __init__(self):
        self.infos: list[InputDeviceInfo] = []
        self.nodes: dict[str, FakeEventDevice | Exception] = {}
        self.opened: queue.SimpleQueue[FakeEventDevice] = queue.SimpleQueue()

    def plug(self, path: str = "/dev/input/event5") -> None:
        self.infos.append(info(path))
        self.nodes[path] = FakeEventDevice(*HONEYWELL, "Honeywell Imaging & Mobility 1900")

    def unplug(self, path: str = "/dev/input/event5") -> None:
        self.infos = [i for i in self.infos if i.path != path]
        device = self.nodes.pop(path)
        assert isinstance(device, FakeEventDevice)
        device.unplug()


class ReaderHarness:
    def __init__(self, fake: FakeInput, url: str = "hid://0c2e:0b61"):
        self.scans: queue.Queue[Scan] = queue.Queue()
        self.statuses: queue.Queue[DeviceStatus] = queue.Queue()

        class Scanner(HidScanner):
            def _list_devices(self):
                return list(fake.infos)

            def _open_device(self, path):
                node = fake.nodes.get(path)
                if node is None:
                    raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
                if isinstance(node, Exception):
                    raise node
                fake.opened.put(node)
                return node

        self.scanner = Scanner.from_url(url, "hid-1", self.scans.put, self.statuses.put, backoff=Backoff(0.02, 0.1))

    def wait_for(self, state: DeviceState) -> DeviceStatus:
        deadline = time.monotonic() + WAIT
        while (left := deadline - time.monotonic()) > 0:
            try:
                status = self.statuses.get(timeout=left)
            except queue.Empty:
                break
            if status.state is state and status.reason != "not started":
                return status
        raise AssertionError(f"never {state.value}; last status {self.scanner.status}")


@pytest.fixture
def fake_input():
    return FakeInput()


@pytest.fixture
def reader(fake_input):
    harness = ReaderHarness(fake_input)
    yield harness
    harness.scanner.stop()


def test_reader_grabs_decodes_and_survives_unplug(reader, fake_input):
    fake_input.plug()
    reader.scanner.start()
    assert reader.wait_for(DeviceState.CONNECTED).reason == "Honeywell Imaging & Mobility 1900 (/dev/input/event5)"
    device = fake_input.opened.get(timeout=WAIT)
    assert device.grabbed  # the till's focused window never sees the auth code typed
    _, events = recording("honeywell_wechat_us")
    device.type(events)
    assert reader.scans.get(timeout=WAIT).text == WECHAT

    fake_input.unplug()
    status = reader.wait_for(DeviceState.DISCONNECTED)
    assert "disconnected" in (status.reason or "") and device.closed
    # Its dead fd is not kept: the reader is idle while the scanner is away.
    thread = next(t for t in threading.enumerate() if t.name == "scanner-hid-1")
    before = _cpu_ticks(thread)
    threading.Event().wait(0.5)  # the measuring window, not a wait for something to happen
    assert _cpu_ticks(thread) - before <= 5, "the reader spins while the scanner is unplugged"

    fake_input.plug()
    reader.wait_for(DeviceState.CONNECTED)
    again = fake_input.opened.get(timeout=WAIT)
    again.type(typed(tap(KEY_4, KEY_LEFTSHIFT), tap(KEY_1), tap(KEY_ENTER)))
    assert reader.scans.get(timeout=WAIT).text == "$1"


def test_stop_ungrabs_and_returns_promptly(reader, fake_input):
    fake_input.plug()
    reader.scanner.start()
    reader.wait_for(DeviceState.CONNECTED)
    device = fake_input.opened.get(timeout=WAIT)
    began = time.monotonic()
    reader.scanner.stop()
    assert time.monotonic() - began < 1.0
    assert not device.grabbed and device.closed


def test_no_device_says_what_to_check(reader):
    reader.scanner.start()
    status = reader.wait_for(DeviceState.DISCONNECTED)
    assert status.reason == "no input device 0c2e:0b61 (is the scanner plugged in? is the agent in the input group?)"


def test_permission_denied_is_an_error_with_the_fix(reader, fake_input):
    fake_input.infos.append(info("/dev/input/event5"))
    fake_input.nodes["/dev/input/event5"] = PermissionError(errno.EACCES, "Permission denied")
    reader.scanner.start()
    status = reader.wait_for(DeviceState.ERROR)
    assert "permission denied on /dev/input/event5" in (status.reason or "")
    assert "'input' group" in (status.reason or "") and "udev rule giving it 0c2e:0b61" in (status.reason or "")


def test_a_device_grabbed_by_another_program_is_an_error(reader, fake_input):
    fake_input.plug()
    device = fake_input.nodes["/dev/input/event5"]

    def busy():
        raise OSError(errno.EBUSY, "Device or resource busy")

    device.grab = busy  # type: ignore[method-assign]
    reader.scanner.start()
    assert "grabbed by another program" in (reader.wait_for(DeviceState.ERROR).reason or "")


def test_real_sysfs_listing_with_no_scanner_reports_not_found(tmp_path):
    statuses: queue.Queue[DeviceStatus] = queue.Queue()
    scanner = HidScanner(
        "hid-2", print, statuses.put, *HONEYWELL, name="Honeywell", backoff=Backoff(0.02, 0.1), sysfs=str(tmp_path)
    )
    scanner.start()
    try:
        status = statuses.get(timeout=WAIT)
        assert status.state is DeviceState.DISCONNECTED
        assert (
            status.reason
            == "no input device 0c2e:0b61 named 'Honeywell' (is the scanner plugged in? is the agent in the input group?)"
        )
    finally:
        scanner.stop()


def test_url_options():
    scanner = HidScanner.from_url("hid://0C2E:0B61?name=Honeywell&layout=DE&max_line=64", "h", print, print)
    assert (scanner.vid, scanner.pid, scanner.name) == HONEYWELL + ("Honeywell",)
    assert scanner.decoder.layout.name == "de" and scanner.decoder.max_length == 64
    with pytest.raises(UnsupportedDeviceUrl, match="layout"):
        HidScanner.from_url("hid://0c2e:0b61?layout=fr", "h", print, print)
    with pytest.raises(UnsupportedDeviceUrl, match="keymap"):
        HidScanner.from_url("hid://0c2e:0b61?keymap=de", "h", print, print)
    with pytest.raises(UnsupportedDeviceUrl, match="VID:PID"):
        HidScanner.from_url("hid://honeywell", "h", print, print)
