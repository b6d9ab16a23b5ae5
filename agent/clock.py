"""Time at the store: stored as aware UTC, shown and grouped in the store's time zone.

A rule that decides by time (a payment's limit, a follower's waits, connectivity's windows, the sync jobs'
back-off) takes a `Clock`, so its tests run on a fake one in milliseconds; `SYSTEM_CLOCK` is the real one.
`utcnow()` stays for stamping times that no rule decides by.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo


def utcnow() -> datetime:
    return datetime.now(UTC)


class Clock(Protocol):
    def now(self) -> datetime:
        """The time of day, aware UTC (it can jump: never measure a wait with it)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for waits and deadlines."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return utcnow()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()


def to_storage(at: datetime) -> str:
    """The one text form of a time in the database: ISO 8601 UTC with microseconds, so text order is time order."""
    if at.tzinfo is None:
        raise ValueError("naive datetime: the agent stores aware UTC times only")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def from_storage(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def business_day(at: datetime, zone: ZoneInfo, cutoff_hour: int) -> date:
    """The store's business day of a moment: sales before the cut-off hour belong to the previous day."""
    return (at.astimezone(zone) - timedelta(hours=cutoff_hour)).date()
