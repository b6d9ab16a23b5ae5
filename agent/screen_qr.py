"""QR codes for the screens, as SVG markup the agent draws (the screens load nothing from outside): a member's card
to keep, a paid sale's e-receipt link. segno picks the mask WeChat's scanner reads best; a code is drawn once and
kept, since a screen asks for the same one again."""

from __future__ import annotations

import io
from functools import lru_cache

import segno


@lru_cache(maxsize=256)
def qr_svg(text: str) -> str:
    """`text` as a QR code that fills its box (a viewBox, no size), quiet zone (4 modules) included, on white
    whatever the page behind it; a standalone document (with its namespace), so it also shows as an <img>."""
    out = io.BytesIO()
    segno.make(text, error="m", micro=False).save(
        out, kind="svg", xmldecl=False, svgns=True, omitsize=True, border=4, light="#fff"
    )
    return out.getvalue().decode("utf-8")
