"""Scans from the station's devices, classified, handed to whoever serves the station, and remembered briefly
for the status screen. A scan goes to the station its device belongs to and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from agent.codes import Classification, CodeRules, classify
from drivers.base import Scan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifiedScan:
    scan: Scan
    code: Classification

    def public(self) -> dict:
        """What a screen or the API may show: secret codes masked."""
        return {"device_id": self.scan.device_id, "at": self.scan.at.isoformat(), **self.code.to_public()}


class ScanRouter:
    """Lives on the agent's event loop. Device threads hand scans over with `submit_threadsafe`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rules: CodeRules, keep: int = 20):
        self._loop = loop
        self._rules = rules
        self.recent: deque[ClassifiedScan] = deque(maxlen=keep)
        self._subscribers: list[Callable[[ClassifiedScan], None]] = []

    def subscribe(self, handler: Callable[[ClassifiedScan], None]) -> None:
        self._subscribers.append(handler)

    def submit_threadsafe(self, scan: Scan) -> None:
        self._loop.call_soon_threadsafe(self._deliver, scan)

    def _deliver(self, scan: Scan) -> None:
        classified = ClassifiedScan(scan, classify(scan.text, self._rules))
        self.recent.append(classified)
        log.info(
            "scan",
            extra={
                "device": scan.device_id,
                "kind": classified.code.kind.value,
                "value": classified.code.display_value,
            },
        )
        for handler in self._subscribers:
            handler(classified)
