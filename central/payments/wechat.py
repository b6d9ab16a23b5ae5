"""WeChat Pay API v2 (XML) for code payment: micropay, authcodetoopenid, orderquery, reverse, downloadbill, and
refunds of paid orders: refund (secapi/pay/refund, with the merchant certificate) and refundquery.

Written against WeChat's published v2 specification (pay.weixin.qq.com/wiki/doc/api/micropay.php), not an SDK:
the one SDK for Python (wechatpy) never verifies the signature of an answer. Here every answer that carries
`return_code` SUCCESS must carry a valid `sign`, or it is a ProviderBadResponse.

Signing (安全规范): every non-empty parameter except `sign`, sorted by name (ASCII), joined as `k=v&k=v`, then
`&key=<API key>`; MD5 or HMAC-SHA256 (keyed with the API key) of that text, as uppercase hex. An answer is signed
with the same algorithm as its request. `tools/authcodetoopenid` is always signed MD5 and sent without `sign_type`,
whatever the setting: its API page lists no `sign_type` and a `sign` of at most 32 characters, and WeChat refuses a
64-character HMAC-SHA256 sign there. The settlement bill (downloadbill) is plain text and is not signed by
WeChat; it is only as trustworthy as the TLS connection it came over.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import httpx

from central.payments.provider import (
    BillRow,
    Charge,
    Outcome,
    ProviderBadResponse,
    ProviderError,
    ProviderRejected,
    ProviderUnreachable,
    RefundOrder,
    RefundResult,
    RefundStatus,
    Result,
    ReverseResult,
)

if TYPE_CHECKING:
    from central.config import Settings

log = logging.getLogger(__name__)

SignType = Literal["MD5", "HMAC-SHA256"]
SIGN_TYPES: tuple[SignType, ...] = ("MD5", "HMAC-SHA256")
# WeChat's times (time_end, bill rows) are Beijing time; China has kept UTC+8 without DST since 1991.
BEIJING = timezone(timedelta(hours=8), "CST")
AUTH_CODE_PATTERN = re.compile(r"^1[0-5]\d{16}$")
# Calls whose API page lists no sign_type and a sign of at most 32 characters: signed MD5, sent without sign_type.
MD5_ONLY_PATHS = frozenset({"tools/authcodetoopenid"})
# micropay's time_expire: WeChat refuses an order that expires less than a minute after it arrives ("time_expire时间
# 过短，刷卡至少1分钟"). The allowance covers the way there and a clock a few seconds apart from WeChat's; an order
# that arrives later than that is refused, so it cannot be paid after central gave up on it.
MICROPAY_SHORTEST_EXPIRY = timedelta(minutes=1)
EXPIRY_ALLOWANCE = timedelta(seconds=10)


# --- signing and the XML envelope ----------------------------------------------------------------------------


def sign_text(params: Mapping[str, object], key: str) -> str:
    """The text that is hashed: `stringSignTemp` of the spec."""
    pairs = sorted(
        (name, str(value))
        for name, value in params.items()
        if name != "sign" and value is not None and str(value) != ""
    )
    return "&".join(f"{name}={value}" for name, value in pairs) + f"&key={key}"


def sign(params: Mapping[str, object], key: str, sign_type: SignType = "MD5") -> str:
    text = sign_text(params, key).encode("utf-8")
    if sign_type == "MD5":
        return hashlib.md5(text).hexdigest().upper()
    if sign_type == "HMAC-SHA256":
        return hmac.new(key.encode("utf-8"), text, hashlib.sha256).hexdigest().upper()
    raise ValueError(f"unknown sign_type {sign_type!r}; one of {', '.join(SIGN_TYPES)}")


def signature_ok(params: Mapping[str, str], key: str, sign_type: SignType) -> bool:
    given = params.get("sign")
    if not given:
        return False
    return hmac.compare_digest(given.upper().encode(), sign(params, key, sign_type).encode())


def to_xml(params: Mapping[str, object]) -> bytes:
    parts = ["<xml>"]
    for name, value in params.items():
        if value is None:
            continue
        text = str(value)
        if text.isdigit():
            parts.append(f"<{name}>{text}</{name}>")
        else:  # CDATA, as WeChat writes it; a "]]>" inside is split across two sections
            parts.append(f"<{name}><![CDATA[{text.replace(']]>', ']]]]><![CDATA[>')}]]></{name}>")
    parts.append("</xml>")
    return "".join(parts).encode("utf-8")


def parse_xml(body: bytes) -> dict[str, str]:
    """A flat `<xml>` document as a dict; ProviderBadResponse for anything else."""
    head = body[:2048].upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in head:  # WeChat never sends a DTD; entities are an attack
        raise ProviderBadResponse("the answer carries a DTD, which WeChat Pay never sends")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise ProviderBadResponse(f"the answer is not XML ({exc}): {body[:80]!r}") from exc
    if root.tag != "xml":
        raise ProviderBadResponse(f"the answer is XML but not WeChat Pay's (<{root.tag}>)")
    return {child.tag: (child.text or "").strip() for child in root}


def new_nonce() -> str:
    return secrets.token_hex(16)  # 32 characters, the most nonce_str may hold


# --- what WeChat's codes mean ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Meaning:
    outcome: Outcome
    zh: str
    en: str


_FIX_CONFIG = Meaning(
    Outcome.FAILED,
    "支付请求被拒绝（商户配置错误），请使用其他方式付款并联系管理员",
    "The payment was refused (merchant set-up); pay another way and tell the store manager",
)
_CONFIRMING = Meaning(
    Outcome.UNKNOWN, "正在确认支付结果，请稍候", "Confirming the payment with WeChat Pay; please wait"
)

# err_code of micropay (result_code FAIL) → what it means for the sale. A code not listed is UNKNOWN: the
# gateway then queries, which is always safe, where guessing "failed" could lose a payment.
ERROR_CODES: dict[str, Meaning] = {
    "USERPAYING": Meaning(
        Outcome.USERPAYING, "等待顾客在手机上输入密码确认", "Waiting for the customer to confirm on their phone"
    ),
    "SYSTEMERROR": _CONFIRMING,
    "BANKERROR": _CONFIRMING,
    "ORDERPAID": Meaning(Outcome.UNKNOWN, "该订单已支付", "This order is already paid"),
    "OUT_TRADE_NO_USED": Meaning(
        Outcome.UNKNOWN, "订单号已使用，正在确认结果", "This order number was used before; confirming its result"
    ),
    "AUTHCODEEXPIRE": Meaning(
        Outcome.FAILED,
        "付款码已过期，请刷新付款码后重新扫码",
        "The payment code has expired; refresh it on your phone and scan again",
    ),
    "AUTH_CODE_INVALID": Meaning(
        Outcome.FAILED, "付款码无效，请重新出示付款码", "The payment code is not valid; show a fresh payment code"
    ),
    "AUTH_CODE_ERROR": Meaning(
        Outcome.FAILED, "付款码有误，请重新出示付款码", "The payment code was not read correctly; show it again"
    ),
    "NOTENOUGH": Meaning(
        Outcome.FAILED,
        "余额不足，请更换银行卡或其他方式付款",
        "Insufficient balance; choose another card or pay another way",
    ),
    "NOTSUPORTCARD": Meaning(
        Outcome.FAILED, "不支持该卡付款，请更换其他银行卡", "This card cannot be used here; choose another card"
    ),
    "BUYER_MISMATCH": Meaning(
        Outcome.FAILED,
        "付款人与首次付款不一致，请使用原付款账户",
        "The payer differs from the first attempt; use the same WeChat account",
    ),
    "TRADE_ERROR": Meaning(
        Outcome.FAILED, "交易被微信支付拒绝，请更换付款方式", "WeChat Pay declined the payment; pay another way"
    ),
    "NOAUTH": Meaning(
        Outcome.FAILED, "商户无此支付权限，请使用其他方式付款", "The store may not take this payment; pay another way"
    ),
    "ORDERCLOSED": Meaning(Outcome.REVERSED, "订单已关闭，请重新下单", "The order is closed; start a new payment"),
    "ORDERREVERSED": Meaning(Outcome.REVERSED, "订单已撤销，请重新下单", "The order was reversed; start a new payment"),
    **{
        code: _FIX_CONFIG
        for code in (
            "PARAM_ERROR",
            "XML_FORMAT_ERROR",
            "REQUIRE_POST_METHOD",
            "SIGNERROR",
            "LACK_PARAMS",
            "NOT_UTF8",
            "APPID_NOT_EXIST",
            "MCHID_NOT_EXIST",
            "APPID_MCHID_NOT_MATCH",
            "INVALID_REQUEST",
        )
    },
}

# trade_state of orderquery → outcome.
TRADE_STATES: dict[str, Meaning] = {
    "SUCCESS": Meaning(Outcome.SUCCESS, "支付成功", "Paid"),
    "USERPAYING": ERROR_CODES["USERPAYING"],
    # Created, not paid yet: for a code payment the customer is still on it; the gateway's limit ends it.
    "NOTPAY": Meaning(Outcome.USERPAYING, "等待顾客付款", "Waiting for the customer to pay"),
    "PAYERROR": Meaning(Outcome.FAILED, "支付失败，请重新付款", "The payment failed; try again"),
    "CLOSED": Meaning(Outcome.REVERSED, "订单已关闭", "The order is closed"),
    "REVOKED": Meaning(Outcome.REVERSED, "订单已撤销", "The order was reversed"),
    "REFUND": Meaning(Outcome.REVERSED, "订单已转入退款", "The order was refunded"),
}


def meaning(err_code: str | None) -> Meaning:
    return ERROR_CODES.get(err_code or "", _CONFIRMING)


# --- refunds --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefundMeaning:
    status: RefundStatus
    zh: str
    en: str


_REFUND_CONFIRMING = RefundMeaning(
    RefundStatus.UNKNOWN, "正在向微信支付确认退款结果", "Confirming the refund with WeChat Pay"
)
_REFUND_ACCEPTED = RefundMeaning(
    RefundStatus.PROCESSING, "退款已受理，款项将原路退回", "Refund accepted; the money goes back the way it was paid"
)
_REFUND_FIX_CONFIG = RefundMeaning(
    RefundStatus.FAILED,
    "退款请求被拒绝（商户配置错误），请联系管理员，或用其他方式退款",
    "The refund was refused (merchant set-up); tell the store manager, or refund another way",
)

# err_code of secapi/pay/refund (result_code FAIL). SYSTEMERROR and BIZERR_NEED_RETRY mean "call again with the
# same parameters"; a code not listed is UNKNOWN too: the refund is then queried and, if WeChat never got it,
# sent again under the same out_refund_no (which WeChat refunds once, however often it is sent).
REFUND_ERROR_CODES: dict[str, RefundMeaning] = {
    **{
        code: _REFUND_CONFIRMING
        for code in ("SYSTEMERROR", "BIZERR_NEED_RETRY", "FREQUENCY_LIMITED", "INVALID_REQ_TOO_MUCH", "ORDER_NOT_READY")
    },
    "NOTENOUGH": RefundMeaning(
        RefundStatus.FAILED,
        "商户可用退款余额不足，未退款；请充值后重新退款，或用其他方式退款",
        "Not refunded: the merchant's refundable balance is too low; top it up and refund again, or refund another way",
    ),
    "TRADE_OVERDUE": RefundMeaning(
        RefundStatus.FAILED,
        "订单已超过退款期限，未退款，请用其他方式退款",
        "Not refunded: the order is past WeChat Pay's refund period; refund another way",
    ),
    "USER_ACCOUNT_ABNORMAL": RefundMeaning(
        RefundStatus.FAILED,
        "顾客的微信账户异常（如已注销），无法原路退回，请用其他方式退款",
        "Not refunded: the payer's WeChat account cannot receive it (closed?); refund another way",
    ),
    "ORDERNOTEXIST": RefundMeaning(
        RefundStatus.FAILED, "微信支付无此订单，未退款", "Not refunded: WeChat Pay has no such order"
    ),
    "INVALID_TRANSACTIONID": RefundMeaning(
        RefundStatus.FAILED, "微信支付无此订单，未退款", "Not refunded: WeChat Pay has no such order"
    ),
    "REFUND_FEE_MISMATCH": RefundMeaning(
        RefundStatus.FAILED,
        "订单金额或退款金额与之前请求不一致，未退款",
        "Not refunded: the amounts differ from an earlier request with this refund number",
    ),
    # Business refusals whose err_code_des says what is wrong (订单已全额退款, refund_fee大于可退金额, ...).
    "INVALID_REQUEST": RefundMeaning(RefundStatus.FAILED, "微信支付拒绝了该退款", "WeChat Pay refused the refund"),
    "ERROR": RefundMeaning(RefundStatus.FAILED, "微信支付拒绝了该退款", "WeChat Pay refused the refund"),
    **{
        code: _REFUND_FIX_CONFIG
        for code in (
            "PARAM_ERROR",
            "XML_FORMAT_ERROR",
            "REQUIRE_POST_METHOD",
            "SIGNERROR",
            "LACK_PARAMS",
            "NOT_UTF8",
            "APPID_NOT_EXIST",
            "MCHID_NOT_EXIST",
            "APPID_MCHID_NOT_MATCH",
            "NOAUTH",
            "CERT_ERROR",
        )
    },
}

# refund_status_$n of refundquery. CHANGE: the money could not go back the way it came (the card was closed or
# frozen); it waits at WeChat until someone routes it in the merchant platform, after which it reads SUCCESS.
REFUND_STATUSES: dict[str, RefundMeaning] = {
    "SUCCESS": RefundMeaning(
        RefundStatus.SUCCESS, "退款成功，款项已原路退回", "Refunded; the money went back the way it was paid"
    ),
    "PROCESSING": _REFUND_ACCEPTED,
    "CHANGE": RefundMeaning(
        RefundStatus.PROCESSING,
        "退款异常：原路退回失败（如银行卡已注销），请在微信支付商户平台手动处理此笔退款",
        "The refund could not go back to the payer's card (closed?); handle it in the WeChat Pay merchant platform",
    ),
    "REFUNDCLOSE": RefundMeaning(
        RefundStatus.FAILED,
        "退款已关闭，未退款，请用其他方式退款",
        "The refund was closed, nothing refunded; refund another way",
    ),
}


def parse_refund_time(text: str | None) -> datetime | None:
    """refund_success_time `yyyy-MM-dd HH:mm:ss` in Beijing time → aware UTC."""
    if not text:
        return None
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING).astimezone(UTC)
    except ValueError:
        raise ProviderBadResponse(f"refund_success_time {text!r} is not yyyy-MM-dd HH:mm:ss") from None


def format_refund_time(at: datetime) -> str:
    return at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


# --- amounts and times ----------------------------------------------------------------------------------------


def yuan_to_fen(text: str) -> int:
    """'12.34' → 1234, exactly (Decimal, never float); ProviderBadResponse for anything but whole fen."""
    try:
        fen = Decimal(text.strip()) * 100
    except InvalidOperation:
        raise ProviderBadResponse(f"not an amount in yuan: {text!r}") from None
    if fen != fen.to_integral_value():
        raise ProviderBadResponse(f"amount {text!r} is not a whole number of fen")
    return int(fen)


def fen_to_yuan(fen: int) -> str:
    """1234 → '12.34' (the bill's form)."""
    return str((Decimal(fen) / 100).quantize(Decimal("0.01")))


def parse_time_end(text: str | None) -> datetime | None:
    """`yyyyMMddHHmmss` in Beijing time → aware UTC."""
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=BEIJING).astimezone(UTC)
    except ValueError:
        raise ProviderBadResponse(f"time_end {text!r} is not yyyyMMddHHmmss") from None


def format_time_end(at: datetime) -> str:
    return at.astimezone(BEIJING).strftime("%Y%m%d%H%M%S")


def format_time_expire(at: datetime) -> str:
    """micropay's `time_expire`: `yyyyMMddHHmmss` in Beijing time, rounded up to the whole second (never before `at`)."""
    whole = at.replace(microsecond=0)
    return format_time_end(whole if whole == at else whole + timedelta(seconds=1))


def _int_field(fields: Mapping[str, str], name: str) -> int | None:
    value = fields.get(name)
    if not value:
        return None
    if not value.isdigit():
        raise ProviderBadResponse(f"{name} {value!r} is not a whole number of fen")
    return int(value)


# --- the settlement bill --------------------------------------------------------------------------------------

BILL_STATES = {"SUCCESS": "SUCCESS", "REFUND": "REFUND", "REVOKED": "REVOKED"}


def parse_bill(text: str) -> list[BillRow]:
    """The text bill of `downloadbill` (bill_type ALL): a header line, one line per row with every field
    prefixed by a back-quote, then a summary header (总交易单数,...) and a summary line. Amounts are yuan.

    Columns are found by their header names, so both the current layout (订单金额, 应结订单金额, 27 columns)
    and the older one (总金额, 24 columns) parse. The summary's row count must match the rows read.
    """
    lines = [line.strip() for line in text.lstrip("\ufeff").splitlines() if line.strip()]
    if not lines:
        return []
    header = [name.strip() for name in lines[0].split(",")]
    column = {name: index for index, name in enumerate(header)}
    needed = ("交易时间", "微信订单号", "商户订单号", "交易状态")
    if any(name not in column for name in needed):
        raise ProviderBadResponse(
            f"the bill's header lacks {', '.join(n for n in needed if n not in column)}: {lines[0][:120]!r}"
        )
    order_amount = next((name for name in ("订单金额", "应结订单金额", "总金额") if name in column), None)
    if order_amount is None:
        raise ProviderBadResponse("the bill's header names no order amount column")
    rows: list[BillRow] = []
    summary: list[str] | None = None
    for number, line in enumerate(lines[1:], start=2):
        if line.startswith("总交易单数"):
            if number < len(lines):
                summary = [field.lstrip("`") for field in lines[number].split(",")]
            break
        if not line.startswith("`"):
            raise ProviderBadResponse(f"bill line {number} does not start with a back-quote")
        fields = line[1:].split(",`")
        if len(fields) != len(header):
            raise ProviderBadResponse(f"bill line {number} has {len(fields)} fields, the header {len(header)}")
        status = fields[column["交易状态"]].strip()
        if status not in BILL_STATES:
            raise ProviderBadResponse(f"bill line {number}: unknown trade state {status!r}")
        if status == "REFUND":
            amount_column = "退款金额" if "退款金额" in column else order_amount
        else:
            amount_column = order_amount
        try:
            paid_at = (
                datetime.strptime(fields[column["交易时间"]].strip(), "%Y-%m-%d %H:%M:%S")
                .replace(tzinfo=BEIJING)
                .astimezone(UTC)
            )
        except ValueError:
            raise ProviderBadResponse(f"bill line {number}: bad time {fields[column['交易时间']]!r}") from None
        payer = fields[column["用户标识"]].strip() if "用户标识" in column else ""
        device = fields[column["设备号"]].strip() if "设备号" in column else ""
        rows.append(
            BillRow(
                out_trade_no=fields[column["商户订单号"]].strip(),
                provider_trade_no=fields[column["微信订单号"]].strip(),
                status=BILL_STATES[status],  # type: ignore[arg-type]
                amount_fen=yuan_to_fen(fields[column[amount_column]]),
                paid_at=paid_at,
                payer_id=payer or None,
                device=device or None,
            )
        )
    if summary is None:
        raise ProviderBadResponse("the bill has no summary (总交易单数) lines: it may be cut short")
    try:
        counted = int(summary[0])
    except (ValueError, IndexError):
        raise ProviderBadResponse(f"the bill's summary line is not readable: {summary!r}") from None
    if counted != len(rows):
        raise ProviderBadResponse(f"the bill's summary counts {counted} rows, {len(rows)} were read")
    return rows


# --- the client -----------------------------------------------------------------------------------------------


class WeChatPayClient:
    """A `Provider` speaking WeChat Pay API v2 to `base_url` (https://api.mch.weixin.qq.com, or a simulator)."""

    name = "wechat"

    def __init__(
        self,
        *,
        base_url: str,
        appid: str,
        mch_id: str,
        api_key: str,
        sign_type: SignType = "HMAC-SHA256",
        cert_path: Path | None = None,
        key_path: Path | None = None,
        timeout: float = 10.0,
        spbill_create_ip: str = "127.0.0.1",
        clock: Callable[[], datetime] | None = None,
    ):
        if sign_type not in SIGN_TYPES:
            raise ValueError(f"sign_type must be one of {', '.join(SIGN_TYPES)}")
        try:
            ipaddress.IPv4Address(spbill_create_ip)
        except ValueError:
            raise ValueError(
                f"spbill_create_ip must be an IPv4 address (central's own, as WeChat Pay sees it), not {spbill_create_ip!r}"
            ) from None
        self.spbill_create_ip = spbill_create_ip
        self._clock = clock or (lambda: datetime.now(UTC))
        self.base_url = base_url.rstrip("/")
        self.appid = appid
        self.mch_id = mch_id
        self._key = api_key
        self.sign_type: SignType = sign_type
        self.timeout = timeout
        self._tls: ssl.SSLContext | None = None
        if cert_path is not None and key_path is not None:
            # Loaded now, so a wrong path stops the service at start instead of failing the first reverse.
            self._tls = ssl.create_default_context()
            try:
                self._tls.load_cert_chain(str(cert_path), str(key_path))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot load the merchant certificate {cert_path} / {key_path}: {exc}") from exc
        self._clients: dict[bool, tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> WeChatPayClient:
        return cls(
            base_url=settings.wechat_base_url or "",
            appid=settings.wechat_appid or "",
            mch_id=settings.wechat_mch_id or "",
            api_key=settings.wechat_api_key.get_secret_value() if settings.wechat_api_key else "",
            sign_type=settings.wechat_sign_type,
            cert_path=settings.wechat_cert_path,
            key_path=settings.wechat_key_path,
            timeout=settings.wechat_timeout_seconds,
            spbill_create_ip=str(settings.wechat_spbill_create_ip),
        )

    @property
    def payer_id_kind(self) -> str:
        """The member identifier kind a payer id of this provider is stored under (central.identity)."""
        return f"openid:{self.appid}"

    # -- Provider --

    async def charge(self, charge: Charge) -> Result:
        params = {
            "body": _truncate_utf8(charge.description or "门店消费", 128),
            "out_trade_no": charge.out_trade_no,
            "total_fee": str(charge.amount_fen),
            "fee_type": "CNY",
            "spbill_create_ip": self.spbill_create_ip,
            "auth_code": charge.auth_code,
            "device_info": f"{charge.store_id}-{charge.station_id}"[:32],
        }
        if charge.expires_at is not None:
            # Refused on arrival, or closed while the customer confirms, once central has given up on it.
            shortest = self._clock() + MICROPAY_SHORTEST_EXPIRY + EXPIRY_ALLOWANCE
            params["time_expire"] = format_time_expire(max(charge.expires_at, shortest))
        fields = await self._call("pay/micropay", params)
        if fields.get("result_code") == "SUCCESS":
            return self._paid(fields, charge.out_trade_no)
        code = fields.get("err_code") or None
        found = meaning(code)
        if code not in ERROR_CODES:
            log.warning(
                "micropay %s: unknown err_code %s (%s); querying", charge.out_trade_no, code, fields.get("err_code_des")
            )
        return Result(found.outcome, charge.out_trade_no, code=code, reason_zh=found.zh, reason_en=found.en)

    async def query(self, out_trade_no: str) -> Result:
        fields = await self._call("pay/orderquery", {"out_trade_no": out_trade_no})
        if fields.get("result_code") != "SUCCESS":
            code = fields.get("err_code") or None
            if code == "ORDERNOTEXIST":
                return Result(
                    Outcome.NOT_FOUND,
                    out_trade_no,
                    code=code,
                    reason_zh="微信支付无此订单",
                    reason_en="WeChat Pay has no such order",
                )
            return Result(Outcome.UNKNOWN, out_trade_no, code=code, reason_zh=_CONFIRMING.zh, reason_en=_CONFIRMING.en)
        state = fields.get("trade_state", "")
        if state == "SUCCESS":
            return self._paid(fields, out_trade_no)
        found = TRADE_STATES.get(state)
        if found is None:
            log.warning("orderquery %s: unknown trade_state %r", out_trade_no, state)
            return Result(
                Outcome.UNKNOWN, out_trade_no, code=state or None, reason_zh=_CONFIRMING.zh, reason_en=_CONFIRMING.en
            )
        description = fields.get("trade_state_desc") or found.zh
        return Result(
            found.outcome,
            out_trade_no,
            provider_trade_no=fields.get("transaction_id") or None,
            payer_id=fields.get("openid") or None,
            amount_fen=_int_field(fields, "total_fee"),
            code=state,
            reason_zh=description,
            reason_en=found.en,
        )

    async def reverse(self, out_trade_no: str) -> ReverseResult:
        fields = await self._call("secapi/pay/reverse", {"out_trade_no": out_trade_no}, certificate=True)
        recall = fields.get("recall") == "Y"
        if fields.get("result_code") == "SUCCESS":
            return ReverseResult(done=True, recall=False)
        code = fields.get("err_code") or None
        if code == "ORDERNOTEXIST":
            return ReverseResult(done=True, recall=False, code=code)  # nothing was charged; nothing to give back
        return ReverseResult(done=False, recall=recall, code=code)

    async def identify(self, auth_code: str) -> str | None:
        fields = await self._call("tools/authcodetoopenid", {"auth_code": auth_code})
        if fields.get("result_code") == "SUCCESS":
            return fields.get("openid") or None
        code = fields.get("err_code")
        if code in ("AUTHCODEEXPIRE", "AUTH_CODE_INVALID", "AUTH_CODE_ERROR", "PARAM_ERROR"):
            return None  # the code cannot say who pays; the charge will say why it fails
        raise ProviderError(f"authcodetoopenid: {code or 'no err_code'} ({fields.get('err_code_des', '')})")

    async def refund(self, order: RefundOrder) -> RefundResult:
        """secapi/pay/refund (needs the merchant certificate). Success only says WeChat accepted the refund: it is
        PROCESSING until refundquery says SUCCESS. `op_user_id` is left out (WeChat defaults it to the mch_id)."""
        params = {
            "out_trade_no": order.out_trade_no,
            "out_refund_no": order.out_refund_no,
            "total_fee": str(order.total_fen),
            "refund_fee": str(order.amount_fen),
            "refund_fee_type": "CNY",
        }
        if order.reason:
            params["refund_desc"] = _truncate_utf8(order.reason, 80)
        fields = await self._call("secapi/pay/refund", params, certificate=True)
        if fields.get("result_code") == "SUCCESS":
            for name, ours in (("out_trade_no", order.out_trade_no), ("out_refund_no", order.out_refund_no)):
                if fields.get(name) and fields[name] != ours:
                    raise ProviderBadResponse(f"refund: the answer is for {name} {fields[name]}, not {ours}")
            return RefundResult(
                RefundStatus.PROCESSING,
                order.out_refund_no,
                provider_refund_no=fields.get("refund_id") or None,
                amount_fen=_int_field(fields, "refund_fee"),
                code="PROCESSING",
                reason_zh=_REFUND_ACCEPTED.zh,
                reason_en=_REFUND_ACCEPTED.en,
            )
        code = fields.get("err_code") or None
        found = REFUND_ERROR_CODES.get(code or "")
        if found is None:
            log.warning(
                "refund %s: unknown err_code %s (%s); querying", order.out_refund_no, code, fields.get("err_code_des")
            )
            found = _REFUND_CONFIRMING
        zh = found.zh
        if code in ("INVALID_REQUEST", "ERROR") and fields.get("err_code_des"):
            zh = f"微信支付拒绝了该退款：{fields['err_code_des']}"
        return RefundResult(found.status, order.out_refund_no, code=code, reason_zh=zh, reason_en=found.en)

    async def refund_query(self, out_trade_no: str, out_refund_no: str) -> RefundResult:
        """pay/refundquery by out_refund_no (WeChat looks it up by that number alone)."""
        fields = await self._call("pay/refundquery", {"out_refund_no": out_refund_no})
        if fields.get("result_code") != "SUCCESS":
            code = fields.get("err_code") or None
            if code == "REFUNDNOTEXIST":
                return RefundResult(
                    RefundStatus.NOT_FOUND,
                    out_refund_no,
                    code=code,
                    reason_zh="微信支付无此退款",
                    reason_en="WeChat Pay has no such refund",
                )
            return RefundResult(
                RefundStatus.UNKNOWN,
                out_refund_no,
                code=code,
                reason_zh=_REFUND_CONFIRMING.zh,
                reason_en=_REFUND_CONFIRMING.en,
            )
        if fields.get("out_trade_no") and fields["out_trade_no"] != out_trade_no:
            raise ProviderBadResponse(
                f"refundquery: the answer is for order {fields['out_trade_no']}, not {out_trade_no}"
            )
        count = _int_field(fields, "refund_count") or 0
        index = next((n for n in range(count) if fields.get(f"out_refund_no_{n}") == out_refund_no), None)
        if index is None:
            raise ProviderBadResponse(f"refundquery: the answer does not list refund {out_refund_no}")
        status = fields.get(f"refund_status_{index}", "")
        found = REFUND_STATUSES.get(status)
        if found is None:
            log.warning("refundquery %s: unknown refund_status %r", out_refund_no, status)
            found = _REFUND_CONFIRMING
        if status == "CHANGE":
            log.warning(
                "refund %s: WeChat could not pay it back (CHANGE); handle it in the merchant platform", out_refund_no
            )
        return RefundResult(
            found.status,
            out_refund_no,
            provider_refund_no=fields.get(f"refund_id_{index}") or None,
            amount_fen=_int_field(fields, f"refund_fee_{index}"),
            refunded_at=parse_refund_time(fields.get(f"refund_success_time_{index}")) if status == "SUCCESS" else None,
            code=status or None,
            reason_zh=found.zh,
            reason_en=found.en,
        )

    async def bill(self, day: date) -> list[BillRow]:
        params = {"bill_date": day.strftime("%Y%m%d"), "bill_type": "ALL"}
        response = await self._send("pay/downloadbill", params)
        body = response.content
        if body.lstrip().startswith(b"<xml"):
            fields = parse_xml(body)
            message = fields.get("return_msg", "")
            if "No Bill Exist" in message or fields.get("error_code") == "20002":
                return []  # nothing was paid that day
            raise ProviderRejected(f"downloadbill {day}: {message or 'refused'} ({fields.get('error_code', '')})")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ProviderBadResponse("the bill is not UTF-8 text") from None
        return parse_bill(text)

    async def aclose(self) -> None:
        for _loop, client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    # -- the exchange --

    def _http(self, certificate: bool) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        cached = self._clients.get(certificate)
        if cached is not None and cached[0] is loop:
            return cached[1]
        # A client's connections belong to the loop that opened them: a new loop (a restart) gets a new client.
        verify: ssl.SSLContext | bool = self._tls if certificate and self._tls is not None else True
        client = httpx.AsyncClient(timeout=self.timeout, verify=verify, trust_env=False)
        self._clients[certificate] = (loop, client)
        return client

    def _sign_type_of(self, path: str) -> SignType:
        return "MD5" if path in MD5_ONLY_PATHS else self.sign_type

    async def _send(self, path: str, params: Mapping[str, str], *, certificate: bool = False) -> httpx.Response:
        signed: dict[str, str] = {"appid": self.appid, "mch_id": self.mch_id, "nonce_str": new_nonce()}
        if path not in MD5_ONLY_PATHS:
            signed["sign_type"] = self.sign_type
        signed |= params
        signed["sign"] = sign(signed, self._key, self._sign_type_of(path))
        url = f"{self.base_url}/{path}"
        try:
            response = await self._http(certificate).post(
                url, content=to_xml(signed), headers={"Content-Type": "text/xml; charset=utf-8"}
            )
        except httpx.TimeoutException as exc:
            raise ProviderUnreachable(
                f"{path}: no answer within {self.timeout:g} s (it may have been processed)"
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderUnreachable(f"{path}: cannot reach WeChat Pay ({type(exc).__name__}: {exc})") from exc
        if response.status_code != 200:
            raise ProviderBadResponse(f"{path}: HTTP {response.status_code} from WeChat Pay")
        return response

    async def _call(self, path: str, params: Mapping[str, str], *, certificate: bool = False) -> dict[str, str]:
        response = await self._send(path, params, certificate=certificate)
        fields = parse_xml(response.content)
        return_code = fields.get("return_code")
        if return_code == "FAIL":
            # Refused before any processing (signature, parameters, merchant set-up); such answers are unsigned.
            raise ProviderRejected(f"{path}: {fields.get('return_msg') or 'refused without a message'}")
        if return_code != "SUCCESS":
            raise ProviderBadResponse(f"{path}: no return_code in the answer")
        if not signature_ok(fields, self._key, self._sign_type_of(path)):
            raise ProviderBadResponse(
                f"{path}: the answer's signature does not verify"
                if fields.get("sign")
                else f"{path}: the answer is not signed"
            )
        for name, ours in (("appid", self.appid), ("mch_id", self.mch_id)):
            if fields.get(name) and fields[name] != ours:
                raise ProviderBadResponse(f"{path}: the answer is for {name} {fields[name]}, not ours")
        return fields

    def _paid(self, fields: Mapping[str, str], out_trade_no: str) -> Result:
        if fields.get("out_trade_no") and fields["out_trade_no"] != out_trade_no:
            raise ProviderBadResponse(f"the answer is for order {fields['out_trade_no']}, not {out_trade_no}")
        if not fields.get("transaction_id"):
            raise ProviderBadResponse("a paid answer without transaction_id")
        return Result(
            Outcome.SUCCESS,
            out_trade_no,
            provider_trade_no=fields["transaction_id"],
            payer_id=fields.get("openid") or None,
            amount_fen=_int_field(fields, "total_fee"),
            paid_at=parse_time_end(fields.get("time_end")),
            code="SUCCESS",
            reason_zh="支付成功",
            reason_en="Paid",
        )


def _truncate_utf8(text: str, limit: int) -> str:
    """At most `limit` bytes of UTF-8, cut on a character boundary (body is string(128), counted in bytes)."""
    data = text.encode("utf-8")[:limit]
    return data.decode("utf-8", errors="ignore")
