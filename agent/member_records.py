"""The member cache's records as plain values, for the rules that read them without touching the database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class CachedCoupon:
    """A coupon issued to a member, as the feed carries it; amounts in fen, times aware UTC."""

    code: str
    title: str
    kind: str  # amount_off | percent_off
    amount_off_fen: int
    percent_off: int
    threshold_fen: int
    cap_fen: int | None
    valid_from: datetime
    valid_until: datetime
    usable_offline: bool
    used_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CachedMember:
    id: str
    tier: str
    points: int
    display_name: str
    phone_masked: str | None
    version: int
