"""Time at central: aware UTC everywhere; the web app takes `now` as a dependency so tests can move it."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
