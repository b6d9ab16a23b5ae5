"""Time at the store: stored as aware UTC, shown and grouped in the store's time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo


def utcnow() -> datetime:
    return datetime.now(UTC)


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
