"""Keyboard layouts and the keystroke decoder for keyboard-wedge (HID) scanners.

A wedge scanner does not send text: it presses keys, choosing them for the keyboard layout it was configured
for. On a US layout `$` arrives as Shift+4; on a German one `z` arrives as the key a US keyboard labels Y.
The decoder turns Linux input events `(type, code, value)` back into the codes the scanner read.

Pure Python with the kernel's numeric codes (linux/input-event-codes.h, the values in evdev's `ecodes`), so it
runs and is tested without python-evdev installed.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Event types and codes from linux/input-event-codes.h.
EV_SYN, EV_KEY, EV_MSC = 0, 1, 4
SYN_REPORT, SYN_DROPPED = 0, 3
KEY_UP, KEY_DOWN, KEY_REPEAT = 0, 1, 2

KEY_ESC = 1
KEY_1, KEY_2, KEY_3, KEY_4, KEY_5, KEY_6, KEY_7, KEY_8, KEY_9, KEY_0 = range(2, 12)
KEY_MINUS, KEY_EQUAL, KEY_BACKSPACE, KEY_TAB = 12, 13, 14, 15
KEY_Q, KEY_W, KEY_E, KEY_R, KEY_T, KEY_Y, KEY_U, KEY_I, KEY_O, KEY_P = range(16, 26)
KEY_LEFTBRACE, KEY_RIGHTBRACE, KEY_ENTER, KEY_LEFTCTRL = 26, 27, 28, 29
KEY_A, KEY_S, KEY_D, KEY_F, KEY_G, KEY_H, KEY_J, KEY_K, KEY_L = range(30, 39)
KEY_SEMICOLON, KEY_APOSTROPHE, KEY_GRAVE, KEY_LEFTSHIFT, KEY_BACKSLASH = 39, 40, 41, 42, 43
KEY_Z, KEY_X, KEY_C, KEY_V, KEY_B, KEY_N, KEY_M = range(44, 51)
KEY_COMMA, KEY_DOT, KEY_SLASH, KEY_RIGHTSHIFT = 51, 52, 53, 54
KEY_KPASTERISK, KEY_LEFTALT, KEY_SPACE, KEY_CAPSLOCK = 55, 56, 57, 58
KEY_F1 = 59
KEY_NUMLOCK = 69
KEY_KP7, KEY_KP8, KEY_KP9, KEY_KPMINUS = 71, 72, 73, 74
KEY_KP4, KEY_KP5, KEY_KP6, KEY_KPPLUS = 75, 76, 77, 78
KEY_KP1, KEY_KP2, KEY_KP3, KEY_KP0, KEY_KPDOT = 79, 80, 81, 82, 83
KEY_102ND = 86  # the ISO key between left Shift and Z (`<` on a German keyboard)
KEY_KPENTER, KEY_RIGHTCTRL, KEY_KPSLASH = 96, 97, 98
KEY_RIGHTALT = 100  # AltGr on European layouts
KEY_LEFTMETA, KEY_RIGHTMETA = 125, 126

SHIFTS = frozenset({KEY_LEFTSHIFT, KEY_RIGHTSHIFT})
# Keys held for a shortcut, never for text: a character typed with one of them held is not part of a code.
SHORTCUT_MODIFIERS = frozenset({KEY_LEFTCTRL, KEY_RIGHTCTRL, KEY_LEFTALT, KEY_LEFTMETA, KEY_RIGHTMETA})
MODIFIERS = SHIFTS | SHORTCUT_MODIFIERS | {KEY_RIGHTALT}
ENTERS = frozenset({KEY_ENTER, KEY_KPENTER})

# Keypad keys type the same on every layout except the decimal key. NumLock is taken as on: scanners that use
# the keypad send digits, and the device is grabbed, so the host's NumLock state never reaches it anyway.
KEYPAD: Mapping[int, str] = {
    KEY_KP0: "0",
    KEY_KP1: "1",
    KEY_KP2: "2",
    KEY_KP3: "3",
    KEY_KP4: "4",
    KEY_KP5: "5",
    KEY_KP6: "6",
    KEY_KP7: "7",
    KEY_KP8: "8",
    KEY_KP9: "9",
    KEY_KPMINUS: "-",
    KEY_KPPLUS: "+",
    KEY_KPASTERISK: "*",
    KEY_KPSLASH: "/",
}

# Spacing accent typed by a dead key -> the combining mark it puts on the next letter.
COMBINING = {"^": "\u0302", "´": "\u0301", "`": "\u0300"}


@dataclass(frozen=True)
class Layout:
    """One keyboard layout: key code -> (plain, with Shift, with AltGr); "" where the key types nothing."""

    name: str
    keys: Mapping[int, tuple[str, str, str]]
    keypad_decimal: str = "."
    dead: frozenset[str] = frozenset()  # characters whose key is a dead key: it waits for the next key
    altgr: bool = False  # whether right Alt is AltGr (a third level) or just Alt

    def char(self, code: int, shift: bool, caps: bool, altgr: bool) -> str:
        if code in KEYPAD:
            return KEYPAD[code]
        if code == KEY_KPDOT:
            return self.keypad_decimal
        entry = self.keys.get(code)
        if entry is None:
            return ""
        plain, shifted, third = entry
        if altgr:
            return third
        # CapsLock shifts letters only (and Shift undoes it), as on every desktop.
        if caps and plain.isalpha() and shifted == plain.upper():
            shift = not shift
        return shifted if shift else plain


def _letters(row: str, codes: Iterable[int]) -> dict[int, tuple[str, str, str]]:
    return {code: (ch, ch.upper(), "") for ch, code in zip(row, codes, strict=True)}


_US_LETTERS = {
    **_letters("qwertyuiop", range(KEY_Q, KEY_P + 1)),
    **_letters("asdfghjkl", range(KEY_A, KEY_L + 1)),
    **_letters("zxcvbnm", range(KEY_Z, KEY_M + 1)),
}
_DIGIT_KEYS = (KEY_1, KEY_2, KEY_3, KEY_4, KEY_5, KEY_6, KEY_7, KEY_8, KEY_9, KEY_0)

US = Layout(
    name="us",
    keys={
        **_US_LETTERS,
        **{code: (d, s, "") for code, d, s in zip(_DIGIT_KEYS, "1234567890", "!@#$%^&*()", strict=True)},
        KEY_MINUS: ("-", "_", ""),
        KEY_EQUAL: ("=", "+", ""),
        KEY_LEFTBRACE: ("[", "{", ""),
        KEY_RIGHTBRACE: ("]", "}", ""),
        KEY_SEMICOLON: (";", ":", ""),
        KEY_APOSTROPHE: ("'", '"', ""),
        KEY_GRAVE: ("`", "~", ""),
        KEY_BACKSLASH: ("\\", "|", ""),
        KEY_COMMA: (",", "<", ""),
        KEY_DOT: (".", ">", ""),
        KEY_SLASH: ("/", "?", ""),
        KEY_SPACE: (" ", " ", ""),
    },
)

# German QWERTZ (DIN 2137 T1, as Windows and X11 "de" agree): Y and Z swapped, umlauts where US has ; ' [,
# Shift+digits give ! " § $ % & / ( ) =, AltGr gives @ € { [ ] } \ ~ | µ ² ³. ^ ´ ` are dead keys.
# The keypad's decimal key types a comma.
DE = Layout(
    name="de",
    keys={
        **_letters("qwertzuiop", range(KEY_Q, KEY_P + 1)),
        **_letters("asdfghjkl", range(KEY_A, KEY_L + 1)),
        **_letters("yxcvbnm", range(KEY_Z, KEY_M + 1)),
        KEY_Q: ("q", "Q", "@"),
        KEY_E: ("e", "E", "€"),
        KEY_M: ("m", "M", "µ"),
        KEY_1: ("1", "!", ""),
        KEY_2: ("2", '"', "²"),
        KEY_3: ("3", "§", "³"),
        KEY_4: ("4", "$", ""),
        KEY_5: ("5", "%", ""),
        KEY_6: ("6", "&", ""),
        KEY_7: ("7", "/", "{"),
        KEY_8: ("8", "(", "["),
        KEY_9: ("9", ")", "]"),
        KEY_0: ("0", "=", "}"),
        KEY_MINUS: ("ß", "?", "\\"),
        KEY_EQUAL: ("´", "`", ""),
        KEY_GRAVE: ("^", "°", ""),
        KEY_LEFTBRACE: ("ü", "Ü", ""),
        KEY_RIGHTBRACE: ("+", "*", "~"),
        KEY_SEMICOLON: ("ö", "Ö", ""),
        KEY_APOSTROPHE: ("ä", "Ä", ""),
        KEY_BACKSLASH: ("#", "'", ""),  # the ISO key left of Enter
        KEY_102ND: ("<", ">", "|"),
        KEY_COMMA: (",", ";", ""),
        KEY_DOT: (".", ":", ""),
        KEY_SLASH: ("-", "_", ""),
        KEY_SPACE: (" ", " ", ""),
    },
    keypad_decimal=",",
    dead=frozenset({"^", "´", "`"}),
    altgr=True,
)

LAYOUTS: Mapping[str, Layout] = {layout.name: layout for layout in (US, DE)}


def layout_named(name: str) -> Layout:
    try:
        return LAYOUTS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown keyboard layout {name!r}; use one of {', '.join(LAYOUTS)}") from None


class KeystrokeDecoder:
    """Turns key events into completed codes, one per Enter.

    Acts on key-down only; autorepeat and key-up are ignored except to track Shift, AltGr and the shortcut
    modifiers. Events of other types (SYN_REPORT, MSC_SCAN, LED) are skipped. A code longer than `max_length`
    is dropped with one warning and the decoder resyncs at the next Enter, so later codes are not lost.
    """

    def __init__(self, layout: str | Layout = "us", max_length: int = 512, device_id: str = ""):
        self.layout = layout if isinstance(layout, Layout) else layout_named(layout)
        self.max_length = max_length
        self.device_id = device_id
        self._chars: list[str] = []
        self._length = 0
        self._held: set[int] = set()
        self._caps = False
        self._dead = ""  # a dead key's accent waiting for the next character
        self._discarding = False

    def reset(self) -> None:
        """Forget everything: a reconnected device starts with no key held and CapsLock off."""
        self._chars.clear()
        self._length = 0
        self._held.clear()
        self._caps = False
        self._dead = ""
        self._discarding = False

    def decode(self, events: Iterable[tuple[int, int, int]]) -> Iterator[str]:
        for event_type, code, value in events:
            completed = self.feed(event_type, code, value)
            if completed is not None:
                yield completed

    def feed(self, event_type: int, code: int, value: int) -> str | None:
        """One event; returns the code it completes, if any."""
        if event_type == EV_SYN and code == SYN_DROPPED:
            # The kernel's buffer overflowed: keys were lost, so the code being typed is wrong. Never emit it.
            self._drop("input events were dropped by the kernel; scan again")
            self._held.clear()
            return None
        if event_type != EV_KEY:
            return None
        if code in MODIFIERS:
            if value == KEY_DOWN:
                self._held.add(code)
            elif value == KEY_UP:
                self._held.discard(code)
            return None
        if value != KEY_DOWN:
            return None
        if code == KEY_CAPSLOCK:
            self._caps = not self._caps
            return None
        if code in ENTERS:
            return self._end()
        self._type(code)
        return None

    def _type(self, code: int) -> None:
        altgr = self.layout.altgr and KEY_RIGHTALT in self._held
        shortcut = not self.layout.altgr and KEY_RIGHTALT in self._held
        if shortcut or self._held & SHORTCUT_MODIFIERS:
            log.debug("key %d with Ctrl/Alt held ignored", code, extra={"device": self.device_id})
            return
        char = self.layout.char(code, shift=bool(self._held & SHIFTS), caps=self._caps, altgr=altgr)
        if not char:
            log.debug("key %d types nothing on layout %s", code, self.layout.name, extra={"device": self.device_id})
            return
        if char in self.layout.dead:
            # A second dead key types the first accent on its own, as desktop layouts do.
            self._append(self._dead)
            self._dead = char
            return
        if self._dead:
            char = _compose(self._dead, char)
            self._dead = ""
        self._append(char)

    def _append(self, text: str) -> None:
        if self._discarding or not text:
            return
        self._chars.append(text)
        self._length += len(text)
        if self._length > self.max_length:
            self._drop(f"scanner code longer than {self.max_length} characters dropped; resyncing at the next Enter")

    def _drop(self, why: str) -> None:
        if not self._discarding:
            log.warning(why, extra={"device": self.device_id})
        self._chars.clear()
        self._length = 0
        self._dead = ""
        self._discarding = True

    def _end(self) -> str | None:
        if self._discarding:
            self._discarding = False
            return None
        self._append(self._dead)
        self._dead = ""
        code = "".join(self._chars)
        self._chars.clear()
        self._length = 0
        return code or None


def _compose(accent: str, char: str) -> str:
    """A dead accent then Space types the accent; then a letter it can sit on, the accented letter (^ a -> â)."""
    if char == " ":
        return accent
    composed = unicodedata.normalize("NFC", char + COMBINING[accent])
    return composed if len(composed) == 1 else accent + char
