"""Stores: the day summary a store reconciles its journal against."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Path, Query

from central import contract, transactions
from central.deps import CurrentStore, ReadSessionDep
from central.errors import Forbidden

router = APIRouter(prefix="/stores", tags=["stores"])


@router.get("/{store_id}/days/{business_day}/summary")
def day_summary(
    store_id: Annotated[str, Path(pattern=contract.ID_PATTERN)],
    business_day: date,
    session: ReadSessionDep,
    store: CurrentStore,
    station_id: Annotated[str | None, Query(pattern=contract.ID_PATTERN, description="only this till or kiosk")] = None,
) -> contract.DaySummary:
    """Counts, sums per tender, points and a digest of one business day, for the store or one station of it."""
    if store_id != store:
        raise Forbidden("a store can read only its own summaries")
    return transactions.day_summary(session, store_id, business_day, station_id)
