"""Transactions: batches of journal rows from a store's outbox."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from central import contract, transactions
from central.deps import CurrentStore, Now, SessionDep
from central.errors import Invalid

router = APIRouter(tags=["transactions"])

# The body is documented as BatchIn but read by `batch_rows`, see there.
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchIn"}}},
    }
}


async def batch_rows(request: Request) -> list[Any]:
    """The batch's rows as raw JSON values. FastAPI does not validate the batch as a whole, so a malformed row
    is rejected on its own instead of failing the batch (and blocking the store's outbox behind it)."""
    try:
        payload = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Invalid('the body is not JSON; send {"transactions": [...]}') from None
    if not isinstance(payload, dict) or not isinstance(payload.get("transactions"), list):
        raise Invalid('send {"transactions": [...]}')
    return payload["transactions"]


@router.post(
    "/transactions:batch",
    openapi_extra=BATCH_BODY,
    responses={413: {"model": contract.ErrorBody, "description": f"more than {contract.MAX_BATCH_SIZE} rows"}},
)
def ingest_batch(
    request: Request,
    store: CurrentStore,
    rows: Annotated[list[Any], Depends(batch_rows)],
    session: SessionDep,
    now: Now,
) -> contract.BatchResult:
    """Ingest journal rows: per row accepted, duplicate or rejected (with a reason), plus the authoritative
    points balance of every member the rows touch. Retrying a batch is always safe."""
    result = transactions.ingest(session, store, rows, now, request.app.state.settings.wechat_member_card)
    request.app.state.metrics.batch_ingested(result)
    card_sync = getattr(request.app.state, "card_sync", None)
    if card_sync is not None:
        card_sync.wake()  # new points may be waiting for member cards
    return result
