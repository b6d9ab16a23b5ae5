"""The serial scanner against real pseudo-terminals: the test writes what a scanner would send to the pty's
master end; the driver reads the slave end through pyserial, exactly as it reads /dev/ttyACM0."""

from __future__ import annotations

import logging
import os
import queue
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.base import Backoff, DeviceState, DeviceStatus, Scan, UnsupportedDeviceUrl
from drivers.serial_scanner import SerialScanner, SerialSettings

WAIT = 5.0  # generous upper bound for anything to happen; tests normally finish far sooner
READ_TIMEOUT = 0.05
WECHAT = "134611987654321098"
ALIPAY = "286543210987654321"


class FakeScannerPort:
    """The scanner's end of a pty pair. Closing it is pulling the USB cable."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        # Only the driver holds the slave open, as with a real port: hang-up is then seen by the driver.
        os.close(slave)

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    def unplug(self) -> None:
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


class Harness:
    def __init__(self, scanner: SerialScanner, scans: queue.Queue[Scan], statuses: queue.Queue[DeviceStatus]):
        self.scanner = scanner
        self.scans = scans
        self.statuses = statuses

    def next_scan(self) -> str:
        return self.scans.get(timeout=WAIT).text

    def wait_for(self, state: DeviceState) -> DeviceStatus:
        deadline = time.monotonic() + WAIT
        while (left := deadline - time.monotonic()) > 0:
            try:
                status = self.statuses.get(timeout=left)
            except queue.Empty:
                break
            if status.state is state:
                return status
        raise AssertionError(f"scanner never became {state.value}; last status: {self.scanner.status}")

    def thread(self) -> threading.Thread:
        (thread,) = [t for t in threading.enumerate() if t.name == f"scanner-{self.scanner.device_id}"]
        return thread


@pytest.fixture
def ports() -> Iterator[list[FakeScannerPort]]:
    made: list[FakeScannerPort] = []
    yield made
    for port in made:
        port.unplug()


@pytest.fixture
def start(ports):
    """start(url_or_path, **options) -> a running SerialScanner harness; stopped at teardown."""
    started: list[SerialScanner] = []

    def _start(path: str | Path, query: str = "", **options) -> Harness:
        scans: queue.Queue[Scan] = queue.Queue()
        statuses: queue.Queue[DeviceStatus] = queue.Queue()
        options.setdefault("read_timeout", READ_TIMEOUT)
        options.setdefault("backoff", Backoff(first=0.02, cap=0.1))
        scanner = SerialScanner.from_url(
            f"serial://{path}{'?' + query if query else ''}",
            f"serial-{len(started)}",
            scans.put,
            statuses.put,
            **options,
        )
        started.append(scanner)
        scanner.start()
        return Harness(scanner, scans, statuses)

    yield _start
    for scanner in started:
        scanner.stop()


@pytest.fixture
def port(ports) -> FakeScannerPort:
    made = FakeScannerPort()
    ports.append(made)
    return made


@pytest.fixture
def connected(start, port) -> Harness:
    harness = start(port.path)
    harness.wait_for(DeviceState.CONNECTED)
    return harness


@pytest.mark.parametrize("terminator", [b"\r", b"\n", b"\r\n"], ids=["CR", "LF", "CRLF"])
def test_each_line_ending_ends_one_scan(connected, port, terminator):
    port.send(WECHAT.encode() + terminator + ALIPAY.encode() + terminator)
    assert connected.next_scan() == WECHAT
    # No empty scan between the two, even for CRLF.
    assert connected.next_scan() == ALIPAY
    assert connected.scans.empty()


def test_two_scans_in_one_write_are_two_scans(connected, port):
    port.send(b"6901234567892\r\n" + WECHAT.encode() + b"\r\n")
    assert [connected.next_scan(), connected.next_scan()] == ["6901234567892", WECHAT]


def test_a_scan_split_across_a_read_timeout_arrives_whole(connected, port):
    port.send(WECHAT[:7].encode())
    # The pause is the stimulus (the scanner stalls mid-line), several read timeouts long.
    threading.Event().wait(READ_TIMEOUT * 6)
    port.send(WECHAT[7:].encode() + b"\r")
    assert connected.next_scan() == WECHAT  # the first scan is the whole code: no partial was emitted


def test_bad_bytes_give_a_scan_never_a_crash(connected, port):
    # Invalid UTF-8, NUL and BEL inside the line; a line of only controls; then UTF-8 Chinese text.
    port.send(b"\xff\xfe12\x00345\x07\xc3(ok\r\n\x00\x00\x1b\r\n" + "会员8800012345678".encode() + b"\n")
    assert connected.next_scan() == "\ufffd\ufffd12345\ufffd(ok"
    assert connected.next_scan() == "会员8800012345678"  # the control-only line was no scan
    assert connected.scanner.status.state is DeviceState.CONNECTED


def test_a_multibyte_character_split_between_reads_is_decoded(connected, port):
    encoded = "支付码".encode()
    port.send(encoded[:4])
    threading.Event().wait(READ_TIMEOUT * 3)
    port.send(encoded[4:] + b"\r")
    assert connected.next_scan() == "支付码"


def test_an_overlong_line_is_dropped_with_one_warning_and_the_next_scan_survives(connected, port, caplog):
    caplog.set_level(logging.WARNING, logger="drivers.serial_scanner")
    port.send(b"9" * 10_000)
    port.send(b"\r\n" + WECHAT.encode() + b"\r\n")
    assert connected.next_scan() == WECHAT
    warnings = [r for r in caplog.records if r.name == "drivers.serial_scanner" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "512 bytes" in warnings[0].getMessage()
    assert "9999" not in caplog.text  # the dropped content is not logged


def test_max_line_from_the_url(start, port):
    harness = start(port.path, "max_line=20")
    harness.wait_for(DeviceState.CONNECTED)
    port.send(b"A" * 21 + b"\r" + b"B" * 20 + b"\r")
    assert harness.next_scan() == "B" * 20


def test_missing_port_is_reported_and_picked_up_when_plugged_in(start, port, tmp_path):
    by_id = tmp_path / "usb-Honeywell_Imaging_1900-if00"
    harness = start(by_id)
    status = harness.wait_for(DeviceState.DISCONNECTED)
    while status.reason == "not started":
        status = harness.wait_for(DeviceState.DISCONNECTED)
    assert status.reason == f"serial port {by_id} not found"

    by_id.symlink_to(port.path)  # what udev does when the scanner is plugged in
    harness.wait_for(DeviceState.CONNECTED)
    port.send(WECHAT.encode() + b"\r")
    assert harness.next_scan() == WECHAT


def test_unplug_then_replug_on_another_tty_carries_on(start, ports, tmp_path):
    first = FakeScannerPort()
    ports.append(first)
    by_id = tmp_path / "usb-Honeywell_Imaging_1900-if00"
    by_id.symlink_to(first.path)
    harness = start(by_id)
    harness.wait_for(DeviceState.CONNECTED)
    first.send(b"6901234567892\r")
    assert harness.next_scan() == "6901234567892"

    first.unplug()
    status = harness.wait_for(DeviceState.DISCONNECTED)
    assert str(by_id) in (status.reason or "")

    second = FakeScannerPort()
    ports.append(second)
    # udev re-points the by-id link at the new tty; replace it atomically as udev does.
    (tmp_path / "new-link").symlink_to(second.path)
    os.replace(tmp_path / "new-link", by_id)
    harness.wait_for(DeviceState.CONNECTED)
    second.send(WECHAT.encode() + b"\r\n")
    assert harness.next_scan() == WECHAT


def _cpu_ticks(thread: threading.Thread) -> int:
    stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15 of proc(5))


def _idle_ticks(harness: Harness, seconds: float = 0.5) -> tuple[int, int]:
    thread = harness.thread()
    before = _cpu_ticks(thread)
    threading.Event().wait(seconds)  # the measuring window, not a wait for something to happen
    return _cpu_ticks(thread) - before, int(seconds * os.sysconf("SC_CLK_TCK"))


def test_an_idle_connected_reader_does_not_spin(connected):
    used, window = _idle_ticks(connected)
    assert used <= window // 10, f"reader used {used} of {window} clock ticks while idle"


def test_an_unplugged_reader_does_not_spin(connected, port):
    port.unplug()
    connected.wait_for(DeviceState.DISCONNECTED)
    used, window = _idle_ticks(connected)
    assert used <= window // 10, f"reader used {used} of {window} clock ticks while unplugged"


def test_stop_returns_promptly_even_with_a_long_read_timeout(start, port):
    harness = start(port.path, read_timeout=30.0)
    harness.wait_for(DeviceState.CONNECTED)
    thread = harness.thread()
    began = time.monotonic()
    harness.scanner.stop()
    assert time.monotonic() - began < 1.0
    assert not thread.is_alive()
    assert harness.scanner.status.state is DeviceState.DISCONNECTED


def test_the_port_is_configured_as_the_url_says(start, port):
    harness = start(port.path, "baudrate=115200&bytesize=7&parity=E&stopbits=2")
    harness.wait_for(DeviceState.CONNECTED)
    fd = os.open(port.path, os.O_RDWR | os.O_NOCTTY)
    try:
        iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    finally:
        os.close(fd)
    assert ispeed == ospeed == termios.B115200
    assert cflag & termios.CSTOPB
    # A pty forces 8 data bits and no parity whatever is asked, so those show in the status only.
    assert "115200 baud 7E2" in (harness.scanner.status.reason or "")


def test_settings_come_from_the_url():
    scanner = SerialScanner.from_url(
        "serial:///dev/serial/by-id/usb-x?baudrate=19200&parity=o&stopbits=1.5&max_line=64", "s", print, print
    )
    assert scanner.path == "/dev/serial/by-id/usb-x"
    assert scanner.settings == SerialSettings(baudrate=19200, bytesize=8, parity="O", stopbits=1.5, max_line=64)
    assert SerialScanner.from_url("serial:///dev/ttyS0", "s", print, print).settings == SerialSettings()


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("baudrate=fast", "baudrate"),
        ("parity=X", "parity"),
        ("bytesize=9", "bytesize"),
        ("stopbits=3", "stopbits"),
        ("max_line=0", "max_line"),
        ("baud=9600", "baud"),
    ],
)
def test_a_bad_url_option_is_refused_by_name(query, named):
    with pytest.raises(UnsupportedDeviceUrl, match=named):
        SerialScanner.from_url(f"serial:///dev/ttyS0?{query}", "s", print, print)
