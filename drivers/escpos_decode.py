"""Reads back the ESC/POS that drivers.escpos_printer.render emits, and draws what the paper would look like.

Tests decode a rendered receipt to check what a customer would see; the simulated printer decodes its jobs to PNG
previews. The decoder knows exactly the commands `render` uses and refuses anything else with a ValueError naming
the byte offset, so a change in what goes to printers cannot slip through unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import qrcode
from escpos.capabilities import get_profile
from PIL import Image, ImageDraw

from drivers.escpos_printer import code128_image, raster_text_line

Align = Literal["left", "center", "right"]
_ALIGN: dict[int, Align] = {0: "left", 1: "center", 2: "right", 48: "left", 49: "center", 50: "right"}
_CELL = 12  # dots per column of the printer's standard 12x24 font


@dataclass(frozen=True)
class TextLine:
    text: str
    align: Align = "left"
    bold: bool = False
    double: bool = False
    cells: int = 0  # columns the printer uses for it: one per single byte, two per double-byte character


@dataclass(frozen=True)
class QrCode:
    payload: str
    size: int = 3  # module size in dots
    align: Align = "center"


@dataclass(frozen=True)
class BarcodeElement:
    data: str
    symbology: str = "CODE128"
    height: int = 162
    width: int = 3
    hri: bool = True
    align: Align = "center"


@dataclass(frozen=True, eq=False)
class RasterImage:
    image: Image.Image  # mode "1", black where the printer puts a dot
    align: Align = "left"


@dataclass(frozen=True)
class Feed:
    lines: int


@dataclass(frozen=True)
class Cut:
    partial: bool


@dataclass(frozen=True)
class DrawerKick:
    pin: int


Element = TextLine | QrCode | BarcodeElement | RasterImage | Feed | Cut | DrawerKick


@dataclass
class _Segment:
    chinese: bool
    data: bytearray = field(default_factory=bytearray)


class _Decoder:
    def __init__(self, data: bytes, codec: str, escpos_profile: str):
        self.data = data
        self.codec = codec
        self.pos = 0
        self.out: list[Element] = []
        self.codepages = {int(n): name for name, n in get_profile(escpos_profile).get_code_pages().items()}
        self.reset()

    def reset(self) -> None:
        self.align: Align = "left"
        self.bold = False
        self.esc_mode = 0  # ESC ! bits: 0x10 double height, 0x20 double width
        self.gs_size = 0  # GS ! n: high nibble width-1, low nibble height-1
        self.chinese = False
        self.codepage = 0
        self.line: list[_Segment] = []
        self.line_start = self.pos
        self.barcode_height, self.barcode_width, self.hri = 162, 3, False
        self.qr_size, self.qr_data = 3, b""

    # -- reading --

    def fail(self, what: str, at: int | None = None) -> ValueError:
        return ValueError(f"byte {self.pos if at is None else at}: {what}")

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"{what} cut short: needs {n} more bytes, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    # -- text --

    def text_byte(self, value: int) -> None:
        if not self.line:
            self.line_start = self.pos - 1
        if not self.line or self.line[-1].chinese != self.chinese:
            self.line.append(_Segment(self.chinese))
        self.line[-1].data.append(value)

    def end_line(self) -> None:
        text, cells = "", 0
        for segment in self.line:
            if segment.chinese:
                try:
                    part = bytes(segment.data).decode(self.codec)
                except UnicodeDecodeError as exc:
                    raise self.fail(f"text is not valid {self.codec}: {exc.reason}", self.line_start) from None
                cells += sum(1 if ch < "\x80" else 2 for ch in part)
            else:
                name = self.codepages.get(self.codepage, "")
                codec = name.lower() if name.upper().startswith("CP") else "ascii"
                try:
                    part = bytes(segment.data).decode(codec)
                except (UnicodeDecodeError, LookupError):
                    raise self.fail(
                        f"single-byte text not readable in code table {self.codepage}", self.line_start
                    ) from None
                cells += len(segment.data)
            text += part
        double = (self.gs_size >> 4 >= 1 and self.gs_size & 0x0F >= 1) or self.esc_mode & 0x30 == 0x30
        self.out.append(TextLine(text, self.align, self.bold, double, cells))
        self.line = []

    def flush_partial_line(self) -> None:
        # Printers print what is buffered before a feed, cut or image; render never leaves text without a newline.
        if self.line:
            self.end_line()

    # -- commands --

    def run(self) -> list[Element]:
        while self.pos < len(self.data):
            start = self.pos
            value = self.byte("byte")
            if value >= 0x20:
                self.text_byte(value)
            elif value == 0x0A:
                self.end_line()
            elif value == 0x1B:
                self.esc(start)
            elif value == 0x1D:
                self.gs(start)
            elif value == 0x1C:
                self.fs(start)
            else:
                raise self.fail(f"unexpected control byte 0x{value:02x}", start)
        self.flush_partial_line()
        return self.out

    def esc(self, start: int) -> None:
        command = self.byte("ESC command")
        if command == ord("@"):
            self.flush_partial_line()
            self.reset()
        elif command == ord("!"):
            self.esc_mode = self.byte("ESC !")
            self.bold = bool(self.esc_mode & 0x08)
        elif command == ord("E"):
            self.bold = bool(self.byte("ESC E") & 1)
        elif command == ord("a"):
            n = self.byte("ESC a")
            if n not in _ALIGN:
                raise self.fail(f"ESC a {n}: not an alignment", start)
            self.align = _ALIGN[n]
        elif command == ord("d"):
            self.flush_partial_line()
            self.out.append(Feed(self.byte("ESC d")))
        elif command == ord("t"):
            self.codepage = self.byte("ESC t")
        elif command == ord("p"):
            pin, _on, _off = self.take(3, "ESC p")
            self.out.append(DrawerKick(2 if pin in (0, 48) else 5))
        else:
            raise self.fail(f"unknown command ESC 0x{command:02x}", start)

    def fs(self, start: int) -> None:
        command = self.byte("FS command")
        if command == ord("&"):
            self.chinese = True
        elif command == ord("."):
            self.chinese = False
        else:
            raise self.fail(f"unknown command FS 0x{command:02x}", start)

    def gs(self, start: int) -> None:
        command = self.byte("GS command")
        if command == ord("!"):
            self.gs_size = self.byte("GS !")
        elif command == ord("V"):
            self.flush_partial_line()
            m = self.byte("GS V")
            if m in (65, 66):
                self.byte("GS V feed")
                self.out.append(Cut(partial=m == 66))
            elif m in (0, 1, 48, 49):
                self.out.append(Cut(partial=m in (1, 49)))
            else:
                raise self.fail(f"GS V {m}: not a cut", start)
        elif command == ord("h"):
            self.barcode_height = self.byte("GS h")
        elif command == ord("w"):
            self.barcode_width = self.byte("GS w")
        elif command == ord("f"):
            self.byte("GS f")
        elif command == ord("H"):
            self.hri = self.byte("GS H") != 0
        elif command == ord("k"):
            self.barcode(start)
        elif command == ord("("):
            self.two_d(start)
        elif command == ord("v"):
            self.raster(start)
        else:
            raise self.fail(f"unknown command GS 0x{command:02x}", start)

    def barcode(self, start: int) -> None:
        self.flush_partial_line()
        m = self.byte("GS k")
        if m != 73:
            raise self.fail(f"GS k {m}: only Code 128 (73) is expected", start)
        n = self.byte("GS k length")
        data = self.take(n, "Code 128 data")
        self.out.append(
            BarcodeElement(
                decode_code128(data, start), "CODE128", self.barcode_height, self.barcode_width, self.hri, self.align
            )
        )

    def two_d(self, start: int) -> None:
        kind = self.byte("GS (")
        if kind != ord("k"):
            raise self.fail(f"unknown command GS ( 0x{kind:02x}", start)
        low, high = self.take(2, "GS ( k length")
        body = self.take(low + 256 * high, "GS ( k body")
        if len(body) < 2 or body[0] != 49:
            raise self.fail("GS ( k: only QR codes (cn 49) are expected", start)
        fn, args = body[1], body[2:]
        if fn == 65 or fn == 69:  # model, error correction
            return
        if fn == 67:
            self.qr_size = args[0]
        elif fn == 80:
            self.qr_data = bytes(args[1:])  # after m = 48
        elif fn == 81:
            self.flush_partial_line()
            try:
                payload = self.qr_data.decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail("QR data is not UTF-8", start) from None
            self.out.append(QrCode(payload, self.qr_size, self.align))
        else:
            raise self.fail(f"GS ( k function {fn}: not expected", start)

    def raster(self, start: int) -> None:
        self.flush_partial_line()
        if self.byte("GS v") != ord("0"):
            raise self.fail("GS v: only GS v 0 raster images are expected", start)
        self.byte("GS v 0 mode")
        xl, xh, yl, yh = self.take(4, "GS v 0 size")
        width_bytes, height = xl + 256 * xh, yl + 256 * yh
        bits = self.take(width_bytes * height, "GS v 0 image data")
        # ESC/POS: bit 1 = dot; PIL "1": bit 1 = white. Invert so the image reads as printed.
        image = Image.frombytes("1", (width_bytes * 8, height), bytes(b ^ 0xFF for b in bits))
        self.out.append(RasterImage(image, self.align))


def decode_code128(data: bytes, at: int = 0) -> str:
    """GS k 73 content (with {A/{B/{C code-set prefixes) back to the text the barcode carries."""
    text: list[str] = []
    current = ""
    i = 0
    while i < len(data):
        value = data[i]
        if value == ord("{") and i + 1 < len(data):
            nxt = chr(data[i + 1])
            if nxt in "ABC":
                current = nxt
                i += 2
                continue
            if nxt == "{" and current in "AB":
                text.append("{")
                i += 2
                continue
        if current == "C":
            if value > 99:
                raise ValueError(f"byte {at}: Code 128 set C value {value} is not 0-99")
            text.append(f"{value:02d}")
        elif current in ("A", "B"):
            text.append(chr(value))
        else:
            raise ValueError(f"byte {at}: Code 128 data must start with a code set ({{A, {{B or {{C)")
        i += 1
    return "".join(text)


def decode(data: bytes, codec: str = "gb18030", escpos_profile: str = "default") -> list[Element]:
    """The elements of one ESC/POS job as render() produced it; text inside FS & ... FS . is read with `codec`."""
    return _Decoder(data, codec, escpos_profile).run()


# --- preview -----------------------------------------------------------------------------------------------------


def _place(canvas_width: int, image: Image.Image, align: Align) -> Image.Image:
    strip = Image.new("L", (canvas_width, image.height), 255)
    x = {"left": 0, "center": (canvas_width - image.width) // 2, "right": canvas_width - image.width}[align]
    strip.paste(image.convert("L"), (max(0, x), 0))
    return strip


def _qr_image(payload: str, size: int) -> Image.Image:
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=max(1, size), border=1)
    code.add_data(payload)
    code.make(fit=True)
    return code.make_image(fill_color="black", back_color="white").get_image().convert("L")


def render_preview(elements: list[Element], path: str | Path, width_dots: int = 576) -> Path:
    """A PNG of the paper: text in the CJK font on the printer's column grid, QR codes, barcodes, images, cuts."""
    columns = width_dots // _CELL
    line_height = 30
    strips: list[Image.Image] = []
    for element in elements:
        if isinstance(element, TextLine):
            line = raster_text_line(element.text, width_dots, columns, element.align, element.bold, element.double)
            strips.append(line.convert("L"))
        elif isinstance(element, QrCode):
            strips.append(_place(width_dots, _qr_image(element.payload, element.size), element.align))
        elif isinstance(element, BarcodeElement):
            image = code128_image(element.data, max(1, element.width), max(1, element.height), element.hri)
            strips.append(_place(width_dots, image, element.align))
        elif isinstance(element, RasterImage):
            strips.append(_place(width_dots, element.image, element.align))
        elif isinstance(element, Feed):
            strips.append(Image.new("L", (width_dots, line_height * element.lines), 255))
        elif isinstance(element, Cut):
            cut = Image.new("L", (width_dots, 24), 255)
            draw = ImageDraw.Draw(cut)
            for x in range(0, width_dots, 16):
                draw.line([(x, 12), (x + 8, 12)], fill=140, width=2)
            strips.append(cut)
        # A drawer kick leaves nothing on paper.
    margin = 24
    height = sum(strip.height for strip in strips) + 2 * margin
    paper = Image.new("L", (width_dots + 2 * margin, max(height, 2 * margin)), 255)
    y = margin
    for strip in strips:
        paper.paste(strip, (margin, y))
        y += strip.height
    target = Path(path)
    paper.save(target, "PNG")
    return target
