"""ESC/POS receipt printers: a Document rendered once to bytes, and thin connections that send a job's bytes.

Rendering builds the job on python-escpos 3.1's `Dummy` printer with its commands, and works around what 3.1
gets wrong for Chinese (docs/ARCHITECTURE.md, "Choices, and what the field taught"):

- Text with non-ASCII characters goes out as raw bytes: double-byte characters inside FS & ... FS . (the printer's
  Chinese mode) in the profile's codec (GB18030, GBK or Big5); narrow non-ASCII such as ¥ as one byte of code
  page 437 outside it. 3.1's magic encoder sends GB18030 without FS & and turns fullwidth punctuation into `?`.
  Which characters are double-byte follows the column rule of drivers/document.py (`char_width`), so a line laid out
  to N columns prints in N columns. A character the codec cannot encode prints as a visible `?`/`？`.
- Double size is GS ! (it applies to Chinese characters too; ESC ! does not on most Chinese printers).
- `text_encoding="raster"` is for printers without a Chinese font: text lines are drawn with a CJK TrueType font
  and printed as GS v 0 raster images (slow but universal, as Odoo does).
- Code 128 goes out with its code sets chosen ({B text, {C digit pairs}) at the widest module that fits the paper;
  an id too long for any Code 128 that fits (a 36-character UUID needs ~430 modules, more than 384 or 576 dots at
  the 2-dot minimum) prints as a QR code of the same text, which the till's 2D scanner reads the same way.

Connections only open, write, read status and close; one job is open, write all, close, because network printers
often take one connection at a time. Every write has a deadline (3.1 has none on USB or serial). Status comes from
DLE EOT real-time queries, and no answer means unknown, never "fine".

Resending: a job that fails midway raises DeviceUnavailable/DeviceTimeout and the print queue later sends the whole
job again. On our side the failed job is cut off for good (the TCP connection is closed with a reset, the serial
output queue is flushed) so it cannot trickle out later. The assumption, which holds for the network and USB
receipt printers in the field: a printer discards a partial job when its connection drops or it restarts, so the
resend prints one complete copy. Every job starts with ESC @ (reset print modes), but nothing can save a printer
that kept waiting for the rest of a half-received image: on such a model the resend's first line may be garbled.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import io
import logging
import os
import select
import shutil
import socket
import struct
import subprocess
import termios
import time
import unicodedata
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Self

import barcode
import qrcode
from escpos.capabilities import get_profile
from escpos.constants import QR_ECLEVEL_M
from escpos.printer import Dummy
from PIL import Image, ImageDraw, ImageFont

from drivers.base import DeviceError, DeviceTimeout, DeviceUnavailable, PaperOut
from drivers.document import Align, Barcode, Cut, Document, DrawerKick, Feed, Qr, Rule, Text, char_width
from drivers.urls import DeviceUrl

log = logging.getLogger(__name__)

TextEncoding = Literal["gb18030", "gbk", "big5", "raster"]
Paper = Literal["ok", "low", "out"]

ESC = b"\x1b"
FS_CHINESE_ON = b"\x1c&"  # FS &: double-byte (Chinese) character mode
FS_CHINESE_OFF = b"\x1c."  # FS .: back to single-byte characters
DLE_EOT = b"\x10\x04"
STATUS_PRINTER = DLE_EOT + b"\x01"
STATUS_PAPER = DLE_EOT + b"\x04"
SINGLE_BYTE_CODEPAGE = "CP437"  # where ¥ and other narrow non-ASCII come from (byte 0x9D is ¥)

_QUIET_MODULES = 10  # Code 128 needs 10 blank modules on each side to scan
_CJK_FONT_PATHS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)


# --- profile -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrinterProfile:
    """How one printer model wants its bytes; from the printer's settings."""

    escpos_profile: str = "default"  # a python-escpos capabilities profile name, e.g. "TM-T88V", "POS-5890"
    text_encoding: TextEncoding = "gb18030"
    native_qr: bool = True  # False: QR codes go out as images (printers without GS ( k)
    dots_per_line: int = 576  # 384 on 58 mm paper, 576 on 80 mm
    cut: bool = True

    def __post_init__(self) -> None:
        if self.text_encoding not in ("gb18030", "gbk", "big5", "raster"):
            raise ValueError(f"printer text_encoding must be gb18030, gbk, big5 or raster, not {self.text_encoding!r}")
        if self.dots_per_line < 96:
            raise ValueError(
                f"printer dots_per_line {self.dots_per_line} is too small: 384 on 58 mm paper, 576 on 80 mm"
            )
        try:
            get_profile(self.escpos_profile)
        except KeyError:
            raise ValueError(
                f"unknown python-escpos printer profile {self.escpos_profile!r}: use 'default' or a model name such as "
                "TM-T88V, TM-T20II, POS-5890, ZJ-5870 (see `python-escpos` capabilities)"
            ) from None

    @classmethod
    def for_paper(cls, paper_width_mm: int, **fields: Any) -> PrinterProfile:
        fields.setdefault("dots_per_line", 384 if paper_width_mm < 70 else 576)
        return cls(**fields)


def _escpos_profile(profile: PrinterProfile) -> tuple[Any, int]:
    """python-escpos's profile with the paper width filled in, as a private copy, and the usable width in dots.

    The library keeps one shared dict per model and writes into it (`_dpi`); a copy keeps renders independent.
    """
    escpos = get_profile(profile.escpos_profile)
    data = copy.deepcopy(escpos.profile_data)
    media = data.setdefault("media", {})
    width = media.setdefault("width", {})
    try:
        dots = min(profile.dots_per_line, int(width.get("pixels")))
    except (TypeError, ValueError):  # "Unknown" in the generic profiles
        dots = profile.dots_per_line
    width["pixels"] = dots
    try:
        int(media.get("dpi"))
    except (TypeError, ValueError):
        media["dpi"] = 203  # nearly every 58/80 mm thermal printer; sizes software barcodes in whole dots
    escpos.profile_data = data
    return escpos, dots


# --- text --------------------------------------------------------------------------------------------------------


def encode_text(text: str, codec: str, single_byte: str | None = "cp437") -> bytes:
    """One line of text as ESC/POS bytes: ASCII as is, double-byte characters in Chinese mode, narrow others in `single_byte`.

    Never raises for content: a character the codec cannot encode becomes `？` (two columns) or `?` (one).
    """
    out = bytearray()
    chinese = False
    for ch in text:
        if " " <= ch < "\x7f":
            out += ch.encode("ascii")  # the same byte in both modes
            continue
        if char_width(ch) == 2:
            data = _encode_wide(ch, codec)
            if not chinese:
                out += FS_CHINESE_ON
                chinese = True
            out += data
            continue
        data = b"?"
        if single_byte and not unicodedata.category(ch).startswith("C"):
            with contextlib.suppress(UnicodeEncodeError):
                data = ch.encode(single_byte)
        if data[0] >= 0x80 and chinese:
            out += FS_CHINESE_OFF
            chinese = False
        out += data
    if chinese:
        out += FS_CHINESE_OFF
    return bytes(out)


def _encode_wide(ch: str, codec: str) -> bytes:
    # Printer fonts stop at the Basic Multilingual Plane: emoji and rarer ideographs would print as garbage.
    if ord(ch) <= 0xFFFF:
        with contextlib.suppress(UnicodeEncodeError):
            return ch.encode(codec)
    try:
        return "？".encode(codec)
    except UnicodeEncodeError:
        return b"??"


def find_cjk_font() -> str:
    """Path of a TrueType font with Chinese glyphs, for raster text and previews."""
    return _find_cjk_font()


@lru_cache(maxsize=1)
def _find_cjk_font() -> str:
    for path in _CJK_FONT_PATHS:
        if os.path.exists(path):
            return path
    fc_list = shutil.which("fc-list")
    if fc_list:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found = subprocess.run(
                [fc_list, ":lang=zh-cn", "file"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
            for line in found.splitlines():
                path = line.split(":")[0].strip()
                if path and os.path.exists(path):
                    return path
    raise DeviceError(
        "no Chinese font to print text as images (text_encoding = raster): install fonts-wqy-microhei "
        "(apt-get install fonts-wqy-microhei)"
    )


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(find_cjk_font(), size)


def raster_text_line(
    text: str, width_dots: int, columns: int, align: Align = "left", bold: bool = False, double: bool = False
) -> Image.Image:
    """One printed line drawn as a 1-bit image (black = 1 in ESC/POS terms, black pixels here) on the column grid.

    Each character sits in its own cell (one column, or two for a wide one) so columns line up as on a printer's
    built-in font; double size doubles the cells and the line height.
    """
    scale = 2 if double else 1
    cell = max(6, width_dots // max(1, columns)) * scale
    size = 2 * cell  # a CJK glyph is one em wide and fills two columns
    line_height = size + size // 4  # the usual 30-dot line pitch for a 24-dot font
    font = _font(size)
    ascent, descent = font.getmetrics()
    baseline = (line_height - (ascent + descent)) // 2 + ascent
    cells = [2 if char_width(ch) == 2 else 1 for ch in text]
    used = sum(cells) * cell
    x = {"left": 0, "center": (width_dots - used) // 2, "right": width_dots - used}[align]
    image = Image.new("L", (width_dots, line_height), 255)
    draw = ImageDraw.Draw(image)
    for ch, n in zip(text, cells, strict=True):
        if ch != " ":
            left = x + (n * cell - font.getlength(ch)) / 2
            draw.text((left, baseline), ch, font=font, fill=0, anchor="ls")
            if bold:  # emphasised as printers do it: strike again one dot to the right
                draw.text((left + 1, baseline), ch, font=font, fill=0, anchor="ls")
        x += n * cell
    return image.point(lambda v: 0 if v < 140 else 255).convert("1")


# --- Code 128 ----------------------------------------------------------------------------------------------------


def code128_escpos(data: str) -> tuple[str, int]:
    """`data` as ESC/POS Code 128 (GS k 73) content with code-set prefixes, and its width in modules.

    Set C packs digit pairs into one symbol (a byte 0-99), set B takes printable ASCII; a `{` in set B is `{{`.
    """
    if not data or any(not (" " <= ch <= "~") for ch in data):
        raise ValueError(f"Code 128 here takes printable ASCII only, not {data!r}")
    out: list[str] = []
    symbols = 0  # data and code-switch symbols, not counting start, check and stop
    current: str | None = None
    i = 0
    while i < len(data):
        run = 0
        while i + run < len(data) and data[i + run].isdigit():
            run += 1
        at_end = i + run == len(data)
        if current != "C" and (run >= 6 or (run >= 4 and (at_end or current is None))):
            if run % 2:  # an odd run: its first digit goes in set B
                if current != "B":
                    out.append("{B")
                    symbols += current is not None
                    current = "B"
                out.append(data[i])
                symbols += 1
                i += 1
                run -= 1
            out.append("{C")
            symbols += current is not None
            current = "C"
            for k in range(i, i + run, 2):
                out.append(chr(int(data[k : k + 2])))
                symbols += 1
            i += run
            continue
        if current != "B":
            out.append("{B")
            symbols += current is not None
            current = "B"
        out.append("{{" if data[i] == "{" else data[i])
        symbols += 1
        i += 1
    modules = 11 * (1 + symbols + 1) + 13 + 2 * _QUIET_MODULES
    return "".join(out), modules


def code128_image(data: str, module: int, height: int, hri: bool = True) -> Image.Image:
    """Code 128 drawn in whole dots (mode "1", black bars): `module` dots per module, quiet zones included.

    python-escpos 3.1's software barcodes size modules in millimetres and round each bar on its own, which leaves
    bars of uneven width that scanners reject; whole dots per module scan.
    """
    modules = barcode.get("code128", data).build()[0]  # "1101001110..." with python-barcode's code-set choice
    quiet = _QUIET_MODULES * module
    width = len(modules) * module + 2 * quiet
    bars = Image.new("1", (width, height), 1)
    draw = ImageDraw.Draw(bars)
    for i, bit in enumerate(modules):
        if bit == "1":
            x = quiet + i * module
            draw.rectangle((x, 0, x + module - 1, height - 1), fill=0)
    if not hri:
        return bars
    text_width = max(width, len(data) * 12)
    text = raster_text_line(data, text_width, text_width // 12, "center")
    image = Image.new("1", (text_width, height + 4 + text.height), 1)
    image.paste(bars, ((text_width - width) // 2, 0))
    image.paste(text, (0, height + 4))
    return image


# --- rendering ---------------------------------------------------------------------------------------------------


def render(document: Document, profile: PrinterProfile) -> bytes:
    """The whole document as one print job's bytes."""
    escpos, dots = _escpos_profile(profile)
    printer = Dummy(profile=profile.escpos_profile)
    printer.profile = escpos  # the copy with the paper width; Dummy(profile=) only takes a name or a custom Profile
    # python-escpos announces its renderer choices with print(); keep stdout for the program's own output.
    with contextlib.redirect_stdout(io.StringIO()):
        _Renderer(printer, profile, escpos, dots, document.columns).run(document.blocks)
    return printer.output


class _Renderer:
    def __init__(self, printer: Dummy, profile: PrinterProfile, escpos: Any, dots: int, columns: int):
        self.p = printer
        self.profile = profile
        self.escpos = escpos
        self.dots = dots
        self.columns = columns
        self.single_byte: str | None = None
        self.pending_lines: list[Image.Image] = []

    def run(self, blocks: tuple[Any, ...]) -> None:
        p = self.p
        p.hw("INIT")  # ESC @: every job starts from the printer's default modes
        p._raw(FS_CHINESE_OFF)  # Chinese printers often power up in Chinese mode
        if SINGLE_BYTE_CODEPAGE in self.escpos.get_code_pages():
            p.magic.force_encoding(SINGLE_BYTE_CODEPAGE)  # ESC t n, and the library will not switch away from it
            self.single_byte = SINGLE_BYTE_CODEPAGE.lower()
        for block in blocks:
            if isinstance(block, (Text, Rule)):
                self.text(block if isinstance(block, Text) else self._rule_text(block))
                continue
            self.flush_raster()
            if isinstance(block, Qr):
                self.qr(block.payload, block.size)
            elif isinstance(block, Barcode):
                self.barcode(block)
            elif isinstance(block, Feed):
                p.print_and_feed(max(1, min(block.lines, 255)))
            elif isinstance(block, Cut):
                if self.profile.cut:
                    p.cut(mode="PART" if block.partial else "FULL")  # feeds the last line past the cutter first
                else:
                    p.print_and_feed(6)
            elif isinstance(block, DrawerKick):
                p.cashdraw(block.pin)
            else:
                raise TypeError(f"cannot print a {type(block).__name__} block")
        self.flush_raster()

    def _rule_text(self, rule: Rule) -> Text:
        char = rule.char or "-"
        return Text(char * (self.columns // char_width(char)))

    def text(self, block: Text) -> None:
        if self.profile.text_encoding == "raster":
            self.pending_lines.append(
                raster_text_line(block.text, self.dots, self.columns, block.align, block.bold, block.double)
            )
            return
        size = 2 if block.double else 1
        self.p.set(align=block.align, bold=block.bold, custom_size=True, width=size, height=size)
        self.p._raw(encode_text(block.text, self.profile.text_encoding, self.single_byte) + b"\n")

    def flush_raster(self) -> None:
        # Consecutive lines go out as one image: fewer commands, no pauses (banding) between lines.
        if not self.pending_lines:
            return
        height = sum(line.height for line in self.pending_lines)
        image = Image.new("1", (self.dots, height), 1)
        y = 0
        for line in self.pending_lines:
            image.paste(line, (0, y))
            y += line.height
        self.pending_lines = []
        self.p.set(align="left")
        self.p.image(image)

    def qr(self, payload: str, size: int) -> None:
        code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=1)
        code.add_data(payload)
        # Only the size is needed here: best_fit picks the version without drawing the 8 mask patterns (make does).
        modules = code.best_fit() * 4 + 17
        # Shrink the modules rather than let the printer drop a QR code wider than the paper.
        size = max(1, min(size, 16, self.dots // (modules + 8)))
        native = self.profile.native_qr and bool(self.escpos.supports("qrCode"))
        self.p.set(align="center", bold=False, custom_size=True, width=1, height=1)
        if native:
            self.p.qr(payload, ec=QR_ECLEVEL_M, size=size, native=True)
            self.p._raw(b"\n")
        else:
            self.p.qr(payload, ec=QR_ECLEVEL_M, size=size, native=False, center=True)
        self.p.set(align="left")

    def barcode(self, block: Barcode) -> None:
        content, modules = code128_escpos(block.data)
        width = next((w for w in (3, 2) if modules * w <= self.dots), None)
        height = max(1, min(block.height, 255))
        if width is None:
            # Too long for a scannable Code 128 on this paper: the same text as a QR code, with the text under it.
            self.qr(block.data, 4)
            for start in range(0, len(block.data), self.columns):
                self.text(Text(block.data[start : start + self.columns], "center"))
            return
        self.p.set(align="center", bold=False, custom_size=True, width=1, height=1)
        if self.escpos.supports("barcodeB"):
            self.p.barcode(
                content, "CODE128", height=height, width=width, pos="BELOW", font="A", align_ct=True, function_type="B"
            )
            self.p._raw(b"\n")
        else:  # no hardware Code 128 on this model: print it as an image, one module = `width` dots
            image = code128_image(block.data, width, height)
            if image.width > self.dots:
                image = code128_image(block.data, width, height, hri=False)
            self.p.image(image, center=True)
        self.p.set(align="left")


# --- status ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrinterStatus:
    """What the printer said about itself; None where it did not answer (unknown is never "fine")."""

    online: bool | None
    paper: Paper | None


UNKNOWN = PrinterStatus(None, None)


def _is_status_byte(value: int) -> bool:
    # Every DLE EOT answer has bits 1 and 4 set and bits 0 and 7 clear; anything else is not an answer.
    return value & 0x93 == 0x12


def parse_printer_status(value: int) -> bool | None:
    """DLE EOT 1 answer -> online?"""
    return not value & 0x08 if _is_status_byte(value) else None


def parse_paper_status(value: int) -> Paper | None:
    """DLE EOT 4 answer -> paper: bits 5-6 paper end, bits 2-3 near end."""
    if not _is_status_byte(value):
        return None
    if value & 0x60:
        return "out"
    if value & 0x0C:
        return "low"
    return "ok"


# --- connections -------------------------------------------------------------------------------------------------


class PrinterConnection(ABC):
    """Open, write, read status, close. Errors are DeviceError subclasses naming the printer's URL."""

    def __init__(
        self, url: DeviceUrl, *, write_timeout: float = 10.0, status_timeout: float = 1.0, connect_timeout: float = 3.0
    ):
        self.url = url
        self.write_timeout = write_timeout  # longest time the printer may take no data before the job fails
        self.status_timeout = status_timeout  # wait for each DLE EOT answer
        self.connect_timeout = connect_timeout
        self._abort = False

    @classmethod
    def from_url(cls, url: DeviceUrl, **options: Any) -> Self:
        return cls(url, **options)

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send every byte, or raise: DeviceTimeout when the printer takes nothing for `write_timeout`."""

    @abstractmethod
    def close(self) -> None: ...

    def _ask(self, query: bytes, timeout: float) -> int | None:
        """Send a real-time query and return the first byte of the answer; None for no answer. Open connection only."""
        return None

    def status(self, timeout: float | None = None) -> PrinterStatus:
        wait = self.status_timeout if timeout is None else timeout
        printer = self._ask(STATUS_PRINTER, wait)
        if printer is None:
            return UNKNOWN  # one silence is enough: do not wait a second time for the paper
        paper = self._ask(STATUS_PAPER, wait)
        return PrinterStatus(parse_printer_status(printer), parse_paper_status(paper) if paper is not None else None)

    def __enter__(self) -> Self:
        self._abort = False
        self.open()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._abort = True  # drop what is queued rather than let a partial job trickle out later
        self.close()

    def _name(self) -> str:
        return f"printer {self.url.text}"

    def _timed_out(self, sent: int, total: int) -> DeviceTimeout:
        self._abort = True
        return DeviceTimeout(
            f"{self._name()} took no data for {self.write_timeout:g} s after {sent} of {total} bytes: check paper, "
            "cover and for a jam; the whole receipt is sent again when it is ready"
        )

    def _dropped(self, sent: int | None, total: int, exc: BaseException) -> DeviceUnavailable:
        self._abort = True
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        if not total:
            when = "when asked for its status"
        elif sent is None:
            when = f"before it had all {total} bytes"
        else:
            when = f"after {sent} of {total} bytes"
        return DeviceUnavailable(
            f"{self._name()} went away {when} ({reason}): check its power and cable; "
            "the whole receipt is sent again when it is back"
        )


def print_job(connection: PrinterConnection, data: bytes, check_paper: bool = True) -> PrinterStatus:
    """Print one job: open, ask for paper, write every byte, close. Returns what the printer said about itself.

    Raises PaperOut before sending anything when the printer reports no paper; an unknown status goes ahead.
    Returns only when all bytes were written (and, on TCP, acknowledged by the printer).
    """
    with connection:
        status = connection.status() if check_paper else UNKNOWN
        if status.paper == "out":
            raise PaperOut(
                f"printer {connection.url.text} is out of paper (or its cover is open): load paper and close the cover"
            )
        if check_paper and status == UNKNOWN:
            log.debug("printer status unknown, printing anyway", extra={"printer": connection.url.text})
        connection.write(data)
    return status


def query_status(connection: PrinterConnection, timeout: float | None = None) -> PrinterStatus:
    """Open, ask, close: for `pos-edge doctor` and the status page."""
    with connection:
        return connection.status(timeout)


def _unacknowledged(sock: socket.socket) -> int | None:
    # Bytes the peer has not acknowledged yet (Linux SIOCOUTQ); None where the system cannot tell.
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return None


class NetworkConnection(PrinterConnection):
    """`tcp://HOST:9100`: raw TCP, one connection per job."""

    _CHUNK = 16384

    def __init__(self, url: DeviceUrl, **options: Any):
        super().__init__(url, **options)
        self._sock: socket.socket | None = None

    def open(self) -> None:
        port = self.url.port or 9100
        try:
            self._sock = socket.create_connection((self.url.host, port), timeout=self.connect_timeout)
        except ConnectionRefusedError:
            raise DeviceUnavailable(
                f"{self._name()} refused the connection: check that it is switched on and that port {port} is its raw "
                "printing port (usually 9100)"
            ) from None
        except TimeoutError:
            raise DeviceUnavailable(
                f"{self._name()} did not answer within {self.connect_timeout:g} s: check its power, network cable and IP "
                "address (a printer busy with another computer's job does not answer either)"
            ) from None
        except OSError as exc:
            raise DeviceUnavailable(
                f"{self._name()} cannot be reached ({exc.strerror or exc}): check the address and the network"
            ) from exc

    def _ask(self, query: bytes, timeout: float) -> int | None:
        sock = self._require()
        try:
            sock.settimeout(timeout)
            sock.sendall(query)
            answer = sock.recv(1)
        except TimeoutError:
            return None
        except OSError as exc:
            raise self._dropped(0, 0, exc) from exc
        if not answer:
            raise DeviceUnavailable(
                f"{self._name()} closed the connection when asked for its status: check it and try again"
            )
        return answer[0]

    def write(self, data: bytes) -> None:
        sock = self._require()
        view = memoryview(data)
        sent = 0
        sock.settimeout(self.write_timeout)  # per send: no progress for this long is a stalled printer
        try:
            while sent < len(data):
                sent += sock.send(view[sent : sent + self._CHUNK])
            sock.shutdown(socket.SHUT_WR)
        except TimeoutError:
            raise self._timed_out(sent, len(data)) from None
        except OSError as exc:
            raise self._dropped(sent, len(data), exc) from exc
        self._await_delivery(len(data))

    def _await_delivery(self, total: int) -> None:
        # Bytes in our send queue are not yet with the printer: wait until it acknowledged them all (or closed after
        # reading them), so "printed" means the printer has the job. Progress resets the deadline.
        # After shutdown the queue also holds our FIN, one sequence number: 1 left means every data byte arrived.
        sock = self._require()
        last: int | None = None
        deadline = time.monotonic() + self.write_timeout
        peer_closed = False
        while True:
            pending = _unacknowledged(sock)
            if pending is not None:
                pending = max(0, pending - 1)
            if pending == 0 or (pending is None and peer_closed):
                return
            now = time.monotonic()
            if pending is not None and pending != last:
                last, deadline = pending, now + self.write_timeout
            if now >= deadline:
                if pending is None:
                    return  # cannot tell on this system; the printer took everything we could send
                raise self._timed_out(total - pending, total)
            wait = min(0.02, deadline - now)
            if peer_closed:
                time.sleep(wait)
                continue
            readable, _, _ = select.select([sock], [], [], wait)
            if readable:
                try:
                    chunk = sock.recv(4096)  # status bytes some printers send unasked; end of stream; or a reset
                except OSError as exc:
                    raise self._dropped(None, total, exc) from exc  # after a reset the queue counts mean nothing
                peer_closed = not chunk

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._abort:
            # A reset, not a graceful close: the kernel must not go on trickling a failed job out to the printer.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.close()

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise DeviceUnavailable(f"{self._name()} is not open")
        return self._sock


class SerialConnection(PrinterConnection):
    """`serial:///dev/serial/by-id/...?baudrate=9600&rtscts=1` via pyserial."""

    def __init__(self, url: DeviceUrl, **options: Any):
        super().__init__(url, **options)
        query = url.query
        self.baudrate = int(query.get("baudrate", 9600))
        self.rtscts = query.get("rtscts", "0") in ("1", "true", "yes")
        self.xonxoff = query.get("xonxoff", "0") in ("1", "true", "yes")
        self.dsrdtr = query.get("dsrdtr", "0") in ("1", "true", "yes")
        self._port: Any = None

    def open(self) -> None:
        import serial

        try:
            self._port = serial.Serial(
                self.url.path,
                baudrate=self.baudrate,
                rtscts=self.rtscts,
                xonxoff=self.xonxoff,
                dsrdtr=self.dsrdtr,
                timeout=self.status_timeout,
                write_timeout=self.write_timeout,
                exclusive=True,
            )
        except (serial.SerialException, OSError) as exc:
            raise DeviceUnavailable(
                f"{self._name()} cannot be opened ({exc}): check the cable, the path (prefer /dev/serial/by-id/...) and "
                "that the agent may use it (group dialout)"
            ) from exc

    def _ask(self, query: bytes, timeout: float) -> int | None:
        import serial

        port = self._port
        try:
            port.reset_input_buffer()
            port.write(query)
            port.timeout = timeout
            answer = port.read(1)
        except serial.SerialTimeoutException:
            return None
        except (serial.SerialException, OSError) as exc:
            raise self._dropped(0, 0, exc) from exc
        return answer[0] if answer else None

    def write(self, data: bytes) -> None:
        import serial

        port = self._port
        # Chunks of about a quarter second of line time, so the write deadline measures a stall, not the job's size.
        chunk = max(64, self.baudrate // 40)
        sent = 0
        try:
            while sent < len(data):
                sent += port.write(data[sent : sent + chunk]) or 0
            self._drain(port, len(data))
        except serial.SerialTimeoutException:
            raise self._timed_out(sent, len(data)) from None
        except (serial.SerialException, OSError) as exc:
            raise self._dropped(sent, len(data), exc) from exc

    def _drain(self, port: Any, total: int) -> None:
        # pyserial's flush() waits without a deadline; watch the output queue shrink instead.
        last, deadline = None, time.monotonic() + self.write_timeout
        while (pending := port.out_waiting) > 0:
            now = time.monotonic()
            if pending != last:
                last, deadline = pending, now + self.write_timeout
            elif now >= deadline:
                raise self._timed_out(total - pending, total)
            time.sleep(0.01)

    def close(self) -> None:
        port, self._port = self._port, None
        if port is None:
            return
        with contextlib.suppress(Exception):
            if self._abort:
                port.reset_output_buffer()  # otherwise close() waits for the kernel to send the rest
            port.close()


class UsbConnection(PrinterConnection):
    """`usb://VID:PID[?out_ep=0x01&in_ep=0x82]` via python-escpos's Usb (pyusb), with a timeout on every transfer."""

    _CHUNK = 4096

    def __init__(self, url: DeviceUrl, **options: Any):
        super().__init__(url, **options)
        self.vid, self.pid = url.vid_pid
        self.out_ep = int(url.query["out_ep"], 0) if "out_ep" in url.query else None
        self.in_ep = int(url.query["in_ep"], 0) if "in_ep" in url.query else None
        self._printer: Any = None
        self._device: Any = None

    def open(self) -> None:
        try:
            import usb.core
            import usb.util
            from escpos.exceptions import DeviceNotFoundError
            from escpos.printer import Usb
        except ImportError as exc:
            raise DeviceUnavailable(f"{self._name()}: USB printing needs pyusb (pip install pyusb)") from exc
        timeout_ms = max(1, int(self.write_timeout * 1000))  # python-escpos's default 0 waits forever
        printer = Usb(self.vid, self.pid, timeout=timeout_ms, in_ep=self.in_ep or 0x82, out_ep=self.out_ep or 0x01)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                printer.open()
        except DeviceNotFoundError as exc:
            raise DeviceUnavailable(
                f"{self._name()} is not on USB ({str(exc).splitlines()[-1]}): check cable and power; if it is listed by "
                "lsusb, install the agent's udev rules so the agent may use it"
            ) from exc
        except usb.core.NoBackendError as exc:
            raise DeviceUnavailable(f"{self._name()}: libusb is missing: apt-get install libusb-1.0-0") from exc
        self._printer, self._device = printer, printer.device
        if self.out_ep is None or self.in_ep is None:
            self._find_endpoints(usb)

    def _find_endpoints(self, usb: Any) -> None:
        # Models differ (0x01/0x82, 0x03/0x81, ...): take the bulk endpoints the printer interface declares.
        try:
            interface = self._device.get_active_configuration()[(0, 0)]
        except (usb.core.USBError, LookupError):
            return
        for endpoint in interface:
            direction = usb.util.endpoint_direction(endpoint.bEndpointAddress)
            if direction == usb.util.ENDPOINT_OUT and self.out_ep is None:
                self.out_ep = endpoint.bEndpointAddress
            elif direction == usb.util.ENDPOINT_IN and self.in_ep is None:
                self.in_ep = endpoint.bEndpointAddress

    def _usb_error(self, exc: Exception, sent: int, total: int) -> DeviceError:
        import usb.core

        if isinstance(exc, usb.core.USBTimeoutError):
            return self._timed_out(sent, total)
        if getattr(exc, "errno", None) == errno.EACCES:
            self._abort = True
            return DeviceUnavailable(
                f"{self._name()}: no permission to use it: install the agent's udev rules, then replug it"
            )
        return self._dropped(sent, total, exc)

    def write(self, data: bytes) -> None:
        import usb.core

        timeout_ms = max(1, int(self.write_timeout * 1000))
        out_ep = self.out_ep or 0x01
        sent = 0
        try:
            while sent < len(data):
                sent += self._device.write(out_ep, data[sent : sent + self._CHUNK], timeout_ms)
        except usb.core.USBError as exc:
            raise self._usb_error(exc, sent, len(data)) from exc

    def _ask(self, query: bytes, timeout: float) -> int | None:
        import usb.core

        if self.in_ep is None and self.out_ep is not None:
            return None  # a write-only printer
        timeout_ms = max(1, int(timeout * 1000))
        try:
            self._device.write(self.out_ep or 0x01, query, timeout_ms)
            answer = self._device.read(self.in_ep or 0x82, 64, timeout_ms)
        except usb.core.USBTimeoutError:
            return None
        except usb.core.USBError as exc:
            raise self._usb_error(exc, 0, 0) from exc
        return answer[0] if len(answer) else None

    def close(self) -> None:
        printer, self._printer, self._device = self._printer, None, None
        if printer is not None:
            with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
                printer.close()


class FileConnection(PrinterConnection):
    """`file:///dev/usb/lp0` (the kernel's usblp) or any writable file; write-only, so the status is unknown."""

    def __init__(self, url: DeviceUrl, **options: Any):
        super().__init__(url, **options)
        self._fd: int | None = None

    def open(self) -> None:
        path = self.url.path
        try:
            # Non-blocking, so every write waits in poll() with a deadline instead of hanging in the driver.
            self._fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_APPEND | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DeviceUnavailable(
                f"{self._name()}: {path} does not exist: check the printer's power and USB cable"
            ) from None
        except PermissionError:
            raise DeviceUnavailable(
                f"{self._name()}: no permission to write {path}: install the agent's udev rules (or add its user to group lp)"
            ) from None
        except OSError as exc:  # ENXIO: a device node (or FIFO) with nothing behind it
            raise DeviceUnavailable(
                f"{self._name()}: cannot open {path} ({exc.strerror}): check the printer is on"
            ) from exc

    def write(self, data: bytes) -> None:
        fd = self._fd
        if fd is None:
            raise DeviceUnavailable(f"{self._name()} is not open")
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            events = poller.poll(self.write_timeout * 1000)
            if not events:
                raise self._timed_out(sent, len(data))
            if events[0][1] & (select.POLLERR | select.POLLHUP):
                raise self._dropped(sent, len(data), OSError(errno.EIO, "device gone"))
            try:
                sent += os.write(fd, view[sent : sent + 65536])
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOSPC:  # usblp's answer when the printer reports paper out
                    self._abort = True
                    raise PaperOut(f"{self._name()} is out of paper: load paper and close the cover") from exc
                raise self._dropped(sent, len(data), exc) from exc

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
