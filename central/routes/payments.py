"""Code payments: identify the payer before charging, charge, follow, reverse, refund (docs/PAYMENTS.md).

Handlers are async: they wait on the gateway's tasks (which run in this process's event loop) without holding a
worker thread, so a long-poll costs nothing while it waits.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from central import contract
from central.deps import CurrentStore
from central.errors import CentralError
from central.payments.gateway import Gateway

router = APIRouter(prefix="/payments", tags=["payments"])

MAX_WAIT_SECONDS = 60
_ERRORS = {status: {"model": contract.ErrorBody} for status in (404, 409, 502)}


class GatewayUnavailable(CentralError):
    status = 503
    code = "unavailable"


def get_gateway(request: Request) -> Gateway:
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is None:
        raise GatewayUnavailable(
            "the payment gateway is not running (the service is starting or stopping); retry shortly"
        )
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
OutTradeNo = Annotated[str, Path(pattern=contract.OUT_TRADE_NO_PATTERN)]
OutRefundNo = Annotated[str, Path(pattern=contract.OUT_TRADE_NO_PATTERN)]
Wait = Annotated[
    float, Query(ge=0, le=MAX_WAIT_SECONDS, description="wait up to this many seconds for the state to change")
]


@router.post("/identify", responses={502: {"model": contract.ErrorBody}})
async def identify(
    request: contract.IdentifyRequest, store: CurrentStore, gateway: GatewayDep
) -> contract.IdentifyResult:
    """The member behind a payment code, before charging it (nothing is charged). `may_redeem` is always false:
    a payment code alone does not authorise spending points."""
    return await gateway.identify(store, request.auth_code)


@router.post(
    "",
    status_code=201,
    responses={
        200: {"model": contract.Payment, "description": "this out_trade_no was sent before: its payment"},
        **_ERRORS,
    },
)
async def pay(
    request: contract.PaymentRequest, response: Response, store: CurrentStore, gateway: GatewayDep, http: Request
) -> contract.Payment:
    """Charge a payment code. Answers within a few seconds with the state then: SUCCESS, FAILED (with a reason
    for the customer), or USERPAYING / UNKNOWN / PENDING, then follow it with `GET ...?wait=`. The same request
    again answers the same payment (200, `Idempotent-Replayed: true`) and never charges twice."""
    # The till's address as it reached central (WeChat Pay v3 wants the device's IP with the charge).
    payment, created = await gateway.pay(store, request, device_ip=http.client.host if http.client else None)
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return payment


@router.get("/{out_trade_no}", responses={404: {"model": contract.ErrorBody}})
async def get_payment(
    out_trade_no: OutTradeNo,
    store: CurrentStore,
    gateway: GatewayDep,
    wait: Wait = 0,
) -> contract.Payment:
    """A payment of this store. With `wait`, the answer comes as soon as its state changes (or after `wait`
    seconds with the state unchanged)."""
    if wait > 0:
        return await gateway.wait(store, out_trade_no, wait)
    return await gateway.get(store, out_trade_no)


@router.post("/{out_trade_no}/reverse", responses={404: {"model": contract.ErrorBody}})
async def reverse(out_trade_no: OutTradeNo, store: CurrentStore, gateway: GatewayDep) -> contract.Payment:
    """Give up on a payment (or take back a paid one): central reverses it at the provider, no earlier than 15 s
    after the charge and until the provider confirms. Answers REVERSING at once (treat as not paid), then
    REVERSED. A payment that already failed is answered as it is. A payment with refunds is not reversed (409
    `refunded`): refund the rest instead."""
    return await gateway.cancel(store, out_trade_no)


@router.post("/{out_trade_no}/void", responses={404: {"model": contract.ErrorBody}, 409: {"model": contract.ErrorBody}})
async def void(
    out_trade_no: OutTradeNo, request: contract.PaymentVoid, store: CurrentStore, gateway: GatewayDep
) -> contract.Payment:
    """Give up a payment whether central has seen it or not — what a till does when it cannot tell whether its
    charge left the store. A payment central holds is reversed as by `.../reverse` (REVERSING, then REVERSED); a
    number central has never seen is recorded as given up (FAILED, code `VOIDED`) and a `POST /v1/payments` with
    it arriving later is refused (409 `payment_voided`), so it is never charged. Safe to send again."""
    return await gateway.void(store, out_trade_no, request)


@router.post(
    "/{out_trade_no}/refunds",
    status_code=201,
    responses={
        200: {"model": contract.Refund, "description": "this out_refund_no was sent before: its refund"},
        404: {"model": contract.ErrorBody},
        409: {
            "model": contract.ErrorBody,
            "description": "`not_paid`: the payment is not SUCCESS · `refund_exceeds_payment`: with the refunds before "
            "(those not FAILED) it adds up to more than was paid · `conflict`: this out_refund_no is another refund",
        },
    },
)
async def refund(
    out_trade_no: OutTradeNo,
    request: contract.RefundRequest,
    response: Response,
    store: CurrentStore,
    gateway: GatewayDep,
) -> contract.Refund:
    """Give back part or all of a paid payment, through the provider it was paid with. Answers with the
    provider's first answer: SUCCESS, FAILED (with a reason), or PROCESSING (WeChat always: the money is on its
    way; central follows it), then `GET .../refunds/{out_refund_no}?wait=`. The same request again answers the
    same refund (200, `Idempotent-Replayed: true`) and never refunds twice."""
    answer, created = await gateway.refund(store, out_trade_no, request)
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return answer


@router.get("/{out_trade_no}/refunds/{out_refund_no}", responses={404: {"model": contract.ErrorBody}})
async def get_refund(
    out_trade_no: OutTradeNo, out_refund_no: OutRefundNo, store: CurrentStore, gateway: GatewayDep, wait: Wait = 0
) -> contract.Refund:
    """A refund of a payment of this store. With `wait`, the answer comes as soon as its state changes (or after
    `wait` seconds with the state unchanged)."""
    if wait > 0:
        return await gateway.wait_refund(store, out_trade_no, out_refund_no, wait)
    return await gateway.get_refund(store, out_trade_no, out_refund_no)
