"""A WeChat Pay API v2 simulator (micropay, authcodetoopenid, orderquery, reverse, refund, refundquery,
downloadbill) plus the two official-account calls the member-card sync makes (cgi-bin/token,
card/membercard/updateuser).

It checks every request's signature with the protocol's algorithm (MD5 or HMAC-SHA256, as the request's
`sign_type` says), answers in WeChat's XML with its own signature, keeps orders in memory and writes the
settlement bill from what it processed. As WeChat does, it refuses an authcodetoopenid request that carries a
`sign_type` or a sign that is not a 32-character MD5 (return_code FAIL, 签名错误): that call is signed MD5 only.

A micropay's `time_expire` (yyyyMMddHHmmss, Beijing time) is enforced: one less than a minute after the request
arrives, or already past, is refused with WeChat's own answer (return_code FAIL, "time_expire时间过短，刷卡至少1分钟，
其他5分钟"), and an order still waiting for the customer when it passes is closed (orderquery: trade_state CLOSED).

The scenario is picked by the auth code's last two digits:

| ends in | micropay answers | then |
|---|---|---|
| anything else | SUCCESS | paid |
| 10 | USERPAYING | paid after `userpaying_seconds` |
| 11 | USERPAYING | the customer cancels after `userpaying_seconds`: PAYERROR |
| 12 | USERPAYING | the customer never confirms (USERPAYING until reversed) |
| 20 | SYSTEMERROR | paid: orderquery says SUCCESS |
| 21 | BANKERROR | paid: orderquery says SUCCESS |
| 30 | AUTHCODEEXPIRE | not paid (authcodetoopenid: AUTHCODEEXPIRE too) |
| 31 | AUTH_CODE_INVALID | not paid (authcodetoopenid: AUTH_CODE_INVALID too) |
| 32 | NOTENOUGH | not paid |
| 40 | USERPAYING, never confirmed | the first reverse answers SYSTEMERROR with recall=Y, the next one succeeds |
| 41 | USERPAYING, never confirmed | the first two reverses fail (HTTP 500, then SYSTEMERROR recall=N), the third succeeds |
| 50 | paid at once, but the answer is held `slow_seconds` (past the client's timeout) | orderquery says SUCCESS |
| 51 | paid, but the answer's signature is tampered with | orderquery says SUCCESS |
| 52 | paid, but the answer is an HTML error page (HTTP 200) | orderquery says SUCCESS |
| 60 | paid | the first refund is made, but its answer is an HTML error page (HTTP 200): refundquery knows it |
| 61 | paid | the first refund answers SYSTEMERROR and is not made; the same refund sent again is |
| 62 | paid | every refund answers NOTENOUGH (the merchant's balance cannot cover it) |

Refunds (`secapi/pay/refund`, `pay/refundquery`) of a paid order: every refund is accepted as PROCESSING and
settles (refundquery: SUCCESS) `refund_seconds` after it was made, on `clock`. The same out_refund_no again
answers the same refund (never a second one; with other amounts: INVALID_REQUEST 订单金额或退款金额与之前请求不一致);
more than what is left is INVALID_REQUEST "refund_fee大于可退金额", or "订单已全额退款" when nothing is left; an
order that is not paid: ERROR; an unknown one: ORDERNOTEXIST. orderquery then says trade_state REFUND, and the
bill of the day a refund settles carries a REFUND row for it. The simulator does not check the client
certificate (it serves plain HTTP).

An auth code is `PP CCCC ... SS`: prefix 10–15, then four digits naming the simulated customer (the same
customer gets the same openid from every code), then anything, then the scenario. Codes are WeChat's 18 digits.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from central.payments.provider import ProviderBadResponse
from central.payments.wechat import (
    AUTH_CODE_PATTERN,
    BEIJING,
    SIGN_TYPES,
    fen_to_yuan,
    format_refund_time,
    format_time_end,
    new_nonce,
    parse_xml,
    sign,
    signature_ok,
    to_xml,
)

PAID, USERPAYING, PAYERROR, REVOKED, CLOSED = "SUCCESS", "USERPAYING", "PAYERROR", "REVOKED", "CLOSED"
MD5_SIGN = re.compile(r"^[0-9A-Fa-f]{32}$")
SHORTEST_EXPIRY = timedelta(minutes=1)  # a micropay's time_expire is at least this far after it arrives
TIME_EXPIRE_TOO_SHORT = "time_expire时间过短，刷卡至少1分钟，其他5分钟"
BILL_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,"
    "应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,"
    "手续费,费率,订单金额,申请退款金额,费率备注"
)
BILL_SUMMARY_HEADER = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"


def customer_openid(appid: str, customer: str) -> str:
    """The openid (of `appid`) of simulated customer `customer`, the four digits after an auth code's prefix."""
    digest = hashlib.sha256(f"{appid}/{customer}".encode()).digest()
    return "o" + base64.urlsafe_b64encode(digest).decode()[:27]


def scenario_of(auth_code: str) -> str:
    return auth_code[-2:]


@dataclass
class SimOrder:
    out_trade_no: str
    auth_code: str
    amount_fen: int
    body: str
    device_info: str
    openid: str
    scenario: str
    created_at: datetime
    state: str
    transaction_id: str
    paid_at: datetime | None = None
    reversed_at: datetime | None = None
    paid_before_reverse: bool = False
    reverse_calls: int = 0
    refund_calls: int = 0
    expires_at: datetime | None = None  # the request's time_expire
    spbill_create_ip: str = ""


@dataclass
class SimRefund:
    out_refund_no: str
    out_trade_no: str
    refund_id: str
    amount_fen: int
    created_at: datetime
    desc: str = ""
    state: str = "PROCESSING"  # PROCESSING | SUCCESS
    succeeded_at: datetime | None = None


@dataclass
class CardCall:
    """One `card/membercard/updateuser` call as received."""

    body: dict[str, Any]
    answered: int  # errcode given back


@dataclass
class WeChatSimulator:
    appid: str
    mch_id: str
    api_key: str
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    userpaying_seconds: float = 5.0
    slow_seconds: float = 3.0
    refund_seconds: float = 1.0  # a refund is PROCESSING this long, then SUCCESS
    card_appsecret: str = "card-appsecret-of-the-simulator"
    orders: dict[str, SimOrder] = field(default_factory=dict)
    refunds: dict[str, SimRefund] = field(default_factory=dict)  # by out_refund_no
    calls: list[tuple[str, str | None]] = field(default_factory=list)  # (endpoint, out_trade_no)
    card_calls: list[CardCall] = field(default_factory=list)
    card_failures: int = 0  # the next this many updateuser calls answer a system error
    _tokens: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _serial: int = 0

    # -- for tests and operators --

    def count(self, endpoint: str, out_trade_no: str | None = None) -> int:
        with self._lock:
            return sum(1 for e, o in self.calls if e == endpoint and (out_trade_no is None or o == out_trade_no))

    def openid_for(self, auth_code: str) -> str:
        """The openid of the customer an auth code belongs to (digits 3–6), stable across codes."""
        return customer_openid(self.appid, auth_code[2:6])

    def add_order(
        self,
        out_trade_no: str,
        amount_fen: int,
        *,
        paid_at: datetime | None = None,
        device_info: str = "SIM-T01",
        openid: str = "oSIMULATEDPAYER",
    ) -> SimOrder:
        """An order paid outside the API (e.g. one the store never heard of), for reconciliation tests."""
        at = paid_at or self.clock()
        with self._lock:
            order = SimOrder(
                out_trade_no,
                "",
                amount_fen,
                "模拟订单",
                device_info,
                openid,
                "00",
                at,
                PAID,
                self._transaction_id(at),
                paid_at=at,
            )
            self.orders[out_trade_no] = order
        return order

    def refunded_fen(self, out_trade_no: str) -> int:
        """What the order's refunds add up to (made, settled or not)."""
        with self._lock:
            return self._refunded(out_trade_no)

    def _refunded(self, out_trade_no: str) -> int:
        return sum(r.amount_fen for r in self.refunds.values() if r.out_trade_no == out_trade_no)

    def refund(self, out_refund_no: str) -> SimRefund | None:
        """A refund as it stands now (settled if its time has come)."""
        with self._lock:
            found = self.refunds.get(out_refund_no)
            if found is not None:
                self._advance_refund(found)
            return found

    def records(self) -> dict[str, list[dict[str, Any]]]:
        """Every order and refund as it stands now (read-only), for runs that follow money end to end."""
        from dataclasses import asdict

        with self._lock:
            for order in self.orders.values():
                self._advance(order)
            for refund in self.refunds.values():
                self._advance_refund(refund)
            return {
                "orders": [asdict(o) for o in self.orders.values()],
                "refunds": [asdict(r) for r in self.refunds.values()],
            }

    def bill_text(self, day: date) -> str | None:
        """The bill of a Beijing calendar day, or None when nothing was paid or refunded that day."""
        with self._lock:
            lines: list[tuple[datetime, str]] = []
            count, settled, fees, refunded = 0, 0, 0, 0
            for refund in self.refunds.values():
                self._advance_refund(refund)
                if refund.succeeded_at is None or refund.succeeded_at.astimezone(BEIJING).date() != day:
                    continue
                order = self.orders[refund.out_trade_no]
                count += 1
                refunded += refund.amount_fen
                at = refund.succeeded_at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
                fields = [
                    at,
                    self.appid,
                    self.mch_id,
                    "0",
                    order.device_info,
                    order.transaction_id,
                    order.out_trade_no,
                    order.openid,
                    "MICROPAY",
                    "REFUND",
                    "OTHERS",
                    "CNY",
                    "0.00",
                    "0.00",
                    refund.refund_id,
                    refund.out_refund_no,
                    fen_to_yuan(refund.amount_fen),
                    "0.00",
                    "ORIGINAL",
                    "SUCCESS",
                    order.body,
                    "",
                    "0.00",
                    "0.60%",
                    "0.00",
                    fen_to_yuan(refund.amount_fen),
                    "",
                ]
                lines.append((refund.succeeded_at, "`" + ",`".join(fields)))
            for order in sorted(self.orders.values(), key=lambda o: o.paid_at or o.created_at):
                self._advance(order)
                if order.paid_at is None or order.paid_at.astimezone(BEIJING).date() != day:
                    continue
                if order.state == PAID:
                    status = "SUCCESS"
                elif order.state == REVOKED and order.paid_before_reverse:
                    status = "REVOKED"  # paid, then reversed: the money went back
                else:
                    continue
                fee = (order.amount_fen * 6 + 500) // 1000 if status == "SUCCESS" else 0  # 0.60 %, rounded half up
                count += 1
                settled += order.amount_fen if status == "SUCCESS" else 0
                fees += fee
                at = order.paid_at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
                fields = [
                    at,
                    self.appid,
                    self.mch_id,
                    "0",
                    order.device_info,
                    order.transaction_id,
                    order.out_trade_no,
                    order.openid,
                    "MICROPAY",
                    status,
                    "OTHERS",
                    "CNY",
                    fen_to_yuan(order.amount_fen),
                    "0.00",
                    "0",
                    "0",
                    fen_to_yuan(order.amount_fen if status == "REVOKED" else 0),
                    "0.00",
                    "",
                    "",
                    order.body,
                    "",
                    fen_to_yuan(fee),
                    "0.60%",
                    fen_to_yuan(order.amount_fen),
                    "0.00",
                    "",
                ]
                lines.append((order.paid_at, "`" + ",`".join(fields)))
        if not lines:
            return None
        lines.sort(key=lambda line: line[0])
        summary = [
            str(count),
            fen_to_yuan(settled),
            fen_to_yuan(refunded),
            "0.00",
            fen_to_yuan(fees),
            fen_to_yuan(settled),
            fen_to_yuan(refunded),
        ]
        return (
            "\r\n".join([BILL_HEADER, *(line for _, line in lines), BILL_SUMMARY_HEADER, "`" + ",`".join(summary)])
            + "\r\n"
        )

    # -- the state of an order --

    def _transaction_id(self, at: datetime) -> str:
        self._serial += 1
        return f"4200{at.astimezone(BEIJING):%Y%m%d}{self._serial:014d}"[:28]

    def _advance(self, order: SimOrder) -> None:
        """Let the simulated customer act: scenarios 10/11 finish after `userpaying_seconds`; an order still waiting
        when its time_expire passes is closed."""
        if order.state != USERPAYING:
            return
        now = self.clock()
        finished = order.created_at + timedelta(seconds=self.userpaying_seconds)
        if order.expires_at is not None and now >= order.expires_at:
            if order.scenario not in ("10", "11") or finished > order.expires_at:
                order.state = CLOSED
                return
        if order.scenario in ("10", "11") and now >= finished:
            if order.scenario == "10":
                order.state, order.paid_at = PAID, finished
            else:
                order.state = PAYERROR

    def _advance_refund(self, refund: SimRefund) -> None:
        """Let the bank act: a refund settles `refund_seconds` after it was made."""
        settles = refund.created_at + timedelta(seconds=self.refund_seconds)
        if refund.state == "PROCESSING" and self.clock() >= settles:
            refund.state, refund.succeeded_at = "SUCCESS", settles

    # -- the web app --

    def app(self) -> FastAPI:
        app = FastAPI(title="WeChat Pay v2 simulator", docs_url=None, redoc_url=None, openapi_url=None)

        @app.post("/pay/micropay")
        async def micropay(request: Request) -> Response:
            return await self._handle(
                request, "micropay", ("body", "out_trade_no", "total_fee", "spbill_create_ip", "auth_code")
            )

        @app.post("/pay/orderquery")
        async def orderquery(request: Request) -> Response:
            return await self._handle(request, "orderquery", ("out_trade_no",))

        @app.post("/secapi/pay/reverse")
        async def reverse(request: Request) -> Response:
            return await self._handle(request, "reverse", ("out_trade_no",))

        @app.post("/secapi/pay/refund")
        async def refund(request: Request) -> Response:
            return await self._handle(request, "refund", ("out_trade_no", "out_refund_no", "total_fee", "refund_fee"))

        @app.post("/pay/refundquery")
        async def refundquery(request: Request) -> Response:
            return await self._handle(request, "refundquery", ())

        @app.post("/tools/authcodetoopenid")
        async def authcodetoopenid(request: Request) -> Response:
            return await self._handle(request, "authcodetoopenid", ("auth_code",))

        @app.post("/pay/downloadbill")
        async def downloadbill(request: Request) -> Response:
            return await self._handle(request, "downloadbill", ("bill_date",))

        @app.get("/cgi-bin/token")
        async def token(grant_type: str = "", appid: str = "", secret: str = "") -> JSONResponse:
            if grant_type != "client_credential" or appid != self.appid or secret != self.card_appsecret:
                return JSONResponse({"errcode": 40125, "errmsg": "invalid appsecret"})
            issued = "SIMTOKEN" + secrets.token_hex(16)
            with self._lock:
                self._tokens.add(issued)
            return JSONResponse({"access_token": issued, "expires_in": 7200})

        @app.get("/_sim/records")
        async def records() -> dict[str, list[dict[str, Any]]]:
            return self.records()  # the simulator's own ledger, for checks (not a WeChat API)

        @app.post("/card/membercard/updateuser")
        async def updateuser(request: Request, access_token: str = "") -> JSONResponse:
            body = await request.json()
            with self._lock:
                if access_token not in self._tokens:
                    answer = {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"}
                elif self.card_failures > 0:
                    self.card_failures -= 1
                    answer = {"errcode": -1, "errmsg": "system error"}
                elif not body.get("code") or not body.get("card_id"):
                    answer = {"errcode": 40056, "errmsg": "invalid serial code"}
                else:
                    answer = {"errcode": 0, "errmsg": "ok", "result_bonus": body.get("bonus"), "openid": "oCARDHOLDER"}
                self.card_calls.append(CardCall(body, answer["errcode"]))
            return JSONResponse(answer)

        return app

    async def _handle(self, request: Request, endpoint: str, required: tuple[str, ...]) -> Response:
        raw = await request.body()
        try:
            params = parse_xml(raw)
        except ProviderBadResponse:
            return self._fail("XML格式错误")
        sign_type = params.get("sign_type") or "MD5"
        if endpoint == "authcodetoopenid" and ("sign_type" in params or not MD5_SIGN.match(params.get("sign", ""))):
            return self._fail("签名错误")  # its API takes no sign_type and a sign of at most 32 characters: MD5
        if sign_type not in SIGN_TYPES:
            return self._fail("签名类型错误")
        if params.get("appid") != self.appid or params.get("mch_id") != self.mch_id:
            return self._fail("appid和mch_id不匹配")
        if not signature_ok(params, self.api_key, sign_type):  # type: ignore[arg-type]
            return self._fail("签名错误")
        if not params.get("nonce_str"):
            return self._fail("缺少参数nonce_str")
        missing = [name for name in required if not params.get(name)]
        if missing:
            return self._fail(f"缺少参数{missing[0]}")
        with self._lock:
            refund = self.refunds.get(params.get("out_refund_no", ""))
            self.calls.append((endpoint, params.get("out_trade_no") or (refund.out_trade_no if refund else None)))
        handler = getattr(self, f"_{endpoint}")
        return await handler(params, sign_type)

    # -- endpoints: each answers fields (signed here) or a raw Response --

    async def _micropay(self, params: dict[str, str], sign_type: str) -> Response:
        code, out_trade_no = params["auth_code"], params["out_trade_no"]
        if not params["total_fee"].isdigit() or int(params["total_fee"]) <= 0:
            return self._answer(
                sign_type, result_code="FAIL", err_code="PARAM_ERROR", err_code_des="total_fee必须为正整数"
            )
        if not AUTH_CODE_PATTERN.match(code):
            return self._answer(
                sign_type, result_code="FAIL", err_code="AUTH_CODE_INVALID", err_code_des="请扫描微信支付授权码"
            )
        amount = int(params["total_fee"])
        scenario = scenario_of(code)
        now = self.clock()
        expires_at = None
        if params.get("time_expire"):
            try:
                expires_at = datetime.strptime(params["time_expire"], "%Y%m%d%H%M%S").replace(tzinfo=BEIJING)
            except ValueError:
                return self._fail("time_expire格式错误，应为yyyyMMddHHmmss")
            if expires_at - now < SHORTEST_EXPIRY:  # already past, or too close: refused before any processing
                return self._fail(TIME_EXPIRE_TOO_SHORT)
        with self._lock:
            existing = self.orders.get(out_trade_no)
            if existing is not None:
                self._advance(existing)
                if existing.auth_code != code or existing.amount_fen != amount:
                    return self._answer(
                        sign_type, result_code="FAIL", err_code="OUT_TRADE_NO_USED", err_code_des="商户订单号重复"
                    )
                fail = {
                    PAID: "ORDERPAID",
                    REVOKED: "ORDERREVERSED",
                    PAYERROR: "TRADE_ERROR",
                    CLOSED: "ORDERCLOSED",
                }.get(existing.state, "USERPAYING")
                return self._answer(sign_type, result_code="FAIL", err_code=fail, err_code_des="订单已存在")
            refusal = {
                "30": ("AUTHCODEEXPIRE", "二维码已过期，请用户在微信上刷新后再试"),
                "31": ("AUTH_CODE_INVALID", "授权码检验错误"),
                "32": ("NOTENOUGH", "余额不足"),
            }.get(scenario)
            if refusal is not None:
                return self._answer(sign_type, result_code="FAIL", err_code=refusal[0], err_code_des=refusal[1])
            waiting = scenario in ("10", "11", "12", "40", "41")
            order = SimOrder(
                out_trade_no,
                code,
                amount,
                params["body"],
                params.get("device_info", ""),
                self.openid_for(code),
                scenario,
                now,
                USERPAYING if waiting else PAID,
                self._transaction_id(now),
                paid_at=None if waiting else now,
                expires_at=expires_at,
                spbill_create_ip=params["spbill_create_ip"],
            )
            self.orders[out_trade_no] = order
        if waiting:
            return self._answer(
                sign_type, result_code="FAIL", err_code="USERPAYING", err_code_des="需要用户输入支付密码"
            )
        if scenario == "20":
            return self._answer(sign_type, result_code="FAIL", err_code="SYSTEMERROR", err_code_des="系统超时")
        if scenario == "21":
            return self._answer(sign_type, result_code="FAIL", err_code="BANKERROR", err_code_des="银行系统异常")
        if scenario == "50":
            await asyncio.sleep(self.slow_seconds)  # processed; the answer comes too late for the client
        if scenario == "52":
            return Response("<html><body><h1>502 Bad Gateway</h1></body></html>", media_type="text/html")
        paid = self._paid_fields(order)
        if scenario == "51":
            answer = self._signed(sign_type, result_code="SUCCESS", **paid)
            answer["total_fee"] = str(order.amount_fen + 1)  # changed after signing: must not verify
            return Response(to_xml(answer), media_type="text/xml")
        return self._answer(sign_type, result_code="SUCCESS", **paid)

    async def _orderquery(self, params: dict[str, str], sign_type: str) -> Response:
        with self._lock:
            order = self.orders.get(params["out_trade_no"])
            if order is None:
                return self._answer(
                    sign_type, result_code="FAIL", err_code="ORDERNOTEXIST", err_code_des="此交易订单号不存在"
                )
            self._advance(order)
            fields: dict[str, str] = {
                "out_trade_no": order.out_trade_no,
                "trade_state": order.state,
                "total_fee": str(order.amount_fen),
            }
            if order.state == PAID and self._refunded(order.out_trade_no):
                fields.update(
                    self._paid_fields(order),
                    trade_state="REFUND",
                    trade_state_desc="订单发生过退款，退款详情请查询退款单",
                )
            elif order.state == PAID:
                fields.update(self._paid_fields(order), trade_state_desc="支付成功")
            elif order.state == USERPAYING:
                fields["trade_state_desc"] = "需要用户输入支付密码"
            elif order.state == PAYERROR:
                fields["trade_state_desc"] = "用户取消支付"
            elif order.state == CLOSED:
                fields["trade_state_desc"] = "订单已关闭"
            else:
                fields["trade_state_desc"] = "已撤销"
        return self._answer(sign_type, result_code="SUCCESS", **fields)

    async def _reverse(self, params: dict[str, str], sign_type: str) -> Response:
        with self._lock:
            order = self.orders.get(params["out_trade_no"])
            if order is None:
                return self._answer(
                    sign_type, result_code="FAIL", err_code="ORDERNOTEXIST", err_code_des="订单不存在", recall="N"
                )
            order.reverse_calls += 1
            calls = order.reverse_calls
            self._advance(order)
            if order.scenario == "40" and calls == 1:
                return self._answer(
                    sign_type, result_code="FAIL", err_code="SYSTEMERROR", err_code_des="系统错误，请重试", recall="Y"
                )
            if order.scenario == "41" and calls == 1:
                return Response("upstream error", status_code=500, media_type="text/plain")
            if order.scenario == "41" and calls == 2:
                return self._answer(
                    sign_type, result_code="FAIL", err_code="SYSTEMERROR", err_code_des="系统错误", recall="N"
                )
            if order.state not in (REVOKED, CLOSED):
                order.paid_before_reverse = order.state == PAID
                order.state, order.reversed_at = REVOKED, self.clock()
        return self._answer(sign_type, result_code="SUCCESS", recall="N")

    async def _refund(self, params: dict[str, str], sign_type: str) -> Response:
        out_trade_no, out_refund_no = params["out_trade_no"], params["out_refund_no"]
        if not params["total_fee"].isdigit() or not params["refund_fee"].isdigit() or int(params["refund_fee"]) <= 0:
            return self._answer(
                sign_type, result_code="FAIL", err_code="PARAM_ERROR", err_code_des="total_fee和refund_fee必须为正整数"
            )
        if params.get("refund_fee_type", "CNY") != "CNY":
            return self._answer(
                sign_type, result_code="FAIL", err_code="PARAM_ERROR", err_code_des="退款货币种类须为CNY"
            )
        total, amount = int(params["total_fee"]), int(params["refund_fee"])
        mismatch = "订单金额或退款金额与之前请求不一致，请核实后再试"

        def refused(err_code: str, text: str) -> Response:
            return self._answer(sign_type, result_code="FAIL", err_code=err_code, err_code_des=text)

        with self._lock:
            order = self.orders.get(out_trade_no)
            if order is None:
                return refused("ORDERNOTEXIST", "订单不存在")
            self._advance(order)
            order.refund_calls += 1
            if order.scenario == "61" and order.refund_calls == 1:
                return refused("SYSTEMERROR", "系统超时，请使用相同参数再次调用")
            existing = self.refunds.get(out_refund_no)
            if existing is not None:
                if existing.out_trade_no != out_trade_no or existing.amount_fen != amount or total != order.amount_fen:
                    return refused("INVALID_REQUEST", mismatch)
                made = existing  # the same refund again: answered, never made twice
            else:
                if order.state != PAID:
                    return refused(
                        "ERROR", "订单已撤销，不能退款" if order.state == REVOKED else "订单未支付，不能退款"
                    )
                if total != order.amount_fen:
                    return refused("INVALID_REQUEST", mismatch)
                if order.scenario == "62":
                    return refused("NOTENOUGH", "基本账户余额不足，请充值后重新发起")
                left = order.amount_fen - self._refunded(out_trade_no)
                if left <= 0:
                    return refused("INVALID_REQUEST", "订单已全额退款")
                if amount > left:
                    return refused("INVALID_REQUEST", "refund_fee大于可退金额")
                now = self.clock()
                self._serial += 1
                made = SimRefund(
                    out_refund_no,
                    out_trade_no,
                    f"50{now.astimezone(BEIJING):%Y%m%d}{self._serial:016d}"[:32],
                    amount,
                    now,
                    desc=params.get("refund_desc", ""),
                )
                self.refunds[out_refund_no] = made
            lost = order.scenario == "60" and order.refund_calls == 1
        if lost:
            return Response("<html><body><h1>502 Bad Gateway</h1></body></html>", media_type="text/html")
        return self._answer(
            sign_type,
            result_code="SUCCESS",
            transaction_id=order.transaction_id,
            out_trade_no=out_trade_no,
            out_refund_no=out_refund_no,
            refund_id=made.refund_id,
            refund_fee=str(made.amount_fen),
            settlement_refund_fee=str(made.amount_fen),
            total_fee=str(order.amount_fen),
            cash_fee=str(order.amount_fen),
            cash_refund_fee=str(made.amount_fen),
            refund_channel="",
        )

    async def _refundquery(self, params: dict[str, str], sign_type: str) -> Response:
        out_refund_no, out_trade_no = params.get("out_refund_no"), params.get("out_trade_no")
        if not out_refund_no and not out_trade_no:
            return self._answer(
                sign_type, result_code="FAIL", err_code="PARAM_ERROR", err_code_des="缺少参数out_refund_no"
            )
        with self._lock:
            if out_refund_no:
                found = [self.refunds[out_refund_no]] if out_refund_no in self.refunds else []
            else:
                found = sorted(
                    (r for r in self.refunds.values() if r.out_trade_no == out_trade_no), key=lambda r: r.created_at
                )
            if not found:
                return self._answer(sign_type, result_code="FAIL", err_code="REFUNDNOTEXIST", err_code_des="not exist")
            order = self.orders[found[0].out_trade_no]
            fields = {
                "transaction_id": order.transaction_id,
                "out_trade_no": order.out_trade_no,
                "total_fee": str(order.amount_fen),
                "cash_fee": str(order.amount_fen),
                "refund_count": str(len(found)),
            }
            for n, refund in enumerate(found):
                self._advance_refund(refund)
                fields |= {
                    f"out_refund_no_{n}": refund.out_refund_no,
                    f"refund_id_{n}": refund.refund_id,
                    f"refund_channel_{n}": "ORIGINAL",
                    f"refund_fee_{n}": str(refund.amount_fen),
                    f"refund_status_{n}": refund.state,
                    f"refund_account_{n}": "REFUND_SOURCE_UNSETTLED_FUNDS",
                    f"refund_recv_accout_{n}": "支付用户的零钱",
                }
                if refund.succeeded_at is not None:
                    fields[f"refund_success_time_{n}"] = format_refund_time(refund.succeeded_at)
        return self._answer(sign_type, result_code="SUCCESS", **fields)

    async def _authcodetoopenid(self, params: dict[str, str], sign_type: str) -> Response:
        code = params["auth_code"]
        if not AUTH_CODE_PATTERN.match(code) or scenario_of(code) == "31":
            return self._answer(
                sign_type, result_code="FAIL", err_code="AUTH_CODE_INVALID", err_code_des="授权码检验错误"
            )
        if scenario_of(code) == "30":
            return self._answer(sign_type, result_code="FAIL", err_code="AUTHCODEEXPIRE", err_code_des="二维码已过期")
        return self._answer(sign_type, result_code="SUCCESS", openid=self.openid_for(code))

    async def _downloadbill(self, params: dict[str, str], sign_type: str) -> Response:
        try:
            day = datetime.strptime(params["bill_date"], "%Y%m%d").date()
        except ValueError:
            return self._fail("invalid bill_date", error_code="20001")
        if params.get("bill_type", "ALL") != "ALL":
            return self._fail("only bill_type ALL is simulated", error_code="20001")
        text = self.bill_text(day)
        if text is None:
            return self._fail("No Bill Exist", error_code="20002")
        return Response(text.encode("utf-8"), media_type="text/plain; charset=utf-8")

    # -- answers --

    def _paid_fields(self, order: SimOrder) -> dict[str, str]:
        return {
            "openid": order.openid,
            "is_subscribe": "N",
            "trade_type": "MICROPAY",
            "bank_type": "OTHERS",
            "fee_type": "CNY",
            "total_fee": str(order.amount_fen),
            "cash_fee": str(order.amount_fen),
            "transaction_id": order.transaction_id,
            "out_trade_no": order.out_trade_no,
            "time_end": format_time_end(order.paid_at or order.created_at),
            "device_info": order.device_info,
        }

    def _signed(self, sign_type: str, **fields: str) -> dict[str, str]:
        answer = {
            "return_code": "SUCCESS",
            "return_msg": "OK",
            "appid": self.appid,
            "mch_id": self.mch_id,
            "nonce_str": new_nonce(),
            **fields,
        }
        answer = {name: value for name, value in answer.items() if value not in (None, "")}
        answer["sign"] = sign(answer, self.api_key, sign_type)  # type: ignore[arg-type]
        return answer

    def _answer(self, sign_type: str, **fields: str) -> Response:
        return Response(to_xml(self._signed(sign_type, **fields)), media_type="text/xml")

    @staticmethod
    def _fail(message: str, **extra: str) -> Response:
        return Response(to_xml({"return_code": "FAIL", "return_msg": message, **extra}), media_type="text/xml")
