"""Journal rows as a store's outbox sends them, built with the agent's own id and hash code."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

from agent.clock import to_storage
from agent.ids import new_transaction_id
from agent.journal import GENESIS, canonical_json, row_hash

DAY = date(2026, 11, 23)
AT = datetime(2026, 11, 23, 3, 30, tzinfo=UTC)


def journal_row(
    total_fen: int = 1000,
    *,
    member_id: str | None = None,
    points_earned: int = 0,
    points_redeemed: int = 0,
    kind: str = "sale",
    station_id: str = "T01",
    business_day: date = DAY,
    tenders: list[dict[str, Any]] | None = None,
    coupons: list[dict[str, Any]] | None = None,
    prev_hash: str = GENESIS,
    **overrides: Any,
) -> dict[str, Any]:
    """One row in its wire form (body as a JSON object, times as ISO 8601), hashed like the journal does."""
    body: dict[str, Any] = {
        "lines": [{"name": "矿泉水 550ml", "gtin": "6901234567892", "qty": 1, "amount_fen": total_fen}],
        "tenders": tenders if tenders is not None else [{"kind": "cash", "amount_fen": total_fen}],
    }
    if coupons is not None:
        body["coupons"] = coupons
    row = {
        "id": new_transaction_id(),
        "station_id": station_id,
        "kind": kind,
        "business_day": business_day.isoformat(),
        "created_at": to_storage(AT),
        "member_id": member_id,
        "total_fen": total_fen,
        "points_earned": points_earned,
        "points_redeemed": points_redeemed,
        "body": canonical_json(body),
    }
    row["prev_hash"] = prev_hash
    row["hash"] = row_hash(prev_hash, row)
    row["body"] = json.loads(row["body"])
    row.update(overrides)
    return row
