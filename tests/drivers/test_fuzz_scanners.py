"""Fuzzing the scanner byte streams: whatever a scanner (or a noisy cable) sends, the serial line framer and the
HID keystroke decoder never raise, and a well-formed scan between pieces of garbage comes through intact, once.

The serial framer is fuzzed as a pure function and then, for fewer examples, through a real pseudo-terminal
read by the serial driver, exactly as it reads /dev/ttyACM0 (see tests/drivers/test_serial_scanner.py).
"""

from __future__ import annotations

import itertools
import os
import queue

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from drivers.base import Backoff, DeviceState, DeviceStatus, Scan
from drivers.keymaps import (
    EV_KEY,
    EV_MSC,
    EV_SYN,
    KEY_CAPSLOCK,
    KEY_DOWN,
    KEY_ENTER,
    KEY_KPENTER,
    KEY_LEFTSHIFT,
    KEY_RIGHTALT,
    KEY_RIGHTSHIFT,
    KEY_UP,
    KEYPAD,
    LAYOUTS,
    MODIFIERS,
    SYN_DROPPED,
    SYN_REPORT,
    KeystrokeDecoder,
    Layout,
)
from drivers.serial_scanner import LineFramer, SerialScanner

FAST = settings(max_examples=150, deadline=None)
MAX_LINE = 64

# --- serial: the line framer ----------------------------------------------------------------------------

# What a scanner sends as one code: printable text (ASCII and CJK), never a control character or a line end.
scan_text = st.text(
    alphabet=st.one_of(st.characters(min_codepoint=0x21, max_codepoint=0x7E), st.sampled_from("会员码支付 ")),
    min_size=1,
).filter(lambda text: text.strip() and len(text.encode()) <= MAX_LINE)
line_end = st.sampled_from([b"\r", b"\n", b"\r\n"])
# Noise on the wire: any bytes at all, as a whole line of garbage (overlong ones included).
garbage = st.binary(max_size=3 * MAX_LINE)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at these offsets, as successive reads would hand it over."""
    points = sorted({min(cut, len(data)) for cut in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


def frame(chunks: list[bytes]) -> list[str]:
    framer = LineFramer(MAX_LINE)
    return [line for chunk in chunks for line in framer.feed(chunk)]


@FAST
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0, max_value=600), max_size=8))
def test_the_framer_never_raises_and_reads_cut_anywhere_give_the_same_scans(stream: bytes, cuts: list[int]):
    whole = frame([stream])
    assert frame(split(stream, cuts)) == whole
    for line in whole:
        assert line.strip() and "\r" not in line and "\n" not in line
        assert len(line.encode("utf-8")) <= 3 * MAX_LINE  # every bad byte is one U+FFFD (3 bytes)


@FAST
@given(
    garbage,
    line_end,
    scan_text,
    line_end,
    garbage,
    line_end,
    st.lists(st.integers(min_value=0, max_value=800), max_size=6),
)
@example(b"9" * (MAX_LINE + 1), b"\r", "134611987654321098", b"\r\n", b"", b"\n", [MAX_LINE + 1])  # overlong first
@example(b"\xe4\xbc", b"\n", "\u4f1a\u5458", b"\r", b"\xbc", b"\r", [2, 3])  # UTF-8 cut off on either side
def test_a_scan_between_garbage_lines_arrives_intact_once(before, end1, scan, end2, after, end3, cuts):
    stream = before + end1 + scan.encode() + end2 + after + end3
    lines = frame(split(stream, cuts))
    garbage_lines = frame([before + b"\n"]) + frame([after + b"\n"])
    assert lines.count(scan) == 1 + garbage_lines.count(scan)
    assert lines == frame([before + b"\n"]) + [scan] + frame([after + b"\n"])


def test_the_serial_driver_over_a_pty_keeps_every_scan_between_garbage():
    """The same property through the real driver and a pseudo-terminal (fewer examples: real I/O)."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.close(slave)
    scans: queue.Queue[Scan] = queue.Queue()
    statuses: queue.Queue[DeviceStatus] = queue.Queue()
    scanner = SerialScanner.from_url(
        f"serial://{path}?max_line={MAX_LINE}",
        "fuzz",
        scans.put,
        statuses.put,
        read_timeout=0.05,
        backoff=Backoff(first=0.02, cap=0.1),
    )
    scanner.start()
    markers = itertools.count()
    try:
        while statuses.get(timeout=5).state is not DeviceState.CONNECTED:
            pass

        @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(garbage, line_end, scan_text, line_end, garbage)
        @example(b"\x00\xff" * MAX_LINE, b"\r", "134611987654321098", b"\r\n", b"9" * (MAX_LINE + 1))  # overlong lines
        def one_stream(before, end1, scan, end2, after):
            marker = f"END{next(markers)}"  # the reader is in step with this example once it arrives
            data = memoryview(before + end1 + scan.encode() + end2 + after + b"\r\n" + marker.encode() + b"\n")
            while data:
                data = data[os.write(master, data) :]
            received = []
            while (text := scans.get(timeout=5).text) != marker:
                received.append(text)
            assert received == frame([before + b"\n"]) + [scan] + frame([after + b"\n"])

        one_stream()
        assert scanner.status.state is DeviceState.CONNECTED
    finally:
        scanner.stop()
        os.close(master)


# --- HID: the keystroke decoder -------------------------------------------------------------------------


def keystrokes(layout: Layout) -> dict[str, list[tuple[int, ...]]]:
    """Every character the layout types without a dead key -> the ways to type it: (key, modifiers held...)."""
    ways: dict[str, list[tuple[int, ...]]] = {}
    for code, (plain, shifted, third) in layout.keys.items():
        for char, mods in (
            (plain, ()),
            (shifted, (KEY_LEFTSHIFT,)),
            (shifted, (KEY_RIGHTSHIFT,)),
            (third, (KEY_RIGHTALT,)),
        ):
            if char and char not in layout.dead and (mods != (KEY_RIGHTALT,) or layout.altgr):
                ways.setdefault(char, []).append((code, *mods))
    for code, char in KEYPAD.items():
        ways.setdefault(char, []).append((code,))
    return ways


WAYS = {name: keystrokes(layout) for name, layout in LAYOUTS.items()}


def press(key: int, *mods: int) -> list[tuple[int, int, int]]:
    """One key as a scanner presses it: modifiers down, key down, key up, modifiers up, each reported."""
    events = []
    for code, value in [
        *((m, KEY_DOWN) for m in mods),
        (key, KEY_DOWN),
        (key, KEY_UP),
        *((m, KEY_UP) for m in reversed(mods)),
    ]:
        events += [(EV_MSC, 4, 0x70000 + code), (EV_KEY, code, value), (EV_SYN, SYN_REPORT, 0)]
    return events


@st.composite
def typed_scan(draw, layout: str) -> tuple[str, list[tuple[int, int, int]]]:
    """A code and the events a scanner set to this layout sends for it, Enter (main or keypad) included."""
    ways = WAYS[layout]
    text = draw(st.text(alphabet=st.sampled_from(sorted(ways)), min_size=1, max_size=40).filter(str.strip))
    events = []
    for char in text:
        events += press(*draw(st.sampled_from(ways[char])))
    return text, events + press(draw(st.sampled_from([KEY_ENTER, KEY_KPENTER])))


# Noise from a keyboard interface: any event type, key code and value, except turning CapsLock on (a state a
# person would see on the scanner's LED and that changes the letters of every later code, by design).
event = st.tuples(
    st.sampled_from([EV_SYN, EV_KEY, EV_MSC, 2, 3, 17, 0x1F]) | st.integers(min_value=-(2**31), max_value=2**31),
    st.sampled_from(sorted(MODIFIERS | {KEY_ENTER, KEY_KPENTER, SYN_DROPPED, SYN_REPORT}))
    | st.integers(min_value=-1, max_value=800),
    st.integers(min_value=-1, max_value=3) | st.integers(),
).filter(lambda e: not (e[0] == EV_KEY and e[1] == KEY_CAPSLOCK))
noise = st.lists(event, max_size=60)


@FAST
@given(st.sampled_from(sorted(LAYOUTS)), st.lists(st.tuples(st.integers(), st.integers(), st.integers()), max_size=80))
def test_the_decoder_never_raises_on_any_events(layout: str, events: list[tuple[int, int, int]]):
    decoder = KeystrokeDecoder(layout, max_length=32)
    for code in decoder.decode(events):
        assert code and len(code) <= 32


@FAST
@given(st.data(), st.sampled_from(sorted(LAYOUTS)), noise, noise)
def test_a_typed_scan_between_garbage_events_is_decoded_exactly(data, layout: str, before, after):
    text, events = data.draw(typed_scan(layout))
    decoder = KeystrokeDecoder(layout)
    list(decoder.decode(before))
    # A person's keyboard or the scanner lets go of every key, and the garbage's line ends, before the code.
    let_go = [(EV_KEY, key, KEY_UP) for key in sorted(MODIFIERS)] + press(KEY_ENTER)
    list(decoder.decode(let_go))
    assert list(decoder.decode(events)) == [text]
    list(decoder.decode(after))
    # ...and the decoder is ready for the next code whatever the garbage after it left behind.
    list(decoder.decode([(EV_SYN, SYN_DROPPED, 0), *let_go]))
    assert list(decoder.decode(events)) == [text]
