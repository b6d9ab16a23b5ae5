"""A WeChat Pay API v3 simulator for code payment — codepay, query by out_trade_no, reverse, refund and its query —
served next to the v2 simulator on the same port (v3 under /v3/...), sharing its orders, refunds, customers and
settlement bill: `WeChatV3Simulator(...).app()` answers both APIs, so `pos-central simulate wechat` needs no second
process and a v3 central still identifies payers through v2 `tools/authcodetoopenid` and reconciles v2 `downloadbill`.

As WeChat Pay does, it checks every v3 request's `Authorization` (WECHATPAY2-SHA256-RSA2048: mchid, serial_no,
nonce_str, timestamp within 5 minutes of its clock, SHA256withRSA over method, path and query, timestamp, nonce and
body) with the merchant's public key, and refuses anything else with 401 `{"code": "SIGN_ERROR"}`. Its answers are
signed with its own "WeChat Pay public key" pair, made at start unless given (`wechatpay_private_key_pem`), under
the serial `public_key_id` (`PUB_KEY_ID_…`): central is given `wechatpay_public_key_pem` and that id. A test can
switch the key it signs with (`sign_with`), as WeChat does when a merchant moves from platform certificates to the
WeChat Pay public key.

The scenarios are the v2 simulator's (docs/PAYMENTS.md), picked by the auth code's last two digits, in v3's words:

| ends in | codepay answers | then |
|---|---|---|
| anything else | 200 trade_state SUCCESS | paid |
| 10, 11, 12 | 202 `{"trade_state": "USERPAYING"}` | paid / cancelled (PAYERROR) / never confirmed, as in v2 |
| 20, 21 | 500 SYSTEM_ERROR, BANK_ERROR | paid: the query says SUCCESS |
| 30, 31, 32 | 403 AUTH_CODE_EXPIRE, 400 AUTH_CODE_INVALID, 403 NOT_ENOUGH | not paid |
| 40 | 202 USERPAYING, never confirmed | the first reverse answers 500 SYSTEM_ERROR (v3 has no recall flag), the next succeeds |
| 41 | 202 USERPAYING, never confirmed | the first two reverses fail (an unsigned HTTP 500 page, then 500 SYSTEM_ERROR), the third succeeds |
| 50, 51, 52 | paid, the answer late / its signature broken / an HTML page | the query says SUCCESS |
| 60, 61, 62 | paid | refunds: the first answer lost / 500 SYSTEM_ERROR and not made / 403 NOT_ENOUGH |

`charge_faults = n` answers the next n codepay requests with an unsigned HTML 502 after processing them (a proxy
losing the answer), whatever the scenario. A refund is PROCESSING for `refund_seconds`, then SUCCESS; more than
what is left, other amounts under the same out_refund_no, or an order not paid: 400 INVALID_REQUEST with the reason.
Each order's `scene_info` (device_id, device_ip, store_info) is kept in `scenes`. Calls are counted (`count`) as
`codepay`, `orderquery`, `reverse`, `refund`, `refundquery` (the v2 ones as `micropay`, `orderquery`, ...).

An order's `attach` (商户数据包, at most 128 characters: 400 PARAM_ERROR otherwise) is kept in `attaches` and answered
with the order, as WeChat Pay does. With `brand` (central/payments/simulators/wechat_brand.py) the Brand API's
member card calls are served on the same port, and an attach that carries a card's join fields (下单同步入会:
`card_id=…&user_card_code=…`) enrols the order's payer in that card with that code once the order is paid — at
once, or when the customer confirms — unless they hold a card of it already.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request, Response

from central.payments.brand_api import parse_join_attach
from central.payments.simulators.wechat import (
    CLOSED,
    PAID,
    PAYERROR,
    REVOKED,
    USERPAYING,
    SimOrder,
    SimRefund,
    WeChatSimulator,
    scenario_of,
)
from central.payments.simulators.wechat_brand import BrandCardSimulator
from central.payments.wechat import AUTH_CODE_PATTERN, BEIJING
from central.payments.wechat_v3 import (
    ATTACH_MAX,
    MAX_CLOCK_SKEW_SECONDS,
    load_private_key,
    load_public_key,
    parse_authorization,
    public_pem,
    request_message,
    response_message,
    rsa_sign,
    rsa_verify,
)

DEFAULT_PUBLIC_KEY_ID = "PUB_KEY_ID_0119000001092026010100000000000001"
HTML_502 = "<html><body><h1>502 Bad Gateway</h1></body></html>"


def generate_private_key_pem() -> str:
    """A fresh RSA 2048 private key, PKCS#8 PEM (the simulator's WeChat Pay key, or a test merchant's)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def rfc3339(at: datetime) -> str:
    """Beijing time with its offset, as WeChat writes times (`2026-01-23T10:34:56+08:00`)."""
    return at.astimezone(BEIJING).replace(microsecond=0).isoformat()


@dataclass
class WeChatV3Simulator(WeChatSimulator):
    merchant_public_key_pem: str = ""  # verifies requests; required
    merchant_serial_no: str = ""  # when set, requests must name it (serial_no)
    wechatpay_private_key_pem: str = ""  # signs answers; made at start when empty
    public_key_id: str = DEFAULT_PUBLIC_KEY_ID  # the serial answers are signed under
    charge_faults: int = 0  # the next this many codepay answers are lost (an unsigned 502, after processing)
    scenes: dict[str, dict[str, Any]] = field(default_factory=dict)  # out_trade_no → scene_info as received
    attaches: dict[str, str] = field(default_factory=dict)  # out_trade_no → attach as received
    brand: BrandCardSimulator | None = None  # the Brand API's member card, on the same port
    _enrolled: set[str] = field(default_factory=set)  # orders whose join fields were acted on

    def __post_init__(self) -> None:
        if not self.merchant_public_key_pem:
            raise ValueError("the v3 simulator needs the merchant's public key to check request signatures")
        self._merchant_key = load_public_key(self.merchant_public_key_pem)
        if not self.wechatpay_private_key_pem:
            self.wechatpay_private_key_pem = generate_private_key_pem()
        # (key, serial) answers are signed with: replaced whole, so a reader never sees half a switch.
        self._signer = (load_private_key(self.wechatpay_private_key_pem), self.public_key_id)

    @property
    def wechatpay_public_key_pem(self) -> str:
        """The "WeChat Pay public key" central verifies answers with (under `public_key_id`)."""
        return public_pem(load_private_key(self.wechatpay_private_key_pem))

    def sign_with(self, private_key_pem: str, serial: str) -> None:
        """Sign answers from now on with this key under this serial (a platform certificate's, or another
        PUB_KEY_ID): what a merchant sees while WeChat Pay moves it from one to the other."""
        self._signer = (load_private_key(private_key_pem), serial)

    # -- the web app --

    def app(self) -> FastAPI:
        app = super().app()
        app.title = "WeChat Pay v2 and v3 simulator"

        @app.post("/v3/pay/transactions/codepay")
        async def codepay(request: Request) -> Response:
            return await self._v3(request, "codepay")

        @app.get("/v3/pay/transactions/out-trade-no/{out_trade_no}")
        async def query(request: Request, out_trade_no: str) -> Response:
            return await self._v3(request, "orderquery", out_trade_no)

        @app.post("/v3/pay/transactions/out-trade-no/{out_trade_no}/reverse")
        async def reverse(request: Request, out_trade_no: str) -> Response:
            return await self._v3(request, "reverse", out_trade_no)

        @app.post("/v3/refund/domestic/refunds")
        async def refund(request: Request) -> Response:
            return await self._v3(request, "refund")

        @app.get("/v3/refund/domestic/refunds/{out_refund_no}")
        async def refundquery(request: Request, out_refund_no: str) -> Response:
            return await self._v3(request, "refundquery", out_refund_no)

        if self.brand is not None:
            self.brand.install(app, before=self.enrol_paid_joins)
        return app

    # -- 下单同步入会: a paid order's join fields enrol its payer --

    def enrol_paid_joins(self) -> None:
        """Enrol the payers of every paid order whose attach carries join fields (the customer may have confirmed
        since the last look)."""
        with self._lock:
            for otn in list(self.attaches):
                order = self.orders.get(otn)
                if order is not None and otn not in self._enrolled:
                    self._advance(order)
                    self._enrol_if_paid(order)

    def _enrol_if_paid(self, order: SimOrder) -> None:
        """Under the lock."""
        otn = order.out_trade_no
        if self.brand is None or order.state != PAID or otn in self._enrolled or otn not in self.attaches:
            return
        fields = parse_join_attach(self.attaches[otn])
        self._enrolled.add(otn)
        card_id, code = fields.get("card_id"), fields.get("user_card_code")
        if card_id and code and card_id in self.brand.cards:
            self.brand.enrol(card_id, order.openid, code, "payment", otn)

    async def _v3(self, request: Request, endpoint: str, name: str | None = None) -> Response:
        raw = await request.body()
        refused = self._check_signature(request, raw)
        if refused is not None:
            return refused
        body: dict[str, Any] = {}
        if request.method == "POST":
            try:
                parsed = json.loads(raw)
            except ValueError:
                return self._error(400, "PARAM_ERROR", "请求体不是合法的JSON")
            if not isinstance(parsed, dict):
                return self._error(400, "PARAM_ERROR", "请求体应为JSON对象")
            body = parsed
        if endpoint == "orderquery" and request.query_params.get("mchid") != self.mch_id:
            return self._error(400, "PARAM_ERROR", "mchid与请求商户号不一致")
        if endpoint in ("codepay", "reverse") and (body.get("appid") != self.appid or body.get("mchid") != self.mch_id):
            return self._error(400, "APPID_MCHID_NOT_MATCH", "appid和mchid不匹配")
        with self._lock:
            otn = name if endpoint in ("orderquery", "reverse") else body.get("out_trade_no")
            if endpoint == "refundquery" and name in self.refunds:
                otn = self.refunds[name].out_trade_no
            self.calls.append((endpoint, otn if isinstance(otn, str) else None))
        if endpoint == "codepay":
            return await self._codepay(body)
        if endpoint == "orderquery":
            return self._query(name or "")
        if endpoint == "reverse":
            return self._reverse_v3(name or "")
        if endpoint == "refund":
            return self._refund_v3(body)
        return self._refundquery_v3(name or "")

    def _check_signature(self, request: Request, raw: bytes) -> Response | None:
        fields = parse_authorization(request.headers.get("Authorization", ""))
        if fields is None:
            return self._error(401, "SIGN_ERROR", "Authorization缺失或认证类型不是WECHATPAY2-SHA256-RSA2048")
        missing = [n for n in ("mchid", "nonce_str", "signature", "timestamp", "serial_no") if not fields.get(n)]
        if missing:
            return self._error(401, "SIGN_ERROR", f"Authorization缺少{missing[0]}")
        if fields["mchid"] != self.mch_id:
            return self._error(401, "SIGN_ERROR", "商户号与签名信息不匹配")
        if self.merchant_serial_no and fields["serial_no"].upper() != self.merchant_serial_no.upper():
            return self._error(401, "SIGN_ERROR", "商户证书序列号有误")
        try:
            stamp = int(fields["timestamp"])
        except ValueError:
            return self._error(401, "SIGN_ERROR", "timestamp格式错误")
        if abs(self.clock().timestamp() - stamp) > MAX_CLOCK_SKEW_SECONDS:
            return self._error(401, "SIGN_ERROR", "请求时间戳已过期，请校准系统时间")
        url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        message = request_message(request.method, url, fields["timestamp"], fields["nonce_str"], raw)
        if not rsa_verify(self._merchant_key, message, fields["signature"]):
            return self._error(401, "SIGN_ERROR", "签名错误，请检查签名参数和方法是否都符合签名算法要求")
        return None

    # -- endpoints --

    async def _codepay(self, body: dict[str, Any]) -> Response:
        payer, amount, scene = body.get("payer"), body.get("amount"), body.get("scene_info")
        otn, description = body.get("out_trade_no"), body.get("description")
        if not isinstance(otn, str) or not otn or not isinstance(description, str) or not description:
            return self._error(400, "PARAM_ERROR", "缺少参数out_trade_no或description")
        attach = body.get("attach")
        if attach is not None and (not isinstance(attach, str) or len(attach) > ATTACH_MAX):
            return self._error(400, "PARAM_ERROR", f"attach长度不能超过{ATTACH_MAX}")
        if not isinstance(payer, dict) or not isinstance(payer.get("auth_code"), str):
            return self._error(400, "PARAM_ERROR", "缺少参数payer.auth_code")
        if not isinstance(scene, dict) or not isinstance(scene.get("store_info"), dict):
            return self._error(400, "PARAM_ERROR", "缺少参数scene_info.store_info")
        if (
            not isinstance(amount, dict)
            or isinstance(amount.get("total"), bool)
            or not isinstance(amount.get("total"), int)
        ):
            return self._error(400, "PARAM_ERROR", "amount.total必须为整数")
        if amount["total"] <= 0 or amount.get("currency", "CNY") != "CNY":
            return self._error(400, "PARAM_ERROR", "amount.total须大于0，currency须为CNY")
        code, total = payer["auth_code"], amount["total"]
        if not AUTH_CODE_PATTERN.match(code):
            return self._error(400, "AUTH_CODE_INVALID", "请扫描微信支付被扫条码/二维码")
        scenario = scenario_of(code)
        now = self.clock()
        with self._lock:
            existing = self.orders.get(otn)
            if existing is not None:
                self._advance(existing)
                if existing.auth_code != code or existing.amount_fen != total:
                    return self._error(403, "OUT_TRADE_NO_USED", "商户订单号重复")
                if existing.state == USERPAYING:
                    return self._json(202, {"trade_state": USERPAYING})
                refusal = {
                    PAID: (400, "ORDER_PAID", "订单已支付"),
                    REVOKED: (400, "ORDER_REVERSED", "订单已撤销"),
                    CLOSED: (400, "ORDER_CLOSED", "订单已关闭"),
                    PAYERROR: (403, "TRADE_ERROR", "支付失败"),
                }[existing.state]
                return self._error(*refusal)
            declined = {
                "30": (403, "AUTH_CODE_EXPIRE", "二维码已过期，请用户在微信上刷新后再试"),
                "31": (400, "AUTH_CODE_INVALID", "授权码检验错误"),
                "32": (403, "NOT_ENOUGH", "用户账号余额不足，请用户充值或更换支付卡后再支付"),
            }.get(scenario)
            if declined is not None:
                return self._error(*declined)
            waiting = scenario in ("10", "11", "12", "40", "41")
            order = SimOrder(
                otn,
                code,
                total,
                description,
                str(scene.get("device_id") or ""),
                self.openid_for(code),
                scenario,
                now,
                USERPAYING if waiting else PAID,
                self._transaction_id(now),
                paid_at=None if waiting else now,
            )
            self.orders[otn] = order
            self.scenes[otn] = scene
            if attach:
                self.attaches[otn] = attach
                self._enrol_if_paid(order)
            lost = self.charge_faults > 0
            if lost:
                self.charge_faults -= 1
        if lost:
            return Response(HTML_502, status_code=502, media_type="text/html")
        if waiting:
            return self._json(202, {"trade_state": USERPAYING})
        if scenario == "20":
            return self._error(500, "SYSTEM_ERROR", "系统超时，请使用相同参数稍后重新调用")
        if scenario == "21":
            return self._error(500, "BANK_ERROR", "银行系统异常，请使用相同参数稍后重新调用")
        if scenario == "50":
            await asyncio.sleep(self.slow_seconds)  # processed; the answer comes too late for the client
        if scenario == "52":
            return Response(HTML_502, status_code=200, media_type="text/html")
        if scenario == "51":  # signed, then changed: must not verify
            signed = self._signed_headers(_dumps(self._transaction(order)))
            tampered = self._transaction(order) | {"amount": {"total": order.amount_fen + 1, "currency": "CNY"}}
            return Response(_dumps(tampered), status_code=200, headers=signed, media_type="application/json")
        return self._json(200, self._transaction(order))

    def _query(self, otn: str) -> Response:
        with self._lock:
            order = self.orders.get(otn)
            if order is None:
                return self._error(404, "ORDER_NOT_EXIST", "订单不存在")
            self._advance(order)
            self._enrol_if_paid(order)
            if order.state == USERPAYING:
                return self._json(200, {"trade_state": USERPAYING})  # only the state, as WeChat answers it
            body = self._transaction(order)
            if order.state == PAID and self._refunded(otn):
                body |= {"trade_state": "REFUND", "trade_state_desc": "订单发生过退款，退款详情请查询退款单"}
        return self._json(200, body)

    def _reverse_v3(self, otn: str) -> Response:
        with self._lock:
            order = self.orders.get(otn)
            if order is None:
                return self._error(404, "ORDER_NOT_EXIST", "订单不存在")
            order.reverse_calls += 1
            calls = order.reverse_calls
            self._advance(order)
            if order.scenario == "40" and calls == 1:
                return self._error(500, "SYSTEM_ERROR", "系统错误，请使用相同参数稍后重新调用")
            if order.scenario == "41" and calls == 1:
                return Response("upstream error", status_code=500, media_type="text/plain")
            if order.scenario == "41" and calls == 2:
                return self._error(500, "SYSTEM_ERROR", "系统错误")
            if order.state not in (REVOKED, CLOSED):
                order.paid_before_reverse = order.state == PAID
                order.state, order.reversed_at = REVOKED, self.clock()
        return self._json(200, {"appid": self.appid, "mchid": self.mch_id, "out_trade_no": otn})

    def _refund_v3(self, body: dict[str, Any]) -> Response:
        otn, orn, amount = body.get("out_trade_no"), body.get("out_refund_no"), body.get("amount")
        if not isinstance(otn, str) or not isinstance(orn, str) or not otn or not orn:
            return self._error(400, "PARAM_ERROR", "缺少参数out_trade_no或out_refund_no")
        if not isinstance(amount, dict) or any(
            isinstance(amount.get(n), bool) or not isinstance(amount.get(n), int) or amount[n] <= 0
            for n in ("refund", "total")
        ):
            return self._error(400, "PARAM_ERROR", "amount.refund和amount.total必须为正整数")
        if amount.get("currency") != "CNY":
            return self._error(400, "PARAM_ERROR", "退款币种须为CNY")
        total, refund = amount["total"], amount["refund"]
        mismatch = "订单金额或退款金额与之前请求不一致，请核实后再试"
        with self._lock:
            order = self.orders.get(otn)
            if order is None:
                return self._error(404, "RESOURCE_NOT_EXISTS", "订单不存在")
            self._advance(order)
            order.refund_calls += 1
            if order.scenario == "61" and order.refund_calls == 1:
                return self._error(500, "SYSTEM_ERROR", "系统超时，请使用相同参数再次调用")
            made = self.refunds.get(orn)
            if made is not None:
                if made.out_trade_no != otn or made.amount_fen != refund or total != order.amount_fen:
                    return self._error(400, "INVALID_REQUEST", mismatch)
            else:
                if order.state != PAID:
                    reason = "订单已撤销，不能退款" if order.state == REVOKED else "订单未支付，不能退款"
                    return self._error(400, "INVALID_REQUEST", reason)
                if total != order.amount_fen:
                    return self._error(400, "INVALID_REQUEST", mismatch)
                if order.scenario == "62":
                    return self._error(403, "NOT_ENOUGH", "基本账户余额不足，请充值后重新发起")
                left = order.amount_fen - self._refunded(otn)
                if left <= 0:
                    return self._error(400, "INVALID_REQUEST", "订单已全额退款")
                if refund > left:
                    return self._error(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
                now = self.clock()
                self._serial += 1
                made = SimRefund(
                    orn,
                    otn,
                    f"50{now.astimezone(BEIJING):%Y%m%d}{self._serial:016d}"[:32],
                    refund,
                    now,
                    desc=str(body.get("reason") or ""),
                )
                self.refunds[orn] = made
            self._advance_refund(made)
            answer = self._refund_body(made, order)
            lost = order.scenario == "60" and order.refund_calls == 1
        if lost:
            return Response(HTML_502, status_code=200, media_type="text/html")
        return self._json(200, answer)

    def _refundquery_v3(self, orn: str) -> Response:
        with self._lock:
            made = self.refunds.get(orn)
            if made is None:
                return self._error(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
            self._advance_refund(made)
            answer = self._refund_body(made, self.orders[made.out_trade_no])
        return self._json(200, answer)

    # -- answers --

    def _transaction(self, order: SimOrder) -> dict[str, Any]:
        body: dict[str, Any] = {
            "appid": self.appid,
            "mchid": self.mch_id,
            "out_trade_no": order.out_trade_no,
            "trade_type": "MICROPAY",
            "trade_state": order.state,
            "trade_state_desc": {
                PAID: "支付成功",
                PAYERROR: "用户取消支付",
                CLOSED: "订单已关闭",
                REVOKED: "已撤销",
            }.get(order.state, ""),
            "amount": {"total": order.amount_fen, "currency": "CNY"},
        }
        if order.out_trade_no in self.attaches:
            body["attach"] = self.attaches[order.out_trade_no]
        if order.state == PAID or order.paid_at is not None:
            body |= {
                "transaction_id": order.transaction_id,
                "bank_type": "OTHERS",
                "success_time": rfc3339(order.paid_at or order.created_at),
                "payer": {"openid": order.openid},
                "amount": {
                    "total": order.amount_fen,
                    "payer_total": order.amount_fen,
                    "currency": "CNY",
                    "payer_currency": "CNY",
                },
            }
        return body

    def _refund_body(self, made: SimRefund, order: SimOrder) -> dict[str, Any]:
        body: dict[str, Any] = {
            "refund_id": made.refund_id,
            "out_refund_no": made.out_refund_no,
            "transaction_id": order.transaction_id,
            "out_trade_no": order.out_trade_no,
            "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱",
            "create_time": rfc3339(made.created_at),
            "status": made.state,
            "funds_account": "UNSETTLED",
            "amount": {
                "total": order.amount_fen,
                "refund": made.amount_fen,
                "payer_total": order.amount_fen,
                "payer_refund": made.amount_fen,
                "settlement_refund": made.amount_fen,
                "settlement_total": order.amount_fen,
                "discount_refund": 0,
                "currency": "CNY",
            },
        }
        if made.succeeded_at is not None:
            body["success_time"] = rfc3339(made.succeeded_at)
        return body

    def _json(self, status: int, body: dict[str, Any] | None) -> Response:
        data = b"" if body is None else _dumps(body)
        return Response(data, status_code=status, headers=self._signed_headers(data), media_type="application/json")

    def _signed_headers(self, data: bytes) -> dict[str, str]:
        stamp, nonce = str(int(self.clock().timestamp())), secrets.token_hex(16).upper()
        key, serial = self._signer
        return {
            "Wechatpay-Serial": serial,
            "Wechatpay-Signature": rsa_sign(key, response_message(stamp, nonce, data)),
            "Wechatpay-Timestamp": stamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
            "Request-ID": secrets.token_hex(16),
        }

    def _error(self, status: int, code: str, message: str) -> Response:
        return self._json(status, {"code": code, "message": message})


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
