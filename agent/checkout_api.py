"""The checkout part of the local API (docs/checkout.md): sessions, members, transactions, refunds, events."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field, StrictInt

from agent import pii
from agent.checkout import Checkout, record_view
from agent.db import reader
from agent.errors import InvalidPhone, InvalidRequest, NotFound, PhoneLookupOff
from agent.identify import MemberNotFound
from agent.member_cache import PhoneLookupUnavailable
from agent.refunds import RefundLine, Refunds
from agent.sale import SaleLine


def get_checkout(request: Request) -> Checkout:
    return request.app.state.agent.checkout


def get_refunds(request: Request) -> Refunds:
    return request.app.state.agent.refunds


CheckoutDep = Annotated[Checkout, Depends(get_checkout)]
RefundsDep = Annotated[Refunds, Depends(get_refunds)]

sessions_router = APIRouter(prefix="/v1/sessions", tags=["checkout"])
checkout_router = APIRouter(prefix="/v1", tags=["checkout"])


class CodeIn(BaseModel):
    text: str = Field(min_length=1, max_length=4096, description="the code as scanned or typed")


class PhoneIn(BaseModel):
    phone: str = Field(min_length=1, max_length=32, examples=["13812345678"])
    confirmed: bool = Field(False, description="the customer confirmed the number is theirs (allows spending points)")


class LineIn(BaseModel):
    sku: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1, max_length=40)
    qty: StrictInt = Field(examples=[1])
    unit_price_fen: StrictInt = Field(examples=[1990])
    category: str = Field("", max_length=32)


class BasketIn(BaseModel):
    lines: list[LineIn] = Field(max_length=500)


class RedemptionIn(BaseModel):
    points: StrictInt = Field(ge=0)


class TenderIn(BaseModel):
    kind: Literal["code", "cash", "card", "other"]
    amount_fen: StrictInt | None = Field(
        None, gt=0, description="the part of the sale this tender pays; default: all that is left"
    )
    tendered_fen: StrictInt | None = Field(None, gt=0, description="cash: what the customer handed over")
    reference: str | None = Field(None, max_length=64, description="card/other: the terminal's reference")
    auth_code: str | None = Field(None, max_length=64, description="code: the payment code")


class RefundLineIn(BaseModel):
    line: StrictInt = Field(ge=0)
    qty: StrictInt = Field(ge=1)


class RefundIn(BaseModel):
    transaction: str = Field(min_length=1, max_length=64, description="transaction id or receipt number")
    lines: list[RefundLineIn] | None = Field(None, description="null: everything not refunded yet")
    reason: str | None = Field(None, max_length=80)


Session = dict[str, Any]


@sessions_router.post("", status_code=201)
async def open_session(checkout: CheckoutDep) -> Session:
    return (await checkout.open()).view()


@sessions_router.get("/current")
async def current_session(checkout: CheckoutDep) -> Session:
    if checkout.current is None:
        raise NotFound("no sale is open at this station")
    return (await checkout.look(checkout.current.id)).view()


@sessions_router.get("/{session_id}")
async def get_session(session_id: str, checkout: CheckoutDep) -> Session:
    return (await checkout.look(session_id)).view()


@sessions_router.post("/{session_id}/codes")
async def enter_code(session_id: str, body: CodeIn, checkout: CheckoutDep) -> Session:
    return (await checkout.code(session_id, body.text)).view()


@sessions_router.post("/{session_id}/phone")
async def enter_phone(session_id: str, body: PhoneIn, checkout: CheckoutDep) -> Session:
    return (await checkout.phone(session_id, body.phone, body.confirmed)).view()


@sessions_router.put("/{session_id}/basket")
async def set_basket(session_id: str, body: BasketIn, checkout: CheckoutDep) -> Session:
    lines = [SaleLine(**line.model_dump()) for line in body.lines]
    return (await checkout.set_basket(session_id, lines)).view()


@sessions_router.put("/{session_id}/redemption")
async def set_redemption(session_id: str, body: RedemptionIn, checkout: CheckoutDep) -> Session:
    return (await checkout.set_redemption(session_id, body.points)).view()


@sessions_router.delete("/{session_id}/coupons/{code}")
async def remove_coupon(session_id: str, code: str, checkout: CheckoutDep) -> Session:
    return (await checkout.remove_coupon(session_id, code)).view()


@sessions_router.post("/{session_id}/tenders")
async def take_tender(session_id: str, body: TenderIn, checkout: CheckoutDep) -> Session:
    sale = await checkout.tender(
        session_id, body.kind, body.amount_fen, body.tendered_fen, body.reference, body.auth_code
    )
    return sale.view()


@sessions_router.post("/{session_id}/payment/cancel")
async def cancel_payment(session_id: str, checkout: CheckoutDep) -> Session:
    return (await checkout.cancel_payment(session_id)).view()


@sessions_router.post("/{session_id}/cancel")
async def cancel_session(session_id: str, checkout: CheckoutDep) -> Session:
    return (await checkout.cancel(session_id)).view()


@sessions_router.get("/{session_id}/events", response_class=EventSourceResponse)
async def session_events(session_id: str, checkout: CheckoutDep, last_event_id: Annotated[int | None, Header()] = None):
    checkout.get(session_id)  # 404 for an unknown session
    async for event in checkout.events.follow(last_event_id if last_event_id is not None else 0, session_id):
        yield ServerSentEvent(data=event.payload(), event=event.type, id=str(event.id))


@checkout_router.get("/events", response_class=EventSourceResponse)
async def station_events(checkout: CheckoutDep, last_event_id: Annotated[int | None, Header()] = None):
    """Every session of this station; without Last-Event-ID, only what happens from now on."""
    async for event in checkout.events.follow(last_event_id):
        yield ServerSentEvent(data=event.payload(), event=event.type, id=str(event.id))


@checkout_router.get("/members/lookup")
async def lookup_member(checkout: CheckoutDep, card_no: str | None = None, phone: str | None = None) -> dict[str, Any]:
    """A member by card number or mobile number: from the cache, then central when online. Masked data only."""
    try:
        if card_no:
            found = await checkout.identifier.card(card_no)
        elif phone:
            found = await checkout.identifier.phone(phone)
        else:
            raise InvalidRequest("give card_no or phone")
    except pii.InvalidPhoneNumber as exc:
        raise InvalidPhone(str(exc), "请输入正确的手机号码") from None
    except PhoneLookupUnavailable as exc:
        raise PhoneLookupOff(str(exc)) from exc
    except MemberNotFound as exc:
        raise NotFound(str(exc)) from None
    member = found.member
    if member is None:  # removed from the cache (a tombstone from central) between the lookup and this read
        raise NotFound("no such member")
    return {
        "id": member.id,
        "display_name": member.display_name,
        "tier": member.tier,
        "points": member.points,
        "phone_masked": member.phone_masked,
        "from_central": found.from_central,
    }


@checkout_router.get("/transactions")
async def list_transactions(
    checkout: CheckoutDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    # Bounded to SQLite's integers: a larger number cannot be bound to the query.
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="seq to page back from")] = None,
) -> list[dict[str, Any]]:
    """This station's journaled transactions, newest first."""

    def read() -> list[dict[str, Any]]:
        with reader(checkout.engine) as connection:
            ids = (
                connection.exec_driver_sql(
                    "SELECT id FROM journal WHERE station_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                    (checkout.station_id, before or 2**62, limit),
                )
                .scalars()
                .all()
            )
        records = (checkout.journal.get(i) for i in ids)
        # A row retention purged between the two reads is not listed.
        return [record_view(record) for record in records if record is not None]

    return await asyncio.to_thread(read)


@checkout_router.get("/transactions/{reference}")
async def get_transaction(reference: str, refunds: RefundsDep) -> dict[str, Any]:
    record = await asyncio.to_thread(refunds.find, reference)
    view = record_view(record)
    view["refunds"] = [record_view(r) for r in await asyncio.to_thread(refunds.refunds_of, record.id)]
    return view


@checkout_router.post("/transactions/{reference}/reprint")
async def reprint(reference: str, request: Request, refunds: RefundsDep) -> dict[str, Any]:
    state = request.app.state.agent
    record = await asyncio.to_thread(refunds.find, reference)
    job_id = None if state.receipts is None else await state.receipts.reprint(record)
    return {"transaction_id": record.id, "receipt_job_id": job_id}


@checkout_router.post("/refunds", status_code=201)
async def refund(body: RefundIn, refunds: RefundsDep) -> dict[str, Any]:
    lines = None if body.lines is None else [RefundLine(line.line, line.qty) for line in body.lines]
    record, job_id = await refunds.refund(body.transaction, lines, body.reason)
    return record_view(record) | {"receipt_job_id": job_id}
