"""What a device can do beyond its kind, as small protocols: the API asks `isinstance(device, TakesScans)` rather
than which class the device is, so any driver that can do the thing is offered it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class TakesScans(Protocol):
    """A scanner that takes codes handed to it as if it had read them (a `sim://` scanner: the console's scan box)."""

    def inject(self, text: str, symbology: str | None = None) -> None: ...


@runtime_checkable
class HasPreviews(Protocol):
    """A printer that keeps what it printed and can draw it as a picture of the paper (a `sim://` printer)."""

    def preview_of(self, data: bytes) -> Path | None:
        """The PNG of the job printed with these bytes, or None if no job with these bytes was printed."""
        ...
