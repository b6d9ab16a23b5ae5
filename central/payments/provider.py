"""What the gateway needs from a payment provider, whatever its wire protocol.

A provider client speaks one protocol (WeChat Pay API v2 XML or v3 JSON, Alipay OpenAPI with RSA2) against a base URL from
settings: the real provider in production, a simulator (central/payments/simulators/) in the demo and tests.
Clients translate the protocol's answers into the outcomes below and raise ProviderError subclasses for
failures of the exchange itself; the gateway owns the state machine and never sees XML or JSON.

Refunds (of a paid order, whole or in parts) have outcomes of their own (`RefundStatus`): both providers keep a
refund by the merchant's refund number (WeChat `out_refund_no`, Alipay `out_request_no`), so sending the same
refund again never refunds twice, and an exchange that failed is settled by `refund_query`, then by sending the
same refund again if the provider never got it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Literal, Protocol

ProviderName = Literal["wechat", "alipay"]


class Outcome(StrEnum):
    SUCCESS = "SUCCESS"  # paid: the money moved
    USERPAYING = "USERPAYING"  # waiting for the customer (password on the phone): query again
    UNKNOWN = "UNKNOWN"  # the provider could not say (SYSTEMERROR, BANKERROR, 20000): query again
    FAILED = "FAILED"  # definitely not paid (code invalid/expired, insufficient funds, ...)
    REVERSED = "REVERSED"  # reversed / cancelled / closed: not paid, or paid and given back
    NOT_FOUND = "NOT_FOUND"  # the provider has no such order (query only)


class ProviderError(Exception):
    """The exchange with the provider failed; the outcome of the request is not known from this answer."""


class ProviderUnreachable(ProviderError):
    """Connection refused, DNS, or no answer within the timeout (the request may have been processed)."""


class ProviderBadResponse(ProviderError):
    """Not the protocol: unparseable body, missing fields, or a response signature that does not verify."""


class ProviderRejected(ProviderError):
    """The provider refused the request itself before any business processing (WeChat `return_code` FAIL: bad
    signature, parameters, merchant configuration). Optional: a client may raise plain ProviderError instead."""


@dataclass(frozen=True)
class Charge:
    out_trade_no: str  # <= 32 chars [A-Za-z0-9_-]; a new one for every new auth code
    auth_code: str
    amount_fen: int  # > 0
    description: str  # shown to the payer, e.g. "演示门店 消费"
    store_id: str
    station_id: str  # WeChat device_info = f"{store_id}-{station_id}"
    # Aware UTC: central gives up on the charge then (the payment limit after it was sent). The client asks the
    # provider to refuse or close the order from then on (WeChat time_expire, Alipay time_expire/timeout_express),
    # no earlier than the provider allows; None sends no expiry.
    expires_at: datetime | None = None
    # The till's IP address as central saw the request (WeChat Pay v3 scene_info.device_ip); None: not known.
    device_ip: str | None = None
    # WeChat Pay v3 `attach` (商户数据包, at most 128 characters), e.g. the member card join fields of 下单同步入会
    # (central/payments/brand_cards.py); None sends none. The other clients ignore it.
    attach: str | None = None


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    out_trade_no: str
    provider_trade_no: str | None = None  # WeChat transaction_id / Alipay trade_no
    payer_id: str | None = None  # WeChat openid (of the merchant's appid) / Alipay buyer_user_id
    amount_fen: int | None = None
    paid_at: datetime | None = None  # aware UTC
    code: str | None = None  # the provider's error code, e.g. AUTHCODEEXPIRE, NOTENOUGH, ACQ.PAYMENT_AUTH_CODE_INVALID
    reason_zh: str | None = None  # for the customer, in Chinese
    reason_en: str | None = None  # and in English


@dataclass(frozen=True)
class ReverseResult:
    done: bool  # the order is reversed/cancelled (or was never paid)
    recall: bool  # the provider asks to call reverse again (WeChat recall=Y, Alipay retry_flag=Y)
    code: str | None = None


@dataclass(frozen=True)
class BillRow:
    """One row of a provider's settlement bill."""

    out_trade_no: str
    provider_trade_no: str
    status: Literal["SUCCESS", "REFUND", "REVOKED"]
    amount_fen: int
    paid_at: datetime  # aware UTC
    payer_id: str | None = None
    device: str | None = (
        None  # optional: WeChat device_info (store-station), Alipay terminal_id; attributes a row to a store
    )


class RefundStatus(StrEnum):
    SUCCESS = "SUCCESS"  # the money is back with the payer
    PROCESSING = "PROCESSING"  # accepted, on its way (WeChat: minutes to days): query again
    FAILED = "FAILED"  # definitely not refunded (refused, or closed at the provider): `reason_*` says why
    UNKNOWN = "UNKNOWN"  # the provider could not say (SYSTEMERROR, ACQ.SYSTEM_ERROR): query, or send the same again
    NOT_FOUND = "NOT_FOUND"  # the provider has no such refund (query only): it never arrived, send it again


@dataclass(frozen=True)
class RefundOrder:
    """A refund to send: `amount_fen` of the paid order `out_trade_no` (which was `total_fen`) goes back to the
    payer. `out_refund_no` names it at the provider; the same number again is the same refund."""

    out_trade_no: str
    out_refund_no: str  # <= 32 chars [A-Za-z0-9_-], unique per merchant
    total_fen: int  # what the order was paid (WeChat wants it with every refund)
    amount_fen: int  # > 0; this refund only, not the sum of the order's refunds
    reason: str | None = None  # shown to the payer (WeChat refund_desc, Alipay refund_reason)


@dataclass(frozen=True)
class RefundResult:
    status: RefundStatus
    out_refund_no: str
    provider_refund_no: str | None = None  # WeChat refund_id / Alipay trade_no (Alipay gives refunds no number)
    amount_fen: int | None = None  # this refund, as the provider states it
    refunded_at: datetime | None = None  # aware UTC, when SUCCESS and the provider says when
    code: str | None = (
        None  # the provider's code or status (NOTENOUGH, REFUNDCLOSE, ACQ.SELLER_BALANCE_NOT_ENOUGH, ...)
    )
    reason_zh: str | None = None
    reason_en: str | None = None


class Provider(Protocol):
    name: ProviderName

    async def charge(self, charge: Charge) -> Result: ...

    async def query(self, out_trade_no: str) -> Result: ...

    async def reverse(self, out_trade_no: str) -> ReverseResult: ...

    async def identify(self, auth_code: str) -> str | None:
        """The payer's id (WeChat authcodetoopenid; Alipay: None, its flow gives the buyer id only with a charge)."""
        ...

    async def bill(self, day: date) -> list[BillRow]: ...

    async def refund(self, order: RefundOrder) -> RefundResult:
        """Ask for a refund of a paid order. Sending the same `out_refund_no` again is the same refund."""
        ...

    async def refund_query(self, out_trade_no: str, out_refund_no: str) -> RefundResult:
        """Where a refund stands; NOT_FOUND when the provider never got it."""
        ...
