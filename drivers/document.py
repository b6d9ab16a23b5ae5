"""A printable document: what a receipt is made of, independent of any printer's command set.

The agent lays a receipt out once as a Document (agent/receipts.py); a printer driver renders it to its bytes
(drivers/escpos_printer.py). Text is given as already-laid-out lines for the paper's width in columns, where a
CJK character takes two columns.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal

Align = Literal["left", "center", "right"]

# Chinese printers print East Asian Wide, Fullwidth and Ambiguous characters (“ ” … · ×) in two columns.
_WIDE = frozenset("WFA")


def char_width(ch: str) -> int:
    """Columns one character takes on the paper: 2 for East Asian Wide/Fullwidth/Ambiguous, else 1."""
    return 2 if unicodedata.east_asian_width(ch) in _WIDE else 1


def display_width(text: str) -> int:
    return sum(char_width(ch) for ch in text)


@dataclass(frozen=True)
class Text:
    """One printed line (no newline inside). `double` prints double width and height: half the columns."""

    text: str
    align: Align = "left"
    bold: bool = False
    double: bool = False


@dataclass(frozen=True)
class Rule:
    """A full-width separator line."""

    char: str = "-"


@dataclass(frozen=True)
class Qr:
    payload: str
    size: int = 6  # module size in printer dots (1-16)


@dataclass(frozen=True)
class Barcode:
    """A Code 128 barcode with its text printed under it."""

    data: str
    height: int = 64  # dots


@dataclass(frozen=True)
class Feed:
    lines: int = 1


@dataclass(frozen=True)
class Cut:
    partial: bool = True


@dataclass(frozen=True)
class DrawerKick:
    pin: Literal[2, 5] = 2


Block = Text | Rule | Qr | Barcode | Feed | Cut | DrawerKick


@dataclass(frozen=True)
class Document:
    blocks: tuple[Block, ...]
    columns: int  # characters per line in the normal font: 32 on 58 mm paper, 48 on 80 mm


COLUMNS_BY_PAPER_MM = {58: 32, 80: 48}
