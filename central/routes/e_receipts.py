"""The e-receipt page, `GET /e/{token}`: what a receipt's QR code opens on the customer's phone. Outside /v1 and
without credentials: the unguessable token is the only key (central/e_receipts.py). Not in the OpenAPI document:
it is a page for people, not part of the contract."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from central.deps import ReadSessionDep, SettingsDep
from central.e_receipts import HEADERS, e_receipt_page

router = APIRouter(tags=["e-receipt"], include_in_schema=False)


@router.get("/e/{token}", response_class=HTMLResponse)
def e_receipt(token: str, session: ReadSessionDep, settings: SettingsDep) -> HTMLResponse:
    """A sale's e-receipt (200), "not yet received" for a genuine token of a sale not pushed yet (200), or a
    page that says only "not found" (404) for any other token."""
    page = e_receipt_page(
        session, settings.key_bytes(), token, ZoneInfo(settings.e_receipt_timezone), settings.e_receipt_join_url
    )
    return HTMLResponse(page.html, status_code=page.status, headers=HEADERS)
