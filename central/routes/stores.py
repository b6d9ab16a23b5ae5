"""Stores: the day summary a store reconciles its journal against, and its code payments of the day."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Path, Query

from central import contract, transactions
from central.deps import CurrentStore, Now, ReadSessionDep, SettingsDep
from central.errors import Forbidden
from central.payments import orphans, reconcile

router = APIRouter(prefix="/stores", tags=["stores"])


@router.get("/{store_id}/days/{business_day}/summary")
def day_summary(
    store_id: Annotated[str, Path(pattern=contract.ID_PATTERN)],
    business_day: date,
    session: ReadSessionDep,
    store: CurrentStore,
    settings: SettingsDep,
    now: Now,
    station_id: Annotated[str | None, Query(pattern=contract.ID_PATTERN, description="only this till or kiosk")] = None,
) -> contract.DaySummary:
    """Counts, sums per tender, points and a digest of one business day, for the store or one station of it; and
    `payments`: the code payments of that day (China time) and any that match no sale (orphan charges) or whose
    sale disagrees with them."""
    if store_id != store:
        raise Forbidden("a store can read only its own summaries")
    check = orphans.check_day(session, store_id, business_day, now, orphans.Rules.from_settings(settings), station_id)
    return transactions.day_summary(session, store_id, business_day, station_id, payments=check)


@router.get("/{store_id}/days/{business_day}/payments")
def day_payments(
    store_id: Annotated[str, Path(pattern=contract.ID_PATTERN)],
    business_day: date,
    session: ReadSessionDep,
    store: CurrentStore,
    settings: SettingsDep,
    now: Now,
) -> contract.PaymentDay:
    """Next to the day summary: the store's code payments of the day (China time) by state and provider, what
    the latest settlement-bill checks (`pos-central payments reconcile`) found for this store, and `check`: the
    payments that match no sale (orphan charges) or whose sale disagrees with them, for all its stations."""
    if store_id != store:
        raise Forbidden("a store can read only its own payments")
    check = orphans.check_day(session, store_id, business_day, now, orphans.Rules.from_settings(settings))
    return reconcile.payment_day(session, store_id, business_day, check)
