"""The checkout part of the local API (docs/checkout.md): sessions, members, transactions, refunds, events."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field, StrictInt, field_validator, model_validator

from agent import pii
from agent.approval import Action, Approvals, Given
from agent.deps import (
    TOKEN_REQUIRED,
    V1_ERRORS,
    ApprovalsDep,
    CheckoutDep,
    ReceiptsDep,
    RefundsDep,
    accepts_token_in_query,
)
from agent.errors import (
    ApprovalLocked,
    ApprovalRefused,
    ApprovalRequired,
    BasketRefused,
    CouponRefused,
    DiskFull,
    InvalidPhone,
    InvalidRequest,
    NotFound,
    NotNow,
    Offline,
    PaymentFailed,
    PhoneLookupOff,
    ProviderNotEnabled,
    RedemptionNotAllowed,
    RefundInProgress,
    RefundRefused,
    SaleOpen,
    UnknownCode,
    error_responses,
)
from agent.identify import MemberNotFound
from agent.member_cache import PhoneLookupUnavailable
from agent.receipts import e_receipt_url
from agent.refunds import RefundLine
from agent.sale import (
    CodePayment,
    PricingView,
    Sale,
    SaleCoupon,
    SaleLine,
    SaleMember,
    SalePoints,
    SaleState,
    Tender,
)
from agent.screen_qr import qr_svg
from agent.settings import Settings

sessions_router = APIRouter(prefix="/v1/sessions", tags=["checkout"], dependencies=TOKEN_REQUIRED, responses=V1_ERRORS)
checkout_router = APIRouter(prefix="/v1", tags=["checkout"], dependencies=TOKEN_REQUIRED, responses=V1_ERRORS)


class ApprovalIn(BaseModel):
    """A supervisor's approval (docs/checkout.md, "Manager approval"): their PIN as typed, or their card as scanned."""

    pin: str | None = Field(None, pattern=r"^[0-9]{4,12}$", examples=["2468"])
    card: str | None = Field(None, min_length=1, max_length=128, description="the text of the supervisor's card")

    @model_validator(mode="after")
    def _one(self) -> ApprovalIn:
        if (self.pin is None) == (self.card is None):
            raise ValueError("send the supervisor's pin or their card, one of the two")
        return self

    def given(self) -> Given:
        return Given(pin=self.pin, card=self.card)


class Approved(BaseModel):
    approval: ApprovalIn | None = Field(None, description="a supervisor's, where the action needs one")


APPROVAL_ERRORS = (ApprovalRequired, ApprovalRefused, ApprovalLocked)


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
    list_price_fen: StrictInt | None = Field(
        None, ge=0, description="the item's list price when the cashier changed it: a price override (approval)"
    )


class BasketIn(Approved):
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


class RefundIn(Approved):
    transaction: str = Field(min_length=1, max_length=64, description="transaction id or receipt number")
    lines: list[RefundLineIn] | None = Field(None, description="null: everything not refunded yet")
    reason: str = Field(
        min_length=1,
        max_length=80,
        description="why, printed on the refund receipt: one of the till's reasons (顾客退货, 质量问题, 商品破损, "
        "价格错误, 整单退款) or the cashier's words",
        examples=["顾客退货"],
    )

    @field_validator("reason")
    @classmethod
    def said(cls, reason: str) -> str:
        if not reason.strip():
            raise ValueError("say why the refund is made: it is printed on the refund receipt")
        return reason.strip()


class Session(BaseModel):
    """A sale as the screens and the POS see it (docs/checkout.md, `Session`)."""

    id: str = Field(description="the transaction id the sale is journaled under, once paid")
    station_id: str
    state: SaleState
    version: int = Field(description="grows with every change: a screen keeps the newest it saw")
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    online: bool = Field(description="the till's view of central, brought up to date when the session is read")
    member: SaleMember | None
    guide_id: str | None
    lines: list[SaleLine]
    coupons: list[SaleCoupon]
    redeem_points: int
    pricing: PricingView | None
    tenders: list[Tender]
    paid_fen: int
    remaining_fen: int
    paid: bool = Field(description="journaled: paid in full (read it, or `state` closed; `paid` is an event's state)")
    change_fen: int
    payment: CodePayment | None = Field(description="the sale's latest code payment")
    points: SalePoints | None
    transaction_id: str | None
    receipt_no: str | None = Field(description="short, on the receipt's barcode, e.g. T012611230042")
    receipt_job_id: str | None
    e_receipt_url: str | None = Field(
        description="once paid, the e-receipt page the receipt's QR opens (null without the privacy key); "
        "null in an event's session: read the session"
    )
    e_receipt_qr_svg: str | None = Field(
        description="that link as a QR code, SVG markup for the screen: in GET /v1/sessions/{id} only"
    )
    price_approved_by: str | None = Field(description="the supervisor who approved the basket's price overrides")
    message: str | None


class Transaction(BaseModel):
    """A journaled transaction: a sale, a refund, or a void (a cancelled sale in which money moved)."""

    id: str
    kind: Literal["sale", "refund", "void"]
    receipt_no: str | None
    business_day: date
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    member_id: str | None
    total_fen: int
    points_earned: int
    points_redeemed: int
    body: dict[str, Any] = Field(
        description="as journaled: the wire contract's SaleBody, RefundBody or VoidBody by `kind` (docs/sync.md)"
    )


class RefundPart(BaseModel):
    kind: str = Field(examples=["wechat"])
    amount_fen: int
    state: str = Field(description="central's word so far: PROCESSING until the provider answers")


class RefundUnderWay(BaseModel):
    """A refund sent through central whose answer has not come: the agent finishes it by itself (event
    `refunded`), under the same refund numbers."""

    id: str = Field(description="the refund's transaction id once journaled")
    money_fen: int
    reason: str | None
    parts: list[RefundPart]


class TransactionWithRefunds(Transaction):
    refunds: list[Transaction] = Field(description="the refunds of this sale so far, oldest first")
    refund_in_progress: RefundUnderWay | None = Field(None, description="a refund of this sale still being finished")


class RefundMade(Transaction):
    receipt_job_id: str | None = Field(description="the refund receipt's print job; null without a printer")


class Reprinted(BaseModel):
    transaction_id: str
    receipt_job_id: str | None = Field(description="null without a printer")
    approved_by: str | None = Field(description="the supervisor who approved this reprint (the first needs none)")


class MemberFound(BaseModel):
    """A member as the till may show them: masked."""

    id: str
    display_name: str
    tier: str
    points: int
    phone_masked: str | None
    from_central: bool = Field(description="not in the till's cache: found by asking central")


def _session(sale: Sale, settings: Settings) -> Session:
    """The sale as answered; a paid one with its e-receipt link."""
    link = None
    if sale.transaction_id is not None:
        link = e_receipt_url(settings.e_receipt_template, sale.transaction_id, settings.privacy.key_bytes())
    return Session.model_validate(sale.view(link))


EVENT_STREAM: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "server-sent events (docs/checkout.md)"}
}
SESSION_STEP = error_responses(NotFound, NotNow)


@sessions_router.post("", status_code=201, responses=error_responses(SaleOpen, DiskFull))
async def open_session(checkout: CheckoutDep) -> Session:
    return _session(await checkout.open(), checkout.settings)


@sessions_router.get("/current", responses=error_responses(NotFound))
async def current_session(checkout: CheckoutDep) -> Session:
    if checkout.current is None:
        raise NotFound("no sale is open at this station")
    return _session(await checkout.look(checkout.current.id), checkout.settings)


@sessions_router.get("/{session_id}", responses=error_responses(NotFound))
async def get_session(session_id: str, checkout: CheckoutDep) -> Session:
    """The session; once paid, with its e-receipt QR code too (drawn here only: a step's answer stays quick)."""
    sale = await checkout.look(session_id)
    answer = _session(sale, checkout.settings)
    if answer.e_receipt_url is None:
        return answer
    return answer.model_copy(update={"e_receipt_qr_svg": await asyncio.to_thread(qr_svg, answer.e_receipt_url)})


@sessions_router.post(
    "/{session_id}/codes",
    responses=error_responses(
        BasketRefused, NotFound, NotNow, CouponRefused, UnknownCode, ProviderNotEnabled, PaymentFailed, Offline
    ),
)
async def enter_code(session_id: str, body: CodeIn, checkout: CheckoutDep) -> Session:
    return _session(await checkout.code(session_id, body.text), checkout.settings)


@sessions_router.post("/{session_id}/phone", responses=error_responses(NotFound, NotNow, InvalidPhone))
async def enter_phone(session_id: str, body: PhoneIn, checkout: CheckoutDep) -> Session:
    return _session(await checkout.phone(session_id, body.phone, body.confirmed), checkout.settings)


@sessions_router.put(
    "/{session_id}/basket",
    responses=error_responses(BasketRefused, NotFound, NotNow, CouponRefused, RedemptionNotAllowed, *APPROVAL_ERRORS),
)
async def set_basket(session_id: str, body: BasketIn, checkout: CheckoutDep, approvals: ApprovalsDep) -> Session:
    """The basket, whole, at every change. A line with `list_price_fen` other than its price is a price override:
    a new one needs `approval` when `approval.actions` has price_override."""
    lines = [SaleLine(**line.model_dump()) for line in body.lines]
    approved_by = await _checked(approvals, body.approval)
    return _session(await checkout.set_basket(session_id, lines, approved_by), checkout.settings)


class QuantityIn(BaseModel):
    qty: StrictInt = Field(ge=0, le=999, description="0 takes the line off")


@sessions_router.put("/{session_id}/lines/{index}", responses=error_responses(BasketRefused, NotFound, NotNow))
async def set_quantity(session_id: str, index: int, body: QuantityIn, checkout: CheckoutDep) -> Session:
    """A line's quantity, changed by the customer at a kiosk (0 takes it off); its price stays the catalogue's."""
    return _session(await checkout.set_quantity(session_id, index, body.qty), checkout.settings)


@sessions_router.put("/{session_id}/redemption", responses=error_responses(NotFound, NotNow, RedemptionNotAllowed))
async def set_redemption(session_id: str, body: RedemptionIn, checkout: CheckoutDep) -> Session:
    return _session(await checkout.set_redemption(session_id, body.points), checkout.settings)


@sessions_router.delete("/{session_id}/coupons/{code}", responses=SESSION_STEP)
async def remove_coupon(session_id: str, code: str, checkout: CheckoutDep) -> Session:
    return _session(await checkout.remove_coupon(session_id, code), checkout.settings)


@sessions_router.post(
    "/{session_id}/tenders",
    responses=error_responses(NotFound, NotNow, UnknownCode, ProviderNotEnabled, PaymentFailed, Offline),
)
async def take_tender(session_id: str, body: TenderIn, checkout: CheckoutDep) -> Session:
    sale = await checkout.tender(
        session_id, body.kind, body.amount_fen, body.tendered_fen, body.reference, body.auth_code
    )
    return _session(sale, checkout.settings)


@sessions_router.post("/{session_id}/payment/cancel", responses=SESSION_STEP)
async def cancel_payment(session_id: str, checkout: CheckoutDep) -> Session:
    return _session(await checkout.cancel_payment(session_id), checkout.settings)


@sessions_router.post("/{session_id}/cancel", responses=error_responses(NotFound, NotNow, *APPROVAL_ERRORS))
async def cancel_session(
    session_id: str, checkout: CheckoutDep, approvals: ApprovalsDep, body: Approved | None = None
) -> Session:
    """Cancel the sale. Once money was taken this is a void, which needs `approval` when `approval.actions` has void."""
    approved_by = await _checked(approvals, None if body is None else body.approval)
    return _session(await checkout.cancel(session_id, approved_by), checkout.settings)


@sessions_router.get(
    "/{session_id}/events",
    response_class=EventSourceResponse,
    dependencies=[Depends(accepts_token_in_query)],
    responses={**EVENT_STREAM, **error_responses(NotFound)},
)
async def session_events(session_id: str, checkout: CheckoutDep, last_event_id: Annotated[int | None, Header()] = None):
    checkout.get(session_id)  # 404 for an unknown session
    async for event in checkout.events.follow(last_event_id if last_event_id is not None else 0, session_id):
        yield ServerSentEvent(data=event.payload(), event=event.type, id=str(event.id))


@checkout_router.get(
    "/events",
    response_class=EventSourceResponse,
    dependencies=[Depends(accepts_token_in_query)],
    responses=EVENT_STREAM,
)
async def station_events(checkout: CheckoutDep, last_event_id: Annotated[int | None, Header()] = None):
    """Every session of this station; without Last-Event-ID, only what happens from now on."""
    async for event in checkout.events.follow(last_event_id):
        yield ServerSentEvent(data=event.payload(), event=event.type, id=str(event.id))


@checkout_router.get("/members/lookup", responses=error_responses(NotFound, NotNow, InvalidPhone))
async def lookup_member(checkout: CheckoutDep, card_no: str | None = None, phone: str | None = None) -> MemberFound:
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
    return MemberFound(
        id=member.id,
        display_name=member.display_name,
        tier=member.tier,
        points=member.points,
        phone_masked=member.phone_masked,
        from_central=found.from_central,
    )


@checkout_router.get("/transactions")
async def list_transactions(
    checkout: CheckoutDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    # Bounded to SQLite's integers: a larger number cannot be bound to the query.
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="seq to page back from")] = None,
) -> list[Transaction]:
    """This station's journaled transactions, newest first."""
    records = await checkout.journal.arecent(limit, before)
    return [Transaction.model_validate(record.view()) for record in records]


@checkout_router.get("/transactions/{reference}", responses=error_responses(NotFound))
async def get_transaction(reference: str, refunds: RefundsDep) -> TransactionWithRefunds:
    """One transaction by its id or receipt number, with its refunds so far."""
    record = await asyncio.to_thread(refunds.find, reference)
    view: dict[str, Any] = record.view()
    view["refunds"] = [r.view() for r in await asyncio.to_thread(refunds.refunds_of, record.id)]
    view["refund_in_progress"] = await refunds.in_progress(record.id)
    return TransactionWithRefunds.model_validate(view)


@checkout_router.post("/transactions/{reference}/reprint", responses=error_responses(NotFound, *APPROVAL_ERRORS))
async def reprint(
    reference: str, refunds: RefundsDep, receipts: ReceiptsDep, approvals: ApprovalsDep, body: Approved | None = None
) -> Reprinted:
    """Print the transaction's receipt again, marked 重打印 / reprint. The first reprint is free; the next need
    `approval` when `approval.actions` has reprint."""
    record = await asyncio.to_thread(refunds.find, reference)
    given = None if body is None or body.approval is None else body.approval.given()
    if receipts is None:
        return Reprinted(transaction_id=record.id, receipt_job_id=None, approved_by=None)
    if await receipts.reprints_of(record) >= 1:
        approved_by = await asyncio.to_thread(approvals.approved_by, Action.REPRINT, given)
    else:
        approved_by = await asyncio.to_thread(approvals.checked, given)
    job_id = await receipts.reprint(record, approved_by)
    return Reprinted(transaction_id=record.id, receipt_job_id=job_id, approved_by=approved_by)


@checkout_router.post(
    "/refunds",
    status_code=201,
    responses=error_responses(NotFound, RefundRefused, RefundInProgress, PaymentFailed, Offline, *APPROVAL_ERRORS),
)
async def refund(body: RefundIn, refunds: RefundsDep, approvals: ApprovalsDep) -> RefundMade:
    """Refund a sale, whole or by lines; money goes back the way it came (docs/checkout.md). Needs `approval` when
    `approval.actions` has refund."""
    lines = None if body.lines is None else [RefundLine(line.line, line.qty) for line in body.lines]
    given = None if body.approval is None else body.approval.given()
    approved_by = await asyncio.to_thread(approvals.approved_by, Action.REFUND, given)
    record, job_id = await refunds.refund(body.transaction, lines, body.reason, approved_by)
    return RefundMade.model_validate(record.view() | {"receipt_job_id": job_id})


async def _checked(approvals: Approvals, approval: ApprovalIn | None) -> str | None:
    """The approving supervisor, checked off the loop (scrypt); whether the step needs one is the sale's rule."""
    return None if approval is None else await asyncio.to_thread(approvals.checked, approval.given())
