"""Barcode decoders for camera frames: zxing-cpp (default) and pyzbar, behind one small interface.

Both take GRAYSCALE frames (pyzbar given a BGR frame silently reads only the blue channel) and report the same
symbology names and the same text for the same code, so the backend is a settings choice, not a behaviour change:

    qr · code128 · ean13 · ean8 · upca

A UPC-A is reported as "upca" with its 12 digits whenever "upca" is among the formats; with only "ean13" it is
the 13-digit EAN-13 it also is (leading 0). Both libraries disagree on this by default, hence the normalising.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from drivers.base import DeviceError

if TYPE_CHECKING:
    import zxingcpp

SYMBOLOGIES = ("qr", "code128", "ean13", "ean8", "upca")


@dataclass(frozen=True, slots=True)
class Decoded:
    """One code found in one frame."""

    text: str
    symbology: str

    def __repr__(self) -> str:
        # Decoded payment codes are auth codes: keep them out of logs and test reports.
        shown = self.text if len(self.text) <= 8 else f"{self.text[:4]}…{self.text[-2:]}"
        return f"Decoded({shown!r} ({len(self.text)} chars), {self.symbology!r})"


class Decoder(Protocol):
    name: str

    def decode(self, gray: np.ndarray) -> list[Decoded]:
        """Every code of the configured formats in a 2-D uint8 frame, in the order the library found them."""
        ...


def _check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(formats))
    unknown = [f for f in chosen if f not in SYMBOLOGIES]
    if unknown or not chosen:
        raise ValueError(f"camera formats {list(chosen)!r}: choose one or more of {', '.join(SYMBOLOGIES)}")
    return chosen


def _check_gray(gray: np.ndarray) -> np.ndarray:
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"decoders take 2-D uint8 grayscale frames, got shape {gray.shape} {gray.dtype}")
    return gray if gray.flags.c_contiguous else np.ascontiguousarray(gray)


def _normalise(text: str, symbology: str, formats: tuple[str, ...]) -> Decoded | None:
    # A UPC-A is an EAN-13 whose first digit is 0; report it one way whichever library and format list read it.
    if symbology == "upca" and len(text) == 13 and text.startswith("0"):
        text = text[1:]
    if symbology == "ean13" and "upca" in formats and len(text) == 13 and text.startswith("0"):
        symbology, text = "upca", text[1:]
    if symbology == "upca" and "upca" not in formats:
        symbology, text = "ean13", "0" + text
    if symbology not in formats:
        return None
    return Decoded(text, symbology)


class ZxingDecoder:
    """zxing-cpp: self-contained wheel, fast, reads small modules, blur and any rotation.

    Inverted ("dark mode") screens: QR codes are read by zxing's own try_invert; linear barcodes only through
    a second, inverted pass that runs when the first found nothing."""

    name = "zxing"

    def __init__(self, formats: Iterable[str] = ("qr", "code128")):
        try:
            import zxingcpp
        except ImportError as exc:
            raise DeviceError(f"the zxing camera decoder needs zxing-cpp: pip install zxing-cpp ({exc})") from exc
        self._zx = zxingcpp
        self.formats = _check_formats(formats)
        fmt = zxingcpp.BarcodeFormat
        by_name = {"qr": fmt.QRCode, "code128": fmt.Code128, "ean13": fmt.EAN13, "ean8": fmt.EAN8, "upca": fmt.UPCA}
        # zxing reports a UPC-A as EAN-13 unless asked for UPC-A, and finds it either way: ask for both.
        wanted = set(self.formats) | ({"ean13", "upca"} if "upca" in self.formats else set())
        self._formats = zxingcpp.BarcodeFormats([by_name[f] for f in SYMBOLOGIES if f in wanted])
        self._linear = zxingcpp.BarcodeFormats([by_name[f] for f in SYMBOLOGIES if f in wanted and f != "qr"])
        # A QR read may come back as a QR variant (model 1/2); map by the base symbology.
        self._names = {fmt.QRCode: "qr", fmt.Code128: "code128", fmt.EAN13: "ean13", fmt.EAN8: "ean8", fmt.UPCA: "upca"}

    def decode(self, gray: np.ndarray) -> list[Decoded]:
        gray = _check_gray(gray)
        # try_invert covers QR codes only: zxing-cpp does not read light-on-dark linear barcodes (issue #795),
        # so a frame with nothing in it gets one more look, inverted, for the linear formats.
        out = self._read(gray, self._formats, try_invert=True)
        if not out and self._linear:
            out = self._read(np.bitwise_not(gray), self._linear, try_invert=False)
        return out

    def _read(self, gray: np.ndarray, formats: zxingcpp.BarcodeFormats, try_invert: bool) -> list[Decoded]:
        out: list[Decoded] = []
        for code in self._zx.read_barcodes(gray, formats=formats, try_invert=try_invert):
            symbology = self._names.get(code.format) or self._names.get(code.symbology)
            decoded = _normalise(code.text, symbology, self.formats) if symbology else None
            if decoded is not None:
                out.append(decoded)
        return out


class PyzbarDecoder:
    """pyzbar over Debian's libzbar0. zbar does not read light-on-dark codes, so an empty frame is retried inverted."""

    name = "pyzbar"

    def __init__(self, formats: Iterable[str] = ("qr", "code128")):
        try:
            from pyzbar import pyzbar
        except (ImportError, OSError) as exc:  # pyzbar raises ImportError when libzbar's .so is not found
            raise DeviceError(
                f'the pyzbar camera decoder cannot load zbar ({exc}): install Debian\'s libzbar0, or set decoder = "zxing"'
            ) from exc
        self._pyzbar = pyzbar
        self.formats = _check_formats(formats)
        sym = pyzbar.ZBarSymbol
        by_name = {"qr": sym.QRCODE, "code128": sym.CODE128, "ean13": sym.EAN13, "ean8": sym.EAN8, "upca": sym.UPCA}
        # zbar decodes UPC-A only as a refinement of EAN-13: enable both, then keep what was asked for.
        wanted = set(self.formats) | ({"ean13", "upca"} if "upca" in self.formats else set())
        self._symbols = [by_name[f] for f in SYMBOLOGIES if f in wanted]
        self._names = {"QRCODE": "qr", "CODE128": "code128", "EAN13": "ean13", "EAN8": "ean8", "UPCA": "upca"}

    def decode(self, gray: np.ndarray) -> list[Decoded]:
        gray = _check_gray(gray)
        found = self._read(gray)
        if not found:
            found = self._read(np.bitwise_not(gray))
        return found

    def _read(self, gray: np.ndarray) -> list[Decoded]:
        out: list[Decoded] = []
        for code in self._pyzbar.decode(gray, symbols=self._symbols):
            symbology = self._names.get(code.type)
            decoded = _normalise(code.data.decode("utf-8", "replace"), symbology, self.formats) if symbology else None
            if decoded is not None:
                out.append(decoded)
        return out


DECODERS = ("zxing", "pyzbar")


def make_decoder(name: str, formats: Iterable[str] = ("qr", "code128")) -> Decoder:
    """The decoder named in settings (`[devices.camera] decoder`). Raises DeviceError when it cannot run here."""
    if name == "zxing":
        return ZxingDecoder(formats)
    if name == "pyzbar":
        return PyzbarDecoder(formats)
    raise DeviceError(f'unknown camera decoder {name!r}: set decoder = "zxing" or "pyzbar"')
