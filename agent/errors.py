"""The failures the local API answers with, as one tree (docs/checkout.md, "Errors").

Each class carries its HTTP status and a stable `code` for programs; an instance carries `message` (English, for
the cashier), `message_zh` (Chinese, for the customer, when there is one) and any extra fields the answer shows
(`session_id` of the sale already open). One exception handler (`agent.api.create_app`) answers every one of them
as `ErrorBody`. Callers catch at the level they can act on: `PaymentInProgress`, all of `NotNow`, or `AgentError`.

Lower layers keep their own exceptions (`CentralError`, `MemberCodeError`, `PhoneLookupUnavailable`,
`JobStateError`, ...); the checkout, the refunds and the routes re-raise them here as the most specific class.

AgentError                      500 internal
├── Internal                    500 internal: a bug, answered in the API's own shape
├── Unauthorized                401 unauthorized
├── NotFound                    404 not_found
├── MethodNotAllowed            405 method_not_allowed
├── InvalidRequest              422 invalid_request
│   ├── BasketRefused           400 bad_basket
│   ├── UnknownCode             422 unknown_code
│   ├── ProviderNotEnabled      422 provider_not_enabled
│   ├── ConsentRequired         422 consent_required: joining without the customer's consent
│   └── InvalidPhone            422 invalid_phone
├── ApprovalRequired            403 approval_required: the action needs a supervisor's PIN or card
├── ApprovalRefused             403 approval_refused: not a supervisor's PIN or card (`tries_left`)
├── ApprovalLocked              423 approval_locked: too many wrong tries (`retry_after_s`)
├── Conflict                    409 conflict
│   ├── NotSimulated            409 conflict: a scan handed to a real scanner
│   ├── PrintJobConflict        409 conflict: a print job action its state does not allow
│   ├── SaleOpen                409 sale_open
│   ├── CouponRefused           409 coupon_not_usable
│   ├── RedemptionNotAllowed    409 redemption_refused
│   ├── RefundRefused           409 refund_refused
│   ├── RefundInProgress        409 refund_in_progress
│   ├── NoticeChanged           409 notice_changed: joining under a privacy notice no longer shown
│   ├── IdempotencyMismatch     409 idempotency_mismatch: a key sent again with another request
│   ├── IdempotencyInProgress   409 idempotency_in_progress: a key whose request is still being answered
│   └── NotNow                  409 not_now: the step means nothing in the sale's state
│       ├── SaleClosed
│       ├── PaymentStarted
│       ├── BasketMissing
│       ├── PaymentInProgress
│       ├── NothingLeftToPay
│       ├── NoPaymentInProgress
│       ├── TenderNotTaken
│       ├── MemberCodeRefused
│       ├── PayerNotIdentified
│       ├── ProductNotInCatalogue
│       └── PhoneLookupOff
├── PaymentFailed               502 payment_failed
└── Unavailable                 503 unavailable: the agent is starting or stopping
    ├── Offline                 503 offline
    │   └── SyncFailed          503 offline: "sync now" could not reach central, or central refused
    └── DiskFull                503 disk_full
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    """Body of every 4xx/5xx answer of the local API."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="a stable code for programs (docs/checkout.md, Errors)", examples=["not_now"])
    message: str = Field(description="why, in English, for the cashier")
    message_zh: str | None = Field(description="why, in Chinese, for the customer; null when there is no word for them")
    details: list[dict[str, Any]] | None = Field(
        None, description="invalid_request: one entry per field (`loc`, `msg`, `type`); the input is never echoed"
    )
    session_id: str | None = Field(None, description="sale_open: the sale open at this station")
    action: str | None = Field(None, description="approval_required: refund, void, price_override or reprint")
    tries_left: int | None = Field(None, description="approval_refused: wrong tries left before the lock-out")
    retry_after_s: int | None = Field(None, description="approval_locked: seconds until a supervisor may try again")


class AgentError(Exception):
    """A request the agent cannot do; `message` says why for the cashier, `message_zh` for the customer."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, message: str, message_zh: str | None = None, **extra: Any):
        super().__init__(message)
        self.message = message
        self.message_zh = message_zh
        self.extra = extra

    def body(self) -> ErrorBody:
        return ErrorBody(error=self.code, message=self.message, message_zh=self.message_zh, **self.extra)


class Internal(AgentError):
    """A bug in the agent: its log has the traceback; what was saved before it is kept."""


class Unauthorized(AgentError):
    status, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class NotFound(AgentError):
    """No such session, transaction, member, coupon on the sale, device, print job or preview."""

    status, code = 404, "not_found"


class MethodNotAllowed(AgentError):
    """A path asked with a method it does not take (the framework's own answer)."""

    status, code = 405, "method_not_allowed"


# --- the request as sent cannot be taken: ask for another input --------------------------------------------------


class InvalidRequest(AgentError):
    """Fields missing, of the wrong type or out of range; `details` lists them when the framework found them."""

    status, code = 422, "invalid_request"


class BasketRefused(InvalidRequest):
    status, code = 400, "bad_basket"


class UnknownCode(InvalidRequest):
    status, code = 422, "unknown_code"


class ProviderNotEnabled(InvalidRequest):
    status, code = 422, "provider_not_enabled"


class ConsentRequired(InvalidRequest):
    status, code = 422, "consent_required"


class InvalidPhone(InvalidRequest):
    status, code = 422, "invalid_phone"


# --- a supervisor must approve -----------------------------------------------------------------------------------


class ApprovalRequired(AgentError):
    """Sent without `approval` while `approval.actions` names the action: ask a supervisor and send it again."""

    status, code = 403, "approval_required"
    ACTION_ZH: ClassVar[dict[str, str]] = {
        "refund": "退款",
        "void": "撤销已付款的交易",
        "price_override": "改价",
        "reprint": "再次重打小票",
    }

    @classmethod
    def of(cls, action: str) -> ApprovalRequired:
        return cls(
            f"{action.replace('_', ' ')} needs a supervisor's approval: send approval.pin or approval.card",
            f"{cls.ACTION_ZH[action]}需要主管授权",
            action=action,
        )


class ApprovalRefused(AgentError):
    status, code = 403, "approval_refused"


class ApprovalLocked(AgentError):
    status, code = 423, "approval_locked"


# --- not in this state ----------------------------------------------------------------------------------------


class Conflict(AgentError):
    status, code = 409, "conflict"


class NotSimulated(Conflict):
    """Only `sim://` scanners take scans over the API."""


class PrintJobConflict(Conflict):
    """cancel, release or mark-printed asked of a print job whose state does not allow it."""


class SaleOpen(Conflict):
    code = "sale_open"


class NoticeChanged(Conflict):
    """Joining with a notice version other than the one the agent shows now: show the notice again."""

    code = "notice_changed"


class CouponRefused(Conflict):
    code = "coupon_not_usable"


class RedemptionNotAllowed(Conflict):
    code = "redemption_refused"


class RefundRefused(Conflict):
    code = "refund_refused"


class RefundInProgress(Conflict):
    """Sent, answer not back: the till finishes it by itself; asking for the same refund again shows it."""

    code = "refund_in_progress"


class IdempotencyMismatch(Conflict):
    """An Idempotency-Key sent again with another request."""

    code = "idempotency_mismatch"


class IdempotencyInProgress(Conflict):
    """An Idempotency-Key sent again while its first request is still being answered."""

    code = "idempotency_in_progress"


class NotNow(Conflict):
    """The step means nothing in the sale's state; each subclass names which."""

    code = "not_now"


class SaleClosed(NotNow):
    """The session is paid, closed or cancelled: nothing more can be done in it."""


class PaymentStarted(NotNow):
    """Member, basket, coupons or points cannot change once money was taken or a code payment is open."""


class BasketMissing(NotNow):
    """A tender before the basket was set."""


class PaymentInProgress(NotNow):
    """A tender while a code payment is still open."""


class NothingLeftToPay(NotNow):
    """A tender for a sale paid in full."""


class NoPaymentInProgress(NotNow):
    """Cancel payment with no code payment open."""


class TenderNotTaken(NotNow):
    """A cash, card or other tender that does not fit what is left to pay (more than left, no reference...)."""


class MemberCodeRefused(NotNow):
    """A member code used before, expired, forged or signed by a key the till does not know."""


class PayerNotIdentified(NotNow):
    """A payment code scanned before the basket: central could not be asked who the payer is."""


class ProductNotInCatalogue(NotNow):
    """A product scanned at a station whose catalogue does not have it: the POS adds items."""


class PhoneLookupOff(NotNow):
    """Members cannot be found by phone at this till: no phone hash key is configured."""


# --- elsewhere -----------------------------------------------------------------------------------------------


class PaymentFailed(AgentError):
    """The provider or central refused the payment or refund (`message_zh` says why, e.g. 余额不足)."""

    status, code = 502, "payment_failed"


class Unavailable(AgentError):
    """The agent is starting or stopping: retry shortly."""

    status, code = 503, "unavailable"


class Offline(Unavailable):
    """Code payment, or a step only central can do, while central cannot be reached."""

    code = "offline"


class SyncFailed(Offline):
    """The "sync now" button: central could not be reached, or refused."""


class DiskFull(Unavailable):
    """Below `storage.min_free_mb` free no new sale starts (agent/disk_space.py)."""

    code = "disk_full"


def error_responses(*errors: type[AgentError]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route that may answer these errors: one `ErrorBody` per status, its description
    naming the codes. A 422 also names `invalid_request` (any field may be refused as sent) and a 503 `unavailable`
    (the agent is starting), which every /v1 route may answer: a route's own entry replaces its router's."""
    for always in (InvalidRequest, Unavailable):
        if any(error.status == always.status for error in errors):
            errors = (always, *errors)
    codes: dict[int, list[str]] = {}
    for error in errors:
        if error.code not in codes.setdefault(error.status, []):
            codes[error.status].append(error.code)
    return {
        status: {"model": ErrorBody, "description": ", ".join(f"`{code}`" for code in codes[status])}
        for status in sorted(codes)
    }
