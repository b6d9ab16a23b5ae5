"""Alipay face-to-face code payment (当面付, `scene=bar_code`) over the Alipay OpenAPI gateway (`gateway.do`).

Every request is one form POST of the common parameters (app_id, method, format, charset, sign_type, timestamp,
version) plus `biz_content` (JSON), signed RSA2 = SHA256withRSA, PKCS#1 v1.5, base64, over the signing string:
every non-empty parameter except `sign`, sorted by key, `k=v` joined by `&`. The answer is
`{"<method with _>_response": {...}, "sign": "..."}`; the signature covers the exact bytes of the response
object as they stand in the body, so it is cut out of the body, never re-serialised.

Money goes over the wire as a yuan string with two decimals ("12.30"); here it is integer fen, converted with
Decimal only. Alipay's times are Asia/Shanghai wall-clock "yyyy-MM-dd HH:mm:ss"; here they are aware UTC.

A charge carries its expiry (when central gives up on it) as `time_expire`, absolute, so a trade.pay that reaches
Alipay late cannot be paid after the till gave up, and as `timeout_express` (whole minutes, 1m at least), counted
from the trade's creation at Alipay, for a gateway that knows only that one. Alipay uses `time_expire` when both
are given.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import logging
import math
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from central.payments.provider import (
    BillRow,
    Charge,
    Outcome,
    ProviderBadResponse,
    ProviderName,
    ProviderRejected,
    ProviderUnreachable,
    RefundOrder,
    RefundResult,
    RefundStatus,
    Result,
    ReverseResult,
)

log = logging.getLogger(__name__)

# China has kept +08:00 without daylight saving since 1991: a fixed offset is exact and needs no tz database.
SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_TIMEOUT_S = 10.0
PRODUCTION_GATEWAY = "https://openapi.alipay.com/gateway.do"
# timeout_express takes 1m to 15d; time_expire is kept as far ahead, plus an allowance for the way there and a clock
# a few seconds apart from Alipay's.
SHORTEST_EXPIRY = timedelta(minutes=1)
EXPIRY_ALLOWANCE = timedelta(seconds=10)

_YUAN = re.compile(r"^-?\d{1,12}(\.\d{1,2})?$")
_WS = re.compile(r"[ \t\r\n]*")


class AlipayRejected(ProviderRejected, ProviderBadResponse):
    """The gateway refused the request itself (40001 missing argument, 40002 invalid argument or signature,
    40003/40006 no permission, an unsigned error answer, or a 40004 that says nothing about the order).

    Nothing about the order can be learned from this answer: fix the configuration, or query. Both a
    ProviderRejected (as WeChat's return_code FAIL) and a ProviderBadResponse (unsigned, so not to be trusted).
    """

    def __init__(self, message: str, *, code: str | None = None, sub_code: str | None = None, signed: bool = True):
        super().__init__(message)
        self.code = code
        self.sub_code = sub_code
        self.signed = signed


# --- money and time ------------------------------------------------------------------------------------------


def fen_to_yuan(fen: int) -> str:
    """1 -> "0.01", 1230 -> "12.30": the exact two-decimal yuan string Alipay wants."""
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise TypeError(f"amount must be integer fen, got {fen!r}")
    return str((Decimal(fen) / 100).quantize(Decimal("0.01")))


def yuan_to_fen(text: str) -> int:
    """ "12.3" or "12.30" -> 1230, "-35.80" -> -3580 (bill refund rows). More than two decimals, exponents or
    anything else that is not a plain decimal is refused rather than rounded."""
    cleaned = text.strip() if isinstance(text, str) else ""
    if not _YUAN.match(cleaned):
        raise ValueError(f"not a yuan amount with at most two decimals: {text!r}")
    return int(Decimal(cleaned) * 100)


def format_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: give an aware one")
    return moment.astimezone(SHANGHAI).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """Alipay's Shanghai wall-clock "2024-05-01 12:00:00" -> aware UTC."""
    return datetime.strptime(text.strip(), TIME_FORMAT).replace(tzinfo=SHANGHAI).astimezone(UTC)


def expiry_fields(expires_at: datetime, now: datetime) -> dict[str, str]:
    """trade.pay's `time_expire` (never before `expires_at`, rounded up to the second) and `timeout_express` (the
    same span in whole minutes), each no shorter than Alipay allows."""
    absolute = max(expires_at, now + SHORTEST_EXPIRY + EXPIRY_ALLOWANCE)
    whole = absolute.replace(microsecond=0)
    absolute = whole if whole == absolute else whole + timedelta(seconds=1)
    minutes = max(1, math.ceil((expires_at - now) / timedelta(minutes=1)))
    return {"time_expire": format_time(absolute), "timeout_express": f"{minutes}m"}


# --- RSA2 ----------------------------------------------------------------------------------------------------


def signing_string(params: Mapping[str, str | None]) -> str:
    """Non-empty parameters except `sign`, sorted by key, `k=v` joined by `&` (values raw, not URL-encoded)."""
    return "&".join(
        f"{key}={value}" for key, value in sorted(params.items()) if key != "sign" and value not in (None, "")
    )


def _pem_body(text: str | bytes) -> tuple[bytes, bool]:
    raw = text.encode() if isinstance(text, str) else text
    raw = raw.strip()
    return raw, raw.startswith(b"-----BEGIN")


def load_private_key(text: str | bytes) -> rsa.RSAPrivateKey:
    """A PEM (PKCS#8 or PKCS#1), or the bare base64 that Alipay's key tool hands out."""
    raw, is_pem = _pem_body(text)
    try:
        key = (
            serialization.load_pem_private_key(raw, None)
            if is_pem
            else serialization.load_der_private_key(base64.b64decode(raw), None)
        )
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError(f"not an RSA private key (PEM or base64 DER): {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the private key is not RSA: Alipay RSA2 needs an RSA key")  # noqa: TRY004 - a bad setting
    return key


def load_public_key(text: str | bytes) -> rsa.RSAPublicKey:
    """A PEM public key or certificate, or the bare base64 public key shown in Alipay's console."""
    raw, is_pem = _pem_body(text)
    try:
        if raw.startswith(b"-----BEGIN CERTIFICATE"):
            key = x509.load_pem_x509_certificate(raw).public_key()
        elif is_pem:
            key = serialization.load_pem_public_key(raw)
        else:
            key = serialization.load_der_public_key(base64.b64decode(raw))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError(f"not an RSA public key (PEM or base64 DER): {exc}") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the public key is not RSA: Alipay RSA2 needs an RSA key")  # noqa: TRY004 - a bad setting
    return key


def rsa2_sign(content: str | bytes, key: rsa.RSAPrivateKey) -> str:
    data = content.encode("utf-8") if isinstance(content, str) else content
    return base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def rsa2_verify(content: str | bytes, signature: str, key: rsa.RSAPublicKey) -> bool:
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        key.verify(base64.b64decode(signature, validate=True), data, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


# --- the answer envelope -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    raw: str  # the member's value exactly as it stands in the body
    value: Any


def top_level_members(text: str) -> dict[str, _Member]:
    """The members of a top-level JSON object, each with its raw text. Raises ValueError when the text is not
    one JSON object or repeats a key (a repeated key could make the verified and the used value differ)."""
    decoder = json.JSONDecoder()
    members: dict[str, _Member] = {}
    pos = _WS.match(text, 0).end()
    if not text.startswith("{", pos):
        raise ValueError("not a JSON object")
    pos = _WS.match(text, pos + 1).end()
    if text.startswith("}", pos):
        pos += 1
    else:
        while True:
            if not text.startswith('"', pos):
                raise ValueError("object key expected")
            key, pos = decoder.raw_decode(text, pos)
            pos = _WS.match(text, pos).end()
            if not text.startswith(":", pos):
                raise ValueError("':' expected")
            start = _WS.match(text, pos + 1).end()
            value, pos = decoder.raw_decode(text, start)
            if key in members:
                raise ValueError(f"key {key!r} repeated")
            members[key] = _Member(text[start:pos], value)
            pos = _WS.match(text, pos).end()
            if text.startswith(",", pos):
                pos = _WS.match(text, pos + 1).end()
                continue
            if text.startswith("}", pos):
                pos += 1
                break
            raise ValueError("',' or '}' expected")
    if _WS.match(text, pos).end() != len(text):
        raise ValueError("text after the JSON object")
    return members


def response_key(method: str) -> str:
    return method.replace(".", "_") + "_response"


def verified_node(body: bytes, method: str, alipay_key: rsa.RSAPublicKey) -> dict[str, Any]:
    """The `*_response` object of an answer, after checking Alipay's signature over its exact bytes."""
    try:
        text = body.decode("utf-8")
        members = top_level_members(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProviderBadResponse(f"alipay {method}: the answer is not JSON ({exc}): {body[:200]!r}") from exc
    member = members.get(response_key(method)) or members.get("error_response")
    if member is None or not isinstance(member.value, dict):
        raise ProviderBadResponse(f"alipay {method}: no {response_key(method)} object in the answer: {text[:200]!r}")
    node: dict[str, Any] = member.value
    sign = members["sign"].value if "sign" in members else None
    if not isinstance(sign, str) or not sign:
        code = str(node.get("code", ""))
        if code and code != "10000":
            # The gateway leaves its own refusals (40001, 40002 invalid signature, ...) unsigned.
            raise AlipayRejected(
                f"alipay {method}: refused, unsigned: {_describe(node)}",
                code=code,
                sub_code=node.get("sub_code"),
                signed=False,
            )
        raise ProviderBadResponse(f"alipay {method}: the answer carries no signature")
    if not rsa2_verify(member.raw.encode("utf-8"), sign, alipay_key):
        raise ProviderBadResponse(
            f"alipay {method}: the answer's signature does not verify with Alipay's public key "
            "(tampered, or alipay_public_key_path holds the wrong key)"
        )
    return node


_AUTH_CODE_IN_TEXT = re.compile(r'(auth_code"?\s*[:=]\s*"?)\d+')


def _describe(node: Mapping[str, Any]) -> str:
    parts = [str(node.get(k)) for k in ("code", "msg", "sub_code", "sub_msg") if node.get(k)]
    # An invalid-signature sub_msg quotes the whole signing string, auth code included: keep it out of logs.
    return _AUTH_CODE_IN_TEXT.sub(r"\1***", " ".join(parts)) or "no code"


# --- what the codes mean for the customer --------------------------------------------------------------------


@dataclass(frozen=True)
class Meaning:
    outcome: Outcome
    zh: str  # for the customer and the cashier
    en: str


PAID = Meaning(Outcome.SUCCESS, "支付成功", "Paid")
WAITING = Meaning(
    Outcome.USERPAYING, "等待顾客在手机上输入密码确认", "Waiting for the customer to confirm on their phone"
)
CONFIRMING = Meaning(Outcome.UNKNOWN, "正在确认支付结果，请稍候", "Confirming the payment with Alipay; please wait")
CLOSED = Meaning(Outcome.REVERSED, "交易已关闭（未付款或已退回）", "The trade is closed (not paid, or paid back)")
NOT_FOUND = Meaning(Outcome.NOT_FOUND, "支付宝无此订单", "Alipay has no such order")
_FIX_CONFIG = Meaning(
    Outcome.FAILED,
    "支付请求被拒绝（商户配置错误），请使用其他方式付款并联系管理员",
    "The payment was refused (merchant set-up); pay another way and tell the store manager",
)

# sub_code of a 40004 answer to alipay.trade.pay -> what it means for the sale. A sub_code not listed is
# UNKNOWN: the gateway then queries, which is always safe, where guessing "failed" could lose a payment.
PAY_SUB_CODES: dict[str, Meaning] = {
    "ACQ.SYSTEM_ERROR": CONFIRMING,  # Alipay: "系统异常，请重新发起请求" - the outcome is not known
    "ACQ.TRADE_HAS_SUCCESS": Meaning(Outcome.UNKNOWN, "该订单已支付", "This order is already paid"),  # a query gives it
    # The out_trade_no exists with another amount or code: what became of it is for the query to say.
    "ACQ.CONTEXT_INCONSISTENT": Meaning(
        Outcome.UNKNOWN, "订单号已使用，正在确认结果", "This order number was used before; confirming its result"
    ),
    "ACQ.TRADE_HAS_CLOSE": Meaning(
        Outcome.REVERSED, "订单已关闭，请重新下单", "The order is closed; start a new payment"
    ),
    "ACQ.PAYMENT_AUTH_CODE_INVALID": Meaning(
        Outcome.FAILED,
        "付款码无效或已过期，请顾客刷新付款码后重新扫码",
        "The payment code is invalid or expired; ask the customer to refresh it and scan again",
    ),
    "ACQ.BUYER_BALANCE_NOT_ENOUGH": Meaning(
        Outcome.FAILED,
        "余额不足，请顾客在支付宝中更换付款方式",
        "Insufficient balance; ask the customer to choose another payment method in Alipay",
    ),
    "ACQ.BUYER_BANKCARD_BALANCE_NOT_ENOUGH": Meaning(
        Outcome.FAILED,
        "银行卡余额不足，请更换银行卡或其他方式付款",
        "Insufficient card balance; choose another card or pay another way",
    ),
    "ACQ.BUYER_PAYMENT_AMOUNT_DAY_LIMIT_ERROR": Meaning(
        Outcome.FAILED, "超出顾客当日付款限额，请更换付款方式", "The customer's daily limit is reached; pay another way"
    ),
    "ACQ.BUYER_PAYMENT_AMOUNT_MONTH_LIMIT_ERROR": Meaning(
        Outcome.FAILED,
        "超出顾客当月付款限额，请更换付款方式",
        "The customer's monthly limit is reached; pay another way",
    ),
    "ACQ.BUYER_ENABLE_STATUS_FORBID": Meaning(
        Outcome.FAILED,
        "顾客支付宝账户不可用，请更换付款方式",
        "The customer's Alipay account cannot pay; pay another way",
    ),
    "ACQ.PAYMENT_REQUEST_HAS_RISK": Meaning(
        Outcome.FAILED,
        "支付存在风险被拦截，请更换付款方式",
        "Alipay's risk control declined the payment; pay another way",
    ),
    "ACQ.NO_PAYMENT_INSTRUMENTS_AVAILABLE": Meaning(
        Outcome.FAILED, "没有可用的付款方式，请更换付款方式", "No payment method available in Alipay; pay another way"
    ),
    "ACQ.ERROR_BALANCE_PAYMENT_DISABLE": Meaning(
        Outcome.FAILED, "余额支付已关闭，请更换付款方式", "Balance payment is switched off; pay another way"
    ),
    "ACQ.PAYMENT_FAIL": Meaning(Outcome.FAILED, "支付失败，请重新付款", "The payment failed; try again"),
    "ACQ.TRADE_BUYER_NOT_MATCH": Meaning(
        Outcome.FAILED,
        "付款人与首次付款不一致，请使用原付款账户",
        "The payer differs from the first attempt; use the same Alipay account",
    ),
    "ACQ.BUYER_SELLER_EQUAL": Meaning(
        Outcome.FAILED, "买家与卖家不能为同一账户", "Buyer and seller are the same account"
    ),
    "ACQ.TOTAL_FEE_EXCEED": Meaning(
        Outcome.FAILED, "金额超出支付宝限额，请更换付款方式", "The amount exceeds Alipay's limit; pay another way"
    ),
    **{
        code: _FIX_CONFIG
        for code in ("ACQ.INVALID_PARAMETER", "ACQ.ACCESS_FORBIDDEN", "ACQ.PARTNER_ERROR", "ACQ.EXIST_FORBIDDEN_WORD")
    },
}

# trade_status of alipay.trade.query -> outcome.
TRADE_STATUSES: dict[str, Meaning] = {
    "TRADE_SUCCESS": PAID,
    "TRADE_FINISHED": PAID,  # paid, and past the refund period
    "WAIT_BUYER_PAY": WAITING,
    "TRADE_CLOSED": CLOSED,  # never paid and closed, cancelled, or fully refunded
}


@dataclass(frozen=True)
class RefundMeaning:
    status: RefundStatus
    zh: str
    en: str


REFUNDED = RefundMeaning(
    RefundStatus.SUCCESS, "退款成功，款项已原路退回", "Refunded; the money went back the way it was paid"
)
REFUND_CONFIRMING = RefundMeaning(RefundStatus.UNKNOWN, "正在向支付宝确认退款结果", "Confirming the refund with Alipay")
REFUND_ACCEPTED = RefundMeaning(
    RefundStatus.PROCESSING, "退款已受理，正在确认是否到账", "Refund accepted; confirming that the money moved"
)
_REFUND_FIX_CONFIG = RefundMeaning(
    RefundStatus.FAILED,
    "退款请求被拒绝（商户配置错误），请联系管理员，或用其他方式退款",
    "The refund was refused (merchant set-up); tell the store manager, or refund another way",
)

# sub_code of a 40004 answer to alipay.trade.refund. ACQ.SYSTEM_ERROR means "send the same out_request_no again";
# a sub_code not listed is UNKNOWN too: queried, then sent again under the same out_request_no if Alipay lacks it.
REFUND_SUB_CODES: dict[str, RefundMeaning] = {
    "ACQ.SYSTEM_ERROR": REFUND_CONFIRMING,
    "ACQ.SELLER_BALANCE_NOT_ENOUGH": RefundMeaning(
        RefundStatus.FAILED,
        "商户支付宝账户余额不足，未退款；请充值后重新退款，或用其他方式退款",
        "Not refunded: the merchant's Alipay balance is too low; top it up and refund again, or refund another way",
    ),
    "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL": RefundMeaning(
        RefundStatus.FAILED, "退款金额超过可退金额，未退款", "Not refunded: more than what is left to refund"
    ),
    "ACQ.DISCORDANT_REPEAT_REQUEST": RefundMeaning(
        RefundStatus.FAILED,
        "退款请求号已用于另一笔不同金额的退款，未退款",
        "Not refunded: this refund number was used for a different refund",
    ),
    "ACQ.TRADE_NOT_EXIST": RefundMeaning(
        RefundStatus.FAILED, "支付宝无此交易，未退款", "Not refunded: Alipay has no such trade"
    ),
    "ACQ.TRADE_HAS_CLOSE": RefundMeaning(
        RefundStatus.FAILED,
        "交易已关闭（已撤销或已全额退款），未退款",
        "Not refunded: the trade is closed (cancelled or fully refunded)",
    ),
    "ACQ.TRADE_STATUS_ERROR": RefundMeaning(
        RefundStatus.FAILED,
        "交易状态不允许退款（未付款或已全额退款）",
        "Not refunded: the trade cannot be refunded (not paid, or fully refunded)",
    ),
    "ACQ.TRADE_HAS_FINISHED": RefundMeaning(
        RefundStatus.FAILED,
        "交易已完结，超过退款期限，请用其他方式退款",
        "Not refunded: the trade is past Alipay's refund period; refund another way",
    ),
    "ACQ.REFUND_FEE_ERROR": RefundMeaning(
        RefundStatus.FAILED, "退款金额无效，未退款", "Not refunded: the amount is not valid"
    ),
    "ACQ.REASON_TRADE_REFUND_FEE_ERR": RefundMeaning(
        RefundStatus.FAILED, "退款金额无效，未退款", "Not refunded: the amount is not valid"
    ),
    "ACQ.BUYER_ERROR": RefundMeaning(
        RefundStatus.FAILED,
        "买家账户状态异常，无法原路退回，请用其他方式退款",
        "Not refunded: the payer's account cannot receive it; refund another way",
    ),
    "ACQ.REASON_TRADE_BEEN_FREEZEN": RefundMeaning(
        RefundStatus.FAILED, "交易已被冻结，暂不能退款", "Not refunded: the trade is frozen at Alipay"
    ),
    **{code: _REFUND_FIX_CONFIG for code in ("ACQ.INVALID_PARAMETER", "ACQ.ACCESS_FORBIDDEN", "ACQ.PARTNER_ERROR")},
}


# --- the client ----------------------------------------------------------------------------------------------


class AlipayClient:
    """The Provider for Alipay. Built from settings (`alipay_base_url`, `alipay_app_id`,
    `alipay_private_key_path`, `alipay_public_key_path`, optional `alipay_timeout_seconds`) or `from_values`.

    `alipay_base_url` is the gateway, e.g. https://openapi.alipay.com/gateway.do; a URL without a path gets
    `/gateway.do` appended. A fresh HTTP connection per call: a few calls a minute per store, and no client tied
    to one event loop.
    """

    name: ProviderName = "alipay"

    def __init__(self, settings: Any):
        timeout_s = getattr(settings, "alipay_timeout_seconds", None) or DEFAULT_TIMEOUT_S
        keys: dict[str, bytes] = {}
        for setting in ("alipay_private_key_path", "alipay_public_key_path"):
            path = Path(getattr(settings, setting))
            keys[setting] = path.read_bytes()
        try:
            self._configure(
                str(settings.alipay_base_url or ""),
                str(settings.alipay_app_id or ""),
                keys["alipay_private_key_path"],
                keys["alipay_public_key_path"],
                float(timeout_s),
                None,
            )
        except ValueError as exc:
            # Say which setting holds the wrong thing: the merchant's private key and Alipay's public key look alike.
            raise ValueError(
                f"{exc} (settings alipay_private_key_path={settings.alipay_private_key_path}, "
                f"alipay_public_key_path={settings.alipay_public_key_path})"
            ) from exc

    @classmethod
    def from_settings(cls, settings: Any) -> AlipayClient:
        return cls(settings)

    @classmethod
    def from_values(
        cls,
        base_url: str,
        app_id: str,
        private_key_pem: str | bytes,
        alipay_public_key_pem: str | bytes,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        now: Callable[[], datetime] | None = None,
    ) -> AlipayClient:
        client = cls.__new__(cls)
        client._configure(base_url, app_id, private_key_pem, alipay_public_key_pem, timeout_s, now)
        return client

    def _configure(
        self,
        base_url: str,
        app_id: str,
        private_key: str | bytes,
        alipay_public_key: str | bytes,
        timeout_s: float,
        now: Callable[[], datetime] | None,
    ) -> None:
        if not app_id:
            raise ValueError("alipay_app_id is empty: give the APPID of the merchant's application")
        self.gateway_url = gateway_url(base_url)
        self.app_id = app_id
        self.timeout_s = timeout_s
        try:
            self._private_key = load_private_key(private_key)
        except ValueError as exc:
            raise ValueError(f"the merchant's application private key: {exc}") from exc
        try:
            self._alipay_key = load_public_key(alipay_public_key)
        except ValueError as exc:
            raise ValueError(f"Alipay's public key: {exc}") from exc
        self._now = now or (lambda: datetime.now(UTC))

    @property
    def payer_id_kind(self) -> str:
        """The member identifier kind an Alipay payer id is stored under (central.identity.openid_kind): per
        application, as newer applications get an app-scoped buyer_open_id instead of the 2088... user id."""
        return f"openid:{self.app_id}"

    async def aclose(self) -> None:
        """Nothing to close: every call opens and closes its own connection."""

    # -- the exchange --

    def signed_params(self, method: str, biz: Mapping[str, Any]) -> dict[str, str]:
        params = {
            "app_id": self.app_id,
            "method": method,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": format_time(self._now()),
            "version": "1.0",
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
        }
        params["sign"] = rsa2_sign(signing_string(params), self._private_key)
        return params

    async def _call(self, method: str, biz: Mapping[str, Any]) -> dict[str, Any]:
        params = self.signed_params(method, biz)
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, trust_env=False) as http:
                response = await http.post(
                    self.gateway_url,
                    params={"charset": "utf-8"},
                    data=params,
                    headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
                )
        except httpx.TimeoutException as exc:
            raise ProviderUnreachable(
                f"alipay {method}: no answer within {self.timeout_s:g} s (it may have been processed)"
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderUnreachable(f"alipay {method}: cannot reach {self.gateway_url}: {exc!r}") from exc
        if response.status_code != 200:
            raise ProviderBadResponse(
                f"alipay {method}: HTTP {response.status_code} from {self.gateway_url}: {response.content[:200]!r}"
            )
        return verified_node(response.content, method, self._alipay_key)

    # -- Provider --

    async def charge(self, charge: Charge) -> Result:
        if charge.amount_fen <= 0:
            raise ValueError(f"amount must be positive fen, got {charge.amount_fen}")
        biz = {
            "out_trade_no": charge.out_trade_no,
            "scene": "bar_code",
            "auth_code": charge.auth_code,
            "product_code": "FACE_TO_FACE_PAYMENT",
            "subject": (charge.description or "门店消费")[:256],
            "total_amount": fen_to_yuan(charge.amount_fen),
            "store_id": charge.store_id,
            # The same "store-station" as WeChat's device_info: the bill's 终端号 then attributes a row to a store.
            "terminal_id": f"{charge.store_id}-{charge.station_id}"[:32],
        }
        if charge.expires_at is not None:
            biz |= expiry_fields(charge.expires_at, self._now())
        node = await self._call("alipay.trade.pay", biz)
        code, sub_code = _codes(node)
        trade_no = node.get("trade_no") or None
        if code == "10000":
            return self._paid(node, charge.out_trade_no, paid_at_field="gmt_payment")
        if code == "10003":
            return _result(WAITING, charge.out_trade_no, code, trade_no)
        if code == "20000":
            return _result(CONFIRMING, charge.out_trade_no, sub_code or code, trade_no)
        if code == "40004":
            found = PAY_SUB_CODES.get(sub_code or "")
            if found is None:
                log.warning(
                    "alipay.trade.pay %s: unknown sub_code %s (%s); querying",
                    charge.out_trade_no,
                    sub_code,
                    node.get("sub_msg"),
                )
                found = CONFIRMING
            return _result(found, charge.out_trade_no, sub_code or code, trade_no)
        raise _rejected("alipay.trade.pay", node)

    async def query(self, out_trade_no: str) -> Result:
        node = await self._call("alipay.trade.query", {"out_trade_no": out_trade_no})
        code, sub_code = _codes(node)
        if code == "10000":
            status = str(node.get("trade_status") or "")
            found = TRADE_STATUSES.get(status)
            if found is None:
                log.warning("alipay.trade.query %s: unknown trade_status %r", out_trade_no, status)
                return _result(CONFIRMING, out_trade_no, status or None, node.get("trade_no") or None)
            if found is PAID:
                return self._paid(node, out_trade_no, paid_at_field="send_pay_date")
            return _result(found, out_trade_no, status, node.get("trade_no") or None)
        if code == "40004" and sub_code == "ACQ.TRADE_NOT_EXIST":
            return _result(NOT_FOUND, out_trade_no, sub_code)
        if code == "20000" or (code == "40004" and sub_code == "ACQ.SYSTEM_ERROR"):
            return _result(CONFIRMING, out_trade_no, sub_code or code)
        raise _rejected("alipay.trade.query", node)

    async def reverse(self, out_trade_no: str) -> ReverseResult:
        """alipay.trade.cancel: closes an unpaid trade, refunds a paid one. `code` is the action taken
        ("close" | "refund") when done, else the error code."""
        node = await self._call("alipay.trade.cancel", {"out_trade_no": out_trade_no})
        code, sub_code = _codes(node)
        if code == "10000":
            if node.get("retry_flag") == "Y":
                return ReverseResult(done=False, recall=True, code="retry_flag=Y")
            return ReverseResult(done=True, recall=False, code=node.get("action") or None)
        if code == "40004" and sub_code == "ACQ.TRADE_NOT_EXIST":
            return ReverseResult(done=True, recall=False, code=sub_code)  # nothing to cancel: never paid
        if code == "20000" or (code == "40004" and sub_code == "ACQ.SYSTEM_ERROR"):
            return ReverseResult(done=False, recall=True, code=sub_code or code)
        if code == "40004":
            # e.g. ACQ.TRADE_CANCEL_TIME_OUT (paid more than 24 h ago: refund instead), ACQ.SELLER_BALANCE_NOT_ENOUGH
            return ReverseResult(done=False, recall=False, code=sub_code or code)
        raise _rejected("alipay.trade.cancel", node)

    async def identify(self, auth_code: str) -> str | None:
        return None  # Alipay's bar-code flow names the buyer only in the answer to a charge

    async def refund(self, order: RefundOrder) -> RefundResult:
        """alipay.trade.refund with `out_request_no` = our out_refund_no (the same number again is the same
        refund). `fund_change` Y: the money moved, SUCCESS; N (e.g. a repeat of a refund done before): PROCESSING
        until the refund query confirms it."""
        if order.amount_fen <= 0:
            raise ValueError(f"refund amount must be positive fen, got {order.amount_fen}")
        biz: dict[str, Any] = {
            "out_trade_no": order.out_trade_no,
            "refund_amount": fen_to_yuan(order.amount_fen),
            "out_request_no": order.out_refund_no,
        }
        if order.reason:
            biz["refund_reason"] = order.reason[:256]
        node = await self._call("alipay.trade.refund", biz)
        code, sub_code = _codes(node)
        if code == "10000":
            echoed = node.get("out_trade_no")
            if echoed is not None and echoed != order.out_trade_no:
                raise ProviderBadResponse(
                    f"alipay.trade.refund: answer for out_trade_no {echoed!r}, asked about {order.out_trade_no!r}"
                )
            trade_no = node.get("trade_no") or None
            if node.get("fund_change") == "Y":
                try:
                    at = parse_time(node["gmt_refund_pay"]) if node.get("gmt_refund_pay") else None
                except ValueError as exc:
                    raise ProviderBadResponse(f"alipay.trade.refund: bad gmt_refund_pay: {exc}") from exc
                return _refund_result(REFUNDED, order.out_refund_no, "fund_change=Y", trade_no, order.amount_fen, at)
            # refund_fee is the trade's refunded total, not this refund's: it is not this refund's amount.
            return _refund_result(REFUND_ACCEPTED, order.out_refund_no, "fund_change=N", trade_no)
        if code == "20000":
            return _refund_result(REFUND_CONFIRMING, order.out_refund_no, sub_code or code)
        if code == "40004":
            found = REFUND_SUB_CODES.get(sub_code or "")
            if found is None:
                log.warning(
                    "alipay.trade.refund %s: unknown sub_code %s (%s); querying",
                    order.out_refund_no,
                    sub_code,
                    node.get("sub_msg"),
                )
                found = REFUND_CONFIRMING
            return _refund_result(found, order.out_refund_no, sub_code or code)
        raise _rejected("alipay.trade.refund", node)

    async def refund_query(self, out_trade_no: str, out_refund_no: str) -> RefundResult:
        """alipay.trade.fastpay.refund.query: `refund_status` REFUND_SUCCESS is done; an answer without it means
        Alipay did not get the refund, or refused it (sending the same out_request_no again then says why)."""
        method = "alipay.trade.fastpay.refund.query"
        biz = {"out_trade_no": out_trade_no, "out_request_no": out_refund_no, "query_options": ["gmt_refund_pay"]}
        node = await self._call(method, biz)
        code, sub_code = _codes(node)
        if code == "10000":
            echoed = node.get("out_request_no")
            if echoed is not None and echoed != out_refund_no:
                raise ProviderBadResponse(
                    f"alipay {method}: answer for out_request_no {echoed!r}, asked about {out_refund_no!r}"
                )
            if node.get("refund_status") != "REFUND_SUCCESS":
                return _refund_result(
                    RefundMeaning(RefundStatus.NOT_FOUND, "支付宝无此退款", "Alipay has no such refund"),
                    out_refund_no,
                    str(node.get("refund_status") or "") or None,
                )
            try:
                amount = yuan_to_fen(node["refund_amount"]) if node.get("refund_amount") is not None else None
                at = parse_time(node["gmt_refund_pay"]) if node.get("gmt_refund_pay") else None
            except ValueError as exc:
                raise ProviderBadResponse(f"alipay {method}: bad amount or time: {exc}") from exc
            return _refund_result(REFUNDED, out_refund_no, "REFUND_SUCCESS", node.get("trade_no") or None, amount, at)
        if code == "40004" and sub_code == "ACQ.TRADE_NOT_EXIST":
            return _refund_result(
                RefundMeaning(RefundStatus.NOT_FOUND, "支付宝无此交易", "Alipay has no such trade"),
                out_refund_no,
                sub_code,
            )
        if code == "20000" or (code == "40004" and sub_code == "ACQ.SYSTEM_ERROR"):
            return _refund_result(REFUND_CONFIRMING, out_refund_no, sub_code or code)
        raise _rejected(method, node)

    async def bill(self, day: date) -> list[BillRow]:
        """The day's trade bill: alipay.data.dataservice.bill.downloadurl.query gives a URL to a zip holding the
        GBK CSV "业务明细" (rows) and "业务明细(汇总)" (summary)."""
        method = "alipay.data.dataservice.bill.downloadurl.query"
        node = await self._call(method, {"bill_type": "trade", "bill_date": day.isoformat()})
        if _codes(node)[0] != "10000":
            raise _rejected(method, node)
        url = node.get("bill_download_url")
        if not isinstance(url, str) or not url:
            raise ProviderBadResponse(f"alipay {method}: no bill_download_url")
        try:
            async with httpx.AsyncClient(timeout=max(self.timeout_s, 30.0), trust_env=False) as http:
                response = await http.get(url)
        except httpx.TimeoutException as exc:
            raise ProviderUnreachable(
                f"alipay bill download: no answer within {max(self.timeout_s, 30.0):g} s"
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderUnreachable(f"alipay bill download: {exc!r}") from exc
        if response.status_code != 200:
            raise ProviderBadResponse(f"alipay bill download: HTTP {response.status_code}")
        return parse_bill_zip(response.content)

    # -- helpers --

    def _paid(self, node: Mapping[str, Any], out_trade_no: str, *, paid_at_field: str) -> Result:
        echoed = node.get("out_trade_no")
        if echoed is not None and echoed != out_trade_no:
            raise ProviderBadResponse(f"alipay: answer for out_trade_no {echoed!r}, asked about {out_trade_no!r}")
        if not node.get("trade_no"):
            raise ProviderBadResponse("alipay: a paid answer without trade_no")
        try:
            amount = yuan_to_fen(node["total_amount"]) if node.get("total_amount") is not None else None
            paid_at = parse_time(node[paid_at_field]) if node.get(paid_at_field) else None
        except ValueError as exc:
            raise ProviderBadResponse(f"alipay: bad amount or time in a paid answer: {exc}") from exc
        return Result(
            Outcome.SUCCESS,
            out_trade_no,
            provider_trade_no=node.get("trade_no"),
            # Apps created since 2023 get buyer_open_id instead of the 2088... buyer_user_id.
            payer_id=node.get("buyer_user_id") or node.get("buyer_open_id"),
            amount_fen=amount,
            paid_at=paid_at,
            code=str(node.get("trade_status") or node.get("code")),
            reason_zh=PAID.zh,
            reason_en=PAID.en,
        )


def gateway_url(base_url: str) -> str:
    url = base_url.strip()
    if not url:
        raise ValueError(f"alipay_base_url is empty: give the gateway, e.g. {PRODUCTION_GATEWAY}")
    parsed = httpx.URL(url)
    if parsed.path in ("", "/"):
        return url.rstrip("/") + "/gateway.do"
    return url


def _result(meaning: Meaning, out_trade_no: str, code: str | None, trade_no: str | None = None) -> Result:
    return Result(
        meaning.outcome, out_trade_no, provider_trade_no=trade_no, code=code, reason_zh=meaning.zh, reason_en=meaning.en
    )


def _refund_result(
    meaning: RefundMeaning,
    out_refund_no: str,
    code: str | None,
    trade_no: str | None = None,
    amount_fen: int | None = None,
    refunded_at: datetime | None = None,
) -> RefundResult:
    return RefundResult(
        meaning.status,
        out_refund_no,
        provider_refund_no=trade_no,
        amount_fen=amount_fen,
        refunded_at=refunded_at,
        code=code,
        reason_zh=meaning.zh,
        reason_en=meaning.en,
    )


def _codes(node: Mapping[str, Any]) -> tuple[str, str | None]:
    sub_code = node.get("sub_code")
    return str(node.get("code", "")), (str(sub_code) if sub_code else None)


def _rejected(method: str, node: Mapping[str, Any]) -> AlipayRejected:
    code, sub_code = _codes(node)
    return AlipayRejected(f"alipay {method}: refused: {_describe(node)}", code=code, sub_code=sub_code)


# --- the bill ------------------------------------------------------------------------------------------------

_DETAIL_START = "业务明细列表-"
_DETAIL_END = "业务明细列表结束"
_KINDS = {"交易": "SUCCESS", "退款": "REFUND"}


def _column(header: list[str], *names: str) -> int:
    # The header uses fullwidth parentheses ("订单金额（元）"); accept halfwidth too.
    normal = [h.replace("（", "(").replace("）", ")") for h in header]
    for name in names:
        if name in normal:
            return normal.index(name)
    raise ProviderBadResponse(f"alipay bill: no column {names[0]!r} in the header")


def parse_bill_csv(text: str) -> list[BillRow]:
    """The rows of a "业务明细" CSV (already decoded), columns found by their header names. Trade rows (交易) ->
    SUCCESS; refund rows (退款, also what cancelling a paid trade leaves) -> REFUND with the refunded amount as a
    positive number (Alipay writes it negative); other business types are skipped. The footer's counts
    (#交易合计：N笔, #退款合计：M笔) must match the rows read, so a cut-short file is refused."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("#") and _DETAIL_START in line)
        end = next(i for i, line in enumerate(lines) if i > start and line.startswith("#") and _DETAIL_END in line)
    except StopIteration as exc:
        raise ProviderBadResponse("alipay bill: no 业务明细列表 section") from exc
    records = [[cell.strip() for cell in record] for record in csv.reader(lines[start + 1 : end])]
    if not records:
        raise ProviderBadResponse("alipay bill: no header row")
    header, *rows = records
    trade_no = _column(header, "支付宝交易号")
    out_trade_no = _column(header, "商户订单号")
    kind = _column(header, "业务类型")
    finished = _column(header, "完成时间")
    created = _column(header, "创建时间")
    amount = _column(header, "订单金额(元)")
    terminal = _column(header, "终端号")
    found: list[BillRow] = []
    for row in rows:
        if not any(row):
            continue
        if len(row) < len(header):
            raise ProviderBadResponse(f"alipay bill: short row {row!r}")
        status = _KINDS.get(row[kind])
        if status is None:
            continue
        try:
            found.append(
                BillRow(
                    out_trade_no=row[out_trade_no],
                    provider_trade_no=row[trade_no],
                    status=status,  # type: ignore[arg-type]
                    amount_fen=abs(yuan_to_fen(row[amount])),
                    paid_at=parse_time(row[finished] or row[created]),
                    payer_id=None,  # the bill shows the buyer's masked login, not the buyer id
                    device=row[terminal] or None,
                )
            )
        except ValueError as exc:
            raise ProviderBadResponse(f"alipay bill: bad row {row!r}: {exc}") from exc
    footer = "\n".join(lines[end:])
    for label, status in (("交易合计", "SUCCESS"), ("退款合计", "REFUND")):
        counted = re.search(label + r"[：:]\s*(\d+)\s*笔", footer)
        read = sum(1 for r in found if r.status == status)
        # Whether 交易合计 counts the refund rows too is not documented: accept either reading.
        allowed = {read, len(found)} if status == "SUCCESS" else {read}
        if counted and int(counted.group(1)) not in allowed:
            raise ProviderBadResponse(
                f"alipay bill: the footer counts {counted.group(1)} {label} rows, {read} were read"
            )
    return found


def parse_bill_zip(content: bytes) -> list[BillRow]:
    """The downloaded zip: find the detail CSV by its content (Alipay writes GBK file names without the UTF-8
    flag, so names arrive garbled) and parse it."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        texts = [archive.read(info).decode("gb18030") for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError) as exc:
        raise ProviderBadResponse(f"alipay bill: the download is not the bill zip: {exc}") from exc
    for text in texts:
        if any(line.startswith("#") and _DETAIL_START in line for line in text.splitlines()):
            return parse_bill_csv(text)
    raise ProviderBadResponse("alipay bill: no 业务明细 file in the zip")
