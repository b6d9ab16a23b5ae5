"""A wire-level Alipay OpenAPI gateway for the demo and the tests: face-to-face code payment and refunds.

It speaks what `openapi.alipay.com/gateway.do` speaks: a form POST of the common parameters and `biz_content`,
whose RSA2 signature it checks with the merchant's public key (refusing like Alipay: 40001 missing argument,
40002 invalid app id / signature type / timestamp / signature, unsigned), and an answer
`{"<method>_response": {...}, "sign": "..."}` signed with its own (Alipay) private key over the exact bytes of
the response object. Orders live in memory. The signing code here is written apart from the client's on
purpose, so that a slip in one is caught by the other.

The scenario is picked by the auth code's last two digits, on the WeChat simulator's table (wechat.py):

| ends in | alipay.trade.pay answers | then |
|---|---|---|
| anything else | 10000 | paid |
| 10 | 10003 (waiting for the customer) | paid after `userpaying_seconds` (query: TRADE_SUCCESS) |
| 11 | 10003 | the customer cancels after `userpaying_seconds` (query: TRADE_CLOSED) |
| 12 | 10003 | the customer never confirms (WAIT_BUYER_PAY until cancelled) |
| 20 | 20000 isp.unknow-error | paid: the query says TRADE_SUCCESS |
| 21 | 40004 ACQ.SYSTEM_ERROR | paid: the query says TRADE_SUCCESS |
| 30 | 40004 ACQ.PAYMENT_AUTH_CODE_INVALID (expired) | no trade |
| 31 | 40004 ACQ.PAYMENT_AUTH_CODE_INVALID | no trade |
| 32 | 40004 ACQ.BUYER_BALANCE_NOT_ENOUGH | no trade |
| 40 | 10003, never confirmed | the first cancel answers retry_flag=Y (nothing done), the next one closes |
| 41 | 10003, never confirmed | the first two cancels fail (HTTP 500, then 40004 ACQ.SYSTEM_ERROR), the third closes |
| 50 | paid, but the answer is held `slow_seconds` (past the client's timeout) | the query says TRADE_SUCCESS |
| 51 | paid, but the answer is changed after signing | the query says TRADE_SUCCESS |
| 52 | paid, but the answer is an HTML error page (HTTP 200) | the query says TRADE_SUCCESS |
| 60 | paid | the first refund is made, but its answer is an HTML error page: the refund query knows it |
| 61 | paid | the first refund answers 40004 ACQ.SYSTEM_ERROR and is not made; the same refund again is |
| 62 | paid | every refund answers 40004 ACQ.SELLER_BALANCE_NOT_ENOUGH |

Refunds (`alipay.trade.refund`, `alipay.trade.fastpay.refund.query`) of a paid trade are made at once
(fund_change=Y; the query says REFUND_SUCCESS), keyed by (out_trade_no, out_request_no): the same request again
answers fund_change=N and refunds nothing; the same out_request_no with another amount is
ACQ.DISCORDANT_REPEAT_REQUEST; more than what is left is ACQ.REFUND_AMT_NOT_EQUAL_TOTAL; a trade refunded in
full is TRADE_CLOSED. A refund nobody made: the query answers 10000 without refund_status, as Alipay does.

An auth code is `PP CCCC ... SS`: prefix 25-30 (Alipay's; a WeChat code 10-15 is refused as
ACQ.PAYMENT_AUTH_CODE_INVALID), four digits naming the simulated customer (buyer_user_id `208810000000CCCC`,
the same from every code), anything, the scenario; 16-24 digits. The same out_trade_no again answers
ACQ.TRADE_HAS_SUCCESS / ACQ.TRADE_HAS_CLOSE / 10003, or ACQ.CONTEXT_INCONSISTENT when the amount or code
differ. A paid trade can be cancelled (refunded) within 24 h. `single_use_codes=True` refuses a code used before,
as Alipay does (off by default, like the WeChat simulator).

A trade.pay's expiry is enforced: `time_expire` (absolute, Shanghai "yyyy-MM-dd HH:mm:ss"; Alipay prefers it) or
else `timeout_express` (1m to 15d, or 1c: midnight, counted from the trade's creation). A trade.pay that arrives
after its time_expire is answered 40004 ACQ.TRADE_HAS_CLOSE (the trade is recorded closed, never paid); a trade
still waiting for the customer when its expiry passes is closed (query: TRADE_CLOSED). A malformed or out-of-range
value is 40004 ACQ.INVALID_PARAMETER.

Faults on any call: `inject("bad_signature" | "tampered_body" | "unsigned" | "not_json")` spoils the next answer
after the request was processed. Time is `clock()` plus what `advance(seconds)` added: no real waits but 50's.

The settlement bill (`alipay.data.dataservice.bill.downloadurl.query`) is a zip of GBK CSVs ("业务明细" and
"业务明细(汇总)") made from what the simulator processed, available once the day is over in Shanghai.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import itertools
import json
import re
import secrets
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import FastAPI, Request, Response

CST = timezone(timedelta(hours=8))  # Alipay's wall clock (Asia/Shanghai, no DST)
_TIME = "%Y-%m-%d %H:%M:%S"
_ALIPAY_AUTH_CODE = re.compile(r"^(2[5-9]|30)\d{14,22}$")
_AMOUNT = re.compile(r"^\d{1,9}(\.\d{1,2})?$")
_TIMEOUT_EXPRESS = re.compile(r"^([1-9]\d*)([mhd])$")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
_MAX_AMOUNT_FEN = 100_000_000 * 100  # Alipay's limit: 100 000 000.00 yuan

Fault = Literal["bad_signature", "tampered_body", "unsigned", "not_json"]
METHODS = (
    "alipay.trade.pay",
    "alipay.trade.query",
    "alipay.trade.cancel",
    "alipay.trade.refund",
    "alipay.trade.fastpay.refund.query",
    "alipay.data.dataservice.bill.downloadurl.query",
)
BILL_HEADER = [
    "支付宝交易号",
    "商户订单号",
    "业务类型",
    "商品名称",
    "创建时间",
    "完成时间",
    "门店编号",
    "门店名称",
    "操作员",
    "终端号",
    "对方账户",
    "订单金额（元）",
    "商家实收（元）",
    "支付宝红包（元）",
    "集分宝（元）",
    "支付宝优惠（元）",
    "商家优惠（元）",
    "券核销金额（元）",
    "券名称",
    "商家红包消费金额（元）",
    "卡消费金额（元）",
    "退款批次号/请求号",
    "服务费（元）",
    "分润（元）",
    "备注",
]
_WAITING = ("10", "11", "12", "40", "41")  # answered 10003: the customer has to confirm on the phone
_WECHAT_NAMES = {
    "micropay": "alipay.trade.pay",
    "orderquery": "alipay.trade.query",
    "reverse": "alipay.trade.cancel",
    "refund": "alipay.trade.refund",
    "refundquery": "alipay.trade.fastpay.refund.query",
    "downloadbill": "alipay.data.dataservice.bill.downloadurl.query",
}
_REQUIRED = (
    ("app_id", "isv.missing-app-id", "缺少AppID参数"),
    ("sign_type", "isv.missing-signature-type", "缺少签名类型参数"),
    ("sign", "isv.missing-signature", "缺少签名参数"),
    ("timestamp", "isv.missing-timestamp", "缺少时间戳参数"),
    ("version", "isv.missing-version", "缺少版本参数"),
)


def generate_rsa_keypair(bits: int = 2048) -> tuple[str, str]:
    """A fresh RSA key pair for tests and the demo: (private key PKCS#8 PEM, public key PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private.decode("ascii"), public.decode("ascii")


@dataclass(frozen=True)
class SimOrder:
    out_trade_no: str
    trade_no: str
    auth_code: str
    amount_fen: int
    subject: str
    store_id: str
    terminal_id: str
    scenario: str
    buyer_user_id: str
    buyer_logon_id: str
    created_at: datetime
    status: str = "WAIT_BUYER_PAY"  # WAIT_BUYER_PAY | TRADE_SUCCESS | TRADE_CLOSED
    paid_at: datetime | None = None
    closed_at: datetime | None = None
    refunded_at: datetime | None = None  # cancelled after payment: the money went back
    refund_no: str | None = None
    cancel_calls: int = 0
    cancel_action: str | None = None
    refund_calls: int = 0
    expires_at: datetime | None = None  # from time_expire or timeout_express: closed if still unpaid then
    time_expire: str | None = None  # as the request gave them
    timeout_express: str | None = None


@dataclass(frozen=True)
class SimRefund:
    out_trade_no: str
    out_request_no: str
    amount_fen: int
    reason: str
    refunded_at: datetime


def _yuan(fen: int) -> str:
    return str((Decimal(fen) / 100).quantize(Decimal("0.01")))


def _wall(moment: datetime) -> str:
    return moment.astimezone(CST).strftime(_TIME)


class AlipaySimulator:
    """The simulated gateway; `app()` is the ASGI app to serve (POST/GET /gateway.do, GET /downloadBillFile.resource)."""

    def __init__(
        self,
        merchant_public_key_pem: str | bytes,
        alipay_private_key_pem: str | bytes,
        *,
        app_id: str | None = None,
        clock: Callable[[], datetime] | None = None,
        userpaying_seconds: float = 5.0,
        slow_seconds: float = 3.0,
        single_use_codes: bool = False,
        bill_same_day: bool = False,
        merchant_pid: str = "2088102100000001",
    ):
        public = (
            merchant_public_key_pem.encode() if isinstance(merchant_public_key_pem, str) else merchant_public_key_pem
        )
        private = alipay_private_key_pem.encode() if isinstance(alipay_private_key_pem, str) else alipay_private_key_pem
        merchant_key = serialization.load_pem_public_key(public)
        alipay_key = serialization.load_pem_private_key(private, None)
        if not isinstance(merchant_key, rsa.RSAPublicKey) or not isinstance(alipay_key, rsa.RSAPrivateKey):
            raise TypeError("the simulator needs RSA keys")
        self._merchant_key = merchant_key
        self._alipay_key = alipay_key
        self.app_id = app_id  # None: any app id is accepted
        self._clock = clock or (lambda: datetime.now(UTC))
        self._offset = timedelta()
        self.userpaying_seconds = userpaying_seconds
        self.slow_seconds = slow_seconds
        self.single_use_codes = single_use_codes
        self.bill_same_day = bill_same_day
        self.merchant_pid = merchant_pid
        self._lock = threading.Lock()
        self.orders: dict[str, SimOrder] = {}
        self.refunds: dict[tuple[str, str], SimRefund] = {}  # by (out_trade_no, out_request_no)
        self.calls: list[tuple[str, str | None]] = []  # (method, out_trade_no) of every request that passed the checks
        self._used_codes: set[str] = set()
        self._faults: list[Fault] = []
        self._bills: dict[str, bytes] = {}
        self._serial = itertools.count(secrets.randbelow(10**6) * 10**4)
        self._app: FastAPI | None = None

    # --- control, from tests and the demo ---

    def now(self) -> datetime:
        with self._lock:
            return self._now()

    def _now(self) -> datetime:
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += timedelta(seconds=seconds)

    def inject(self, fault: Fault, times: int = 1) -> None:
        """Spoil the next `times` answers (the requests are still processed)."""
        with self._lock:
            self._faults.extend([fault] * times)

    def count(self, method: str, out_trade_no: str | None = None) -> int:
        """Calls of `method` (Alipay's name, or the WeChat simulator's endpoint name: micropay, orderquery, reverse,
        downloadbill), for one order or all."""
        wanted = _WECHAT_NAMES.get(method, method)
        with self._lock:
            return sum(1 for m, o in self.calls if m == wanted and (out_trade_no is None or o == out_trade_no))

    def order(self, out_trade_no: str) -> SimOrder | None:
        with self._lock:
            found = self.orders.get(out_trade_no)
            return self._settled(found, self._now()) if found else None

    def records(self) -> dict[str, list[dict[str, Any]]]:
        """Every trade and refund as it stands now (read-only), for runs that follow money end to end."""
        from dataclasses import asdict

        with self._lock:
            now = self._now()
            orders = [self._settled(o, now) for o in list(self.orders.values())]
            return {"orders": [asdict(o) for o in orders], "refunds": [asdict(r) for r in self.refunds.values()]}

    def refunded_fen(self, out_trade_no: str) -> int:
        """What the trade's refunds (through alipay.trade.refund) add up to."""
        with self._lock:
            return self._refunded(out_trade_no)

    def _refunded(self, out_trade_no: str) -> int:
        return sum(r.amount_fen for r in self.refunds.values() if r.out_trade_no == out_trade_no)

    def buyer_for(self, auth_code: str) -> str:
        """The buyer_user_id of the customer an auth code belongs to (digits 3-6), stable across codes."""
        return f"208810000000{auth_code[2:6]}"

    def add_order(
        self,
        out_trade_no: str,
        amount_fen: int,
        *,
        paid_at: datetime | None = None,
        store_id: str = "SIM",
        terminal_id: str = "SIM-T01",
        buyer_user_id: str = "2088100000009999",
    ) -> SimOrder:
        """A trade paid outside the API (e.g. one the store never heard of), for reconciliation tests."""
        with self._lock:
            at = paid_at or self._now()
            order = SimOrder(
                out_trade_no=out_trade_no,
                trade_no=self._trade_no(at),
                auth_code="",
                amount_fen=amount_fen,
                subject="模拟订单",
                store_id=store_id,
                terminal_id=terminal_id,
                scenario="00",
                buyer_user_id=buyer_user_id,
                buyer_logon_id="138****9999",
                created_at=at,
                status="TRADE_SUCCESS",
                paid_at=at,
            )
            self.orders[out_trade_no] = order
        return order

    # --- the wire ---

    def app(self) -> FastAPI:
        if self._app is not None:
            return self._app
        app = FastAPI(title="Alipay OpenAPI simulator", openapi_url=None, docs_url=None, redoc_url=None)
        app.state.simulator = self

        @app.api_route("/gateway.do", methods=["GET", "POST"])
        async def gateway(request: Request) -> Response:
            return await self._gateway(request)

        @app.get("/_sim/records")
        async def records() -> dict[str, list[dict[str, Any]]]:
            return self.records()  # the simulator's own ledger, for checks (not an Alipay API)

        @app.get("/downloadBillFile.resource")
        async def download(fileId: str = "") -> Response:  # Alipay's parameter name
            with self._lock:
                content = self._bills.get(fileId)
            if content is None:
                return Response("file not found", status_code=404, media_type="text/plain")
            return Response(content, media_type="application/octet-stream")

        self._app = app
        return app

    async def _gateway(self, request: Request) -> Response:
        body = await request.body()
        charset = request.query_params.get("charset") or "utf-8"
        params = dict(request.query_params)
        try:
            # The form is percent-encoded ASCII; `charset` says how the escaped bytes decode.
            params.update(parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding=charset, errors="strict"))
        except (LookupError, UnicodeDecodeError):
            return self._refusal(None, "40002", "Invalid Arguments", "isv.invalid-charset", "字符集错误")
        method = params.get("method", "")
        if not method:
            return self._refusal(None, "40001", "Missing Required Arguments", "isv.missing-method", "缺少方法名参数")
        if method not in METHODS:
            return self._refusal(None, "40002", "Invalid Arguments", "isv.invalid-method", "不存在的方法名")
        for name, sub_code, sub_msg in _REQUIRED:
            if not params.get(name):
                return self._refusal(method, "40001", "Missing Required Arguments", sub_code, sub_msg)
        if self.app_id is not None and params["app_id"] != self.app_id:
            return self._refusal(method, "40002", "Invalid Arguments", "isv.invalid-app-id", "无效的AppID参数")
        if params["sign_type"] != "RSA2":
            return self._refusal(
                method, "40002", "Invalid Arguments", "isv.invalid-signature-type", "无效的签名类型参数"
            )
        try:
            datetime.strptime(params["timestamp"], _TIME)
        except ValueError:
            return self._refusal(method, "40002", "Invalid Arguments", "isv.invalid-timestamp", "非法的时间戳参数")
        content = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign" and params[k] != "")
        if not self._verify(content, params["sign"]):
            # Alipay shows the string it checked, which is what a developer needs to find the slip.
            return self._refusal(
                method,
                "40002",
                "Invalid Arguments",
                "isv.invalid-signature",
                f"验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，网关生成的验签字符串为：{content}",
            )
        try:
            biz = json.loads(params.get("biz_content") or "{}")
        except ValueError:
            biz = None
        if not isinstance(biz, dict):
            return self._refusal(
                method, "40002", "Invalid Arguments", "isv.invalid-parameter", "biz_content 不是 JSON 对象"
            )
        with self._lock:
            self.calls.append((method, str(biz["out_trade_no"]) if biz.get("out_trade_no") else None))

        if method == "alipay.trade.pay":
            node, special = self._pay(biz)
        elif method == "alipay.trade.query":
            node, special = self._query(biz), None
        elif method == "alipay.trade.cancel":
            node, special = self._cancel(biz)
        elif method == "alipay.trade.refund":
            node, special = self._refund(biz)
        elif method == "alipay.trade.fastpay.refund.query":
            node, special = self._refund_query(biz), None
        else:
            node, special = self._bill_url(biz, str(request.base_url).rstrip("/")), None
        if special == "slow":
            await asyncio.sleep(self.slow_seconds)  # processed; the answer comes too late for the client
        elif special == "http_500":
            return Response("upstream error", status_code=500, media_type="text/plain")
        return self._answer(method, node, special if special in ("tampered_body", "not_json") else None)

    def _refusal(self, method: str | None, code: str, msg: str, sub_code: str, sub_msg: str) -> Response:
        # Gateway-level refusals go out unsigned, as Alipay's do.
        key = "error_response" if method is None else method.replace(".", "_") + "_response"
        node = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}
        return self._envelope(key, json.dumps(node, ensure_ascii=False, separators=(",", ":")), None)

    def _answer(self, method: str, node: dict[str, Any], special: str | None = None) -> Response:
        key = method.replace(".", "_") + "_response"
        text = json.dumps(node, ensure_ascii=False, separators=(",", ":"))
        sign: str | None = self._sign(text)
        with self._lock:
            fault = self._faults.pop(0) if self._faults else special
        if fault == "not_json":
            return Response("<html><body><h1>502 Bad Gateway</h1></body></html>", media_type="text/html")
        if fault == "unsigned":
            sign = None
        elif fault == "bad_signature":
            sign = self._sign(text + " ")  # a real signature, over other bytes
        elif fault == "tampered_body":
            spoiled = (
                dict(node, total_amount="0.01") if "total_amount" in node else dict(node, code="10000", msg="Success")
            )
            text = json.dumps(spoiled, ensure_ascii=False, separators=(",", ":"))
        return self._envelope(key, text, sign)

    @staticmethod
    def _envelope(key: str, node_text: str, sign: str | None) -> Response:
        body = '{"' + key + '":' + node_text + (',"sign":"' + sign + '"' if sign else "") + "}"
        # Alipay really labels its JSON text/html.
        return Response(body.encode("utf-8"), media_type="text/html;charset=utf-8")

    def _sign(self, text: str) -> str:
        signature = self._alipay_key.sign(text.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode("ascii")

    def _verify(self, content: str, sign: str) -> bool:
        try:
            self._merchant_key.verify(
                base64.b64decode(sign, validate=True), content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256()
            )
        except (InvalidSignature, ValueError):
            return False
        return True

    # --- the business ---

    @staticmethod
    def _failure(sub_code: str, sub_msg: str) -> dict[str, Any]:
        return {"code": "40004", "msg": "Business Failed", "sub_code": sub_code, "sub_msg": sub_msg}

    def _settled(self, order: SimOrder, now: datetime) -> SimOrder:
        """Let the simulated customer act: scenarios 10/11 finish `userpaying_seconds` after the charge; a trade
        still waiting when its expiry passes is closed."""
        if order.status != "WAIT_BUYER_PAY":
            return order
        finished = (
            order.created_at + timedelta(seconds=self.userpaying_seconds) if order.scenario in ("10", "11") else None
        )
        if (
            order.expires_at is not None
            and now >= order.expires_at
            and (finished is None or finished > order.expires_at)
        ):
            order = replace(order, status="TRADE_CLOSED", closed_at=order.expires_at)
        elif finished is not None and now >= finished:
            if order.scenario == "10":
                order = replace(order, status="TRADE_SUCCESS", paid_at=finished)
            else:
                order = replace(order, status="TRADE_CLOSED", closed_at=finished)
        else:
            return order
        self.orders[order.out_trade_no] = order
        return order

    @staticmethod
    def _expiry(biz: dict[str, Any], now: datetime) -> datetime | None:
        """When a trade created now closes unless paid: time_expire if given, else timeout_express (ValueError when
        either is malformed or out of range)."""
        if biz.get("time_expire"):
            return datetime.strptime(str(biz["time_expire"]), _TIME).replace(tzinfo=CST)
        express = str(biz.get("timeout_express") or "")
        if not express:
            return None
        if express == "1c":  # today: closed at midnight, Shanghai time
            return datetime.combine(now.astimezone(CST).date() + timedelta(days=1), datetime.min.time(), CST)
        found = _TIMEOUT_EXPRESS.match(express)
        if found is None:
            raise ValueError(express)
        span = int(found.group(1)) * _UNITS[found.group(2)]
        if not timedelta(minutes=1) <= span <= timedelta(days=15):
            raise ValueError(express)
        return now + span

    def _trade_no(self, now: datetime) -> str:
        # yyyyMMdd + 22001 + 15 digits: the shape of Alipay's 28-digit trade numbers.
        return f"{now.astimezone(CST):%Y%m%d}22001{next(self._serial) % 10**15:015d}"

    def _pay(self, biz: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        out_trade_no = str(biz.get("out_trade_no") or "")
        auth_code = str(biz.get("auth_code") or "")
        amount_text = str(biz.get("total_amount") or "")
        if not out_trade_no or not auth_code or not biz.get("subject") or biz.get("scene") != "bar_code":
            return self._failure(
                "ACQ.INVALID_PARAMETER", "参数无效：out_trade_no、auth_code、subject 必填，scene 须为 bar_code"
            ), None
        try:
            amount_fen = int(Decimal(amount_text) * 100) if _AMOUNT.match(amount_text) else 0
        except InvalidOperation:
            amount_fen = 0
        if amount_fen <= 0:
            return self._failure("ACQ.INVALID_PARAMETER", "参数无效：total_amount 须在 0.01 和 100000000 之间"), None
        if amount_fen > _MAX_AMOUNT_FEN:
            return self._failure("ACQ.TOTAL_FEE_EXCEED", "订单金额超过限额"), None
        scenario = auth_code[-2:]
        with self._lock:
            now = self._now()
            try:
                expires_at = self._expiry(biz, now)
            except ValueError:
                return self._failure(
                    "ACQ.INVALID_PARAMETER",
                    "参数无效：time_expire 须为 yyyy-MM-dd HH:mm:ss，timeout_express 须在 1m～15d 之间",
                ), None
            existing = self.orders.get(out_trade_no)
            if existing is not None:
                existing = self._settled(existing, now)
                if existing.amount_fen != amount_fen or existing.auth_code != auth_code:
                    return self._failure("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改"), None
                if existing.status == "TRADE_SUCCESS":
                    return self._failure("ACQ.TRADE_HAS_SUCCESS", "交易已被支付"), None
                if existing.status == "TRADE_CLOSED":
                    return self._failure("ACQ.TRADE_HAS_CLOSE", "交易已经关闭"), None
                return self._trade_node("10003", " order success pay inprocess", existing), None
            if (
                not _ALIPAY_AUTH_CODE.match(auth_code)
                or scenario == "31"
                or (self.single_use_codes and auth_code in self._used_codes)
            ):
                return self._failure(
                    "ACQ.PAYMENT_AUTH_CODE_INVALID", "支付失败，获取顾客账户信息失败，请顾客刷新付款码后重新收款"
                ), None
            if scenario == "30":
                return self._failure("ACQ.PAYMENT_AUTH_CODE_INVALID", "付款码已过期，请顾客刷新付款码后重新收款"), None
            if scenario == "32":
                return self._failure("ACQ.BUYER_BALANCE_NOT_ENOUGH", "买家余额不足"), None
            self._used_codes.add(auth_code)
            waiting = scenario in _WAITING
            late = expires_at is not None and now >= expires_at  # arrived after the merchant's expiry
            order = SimOrder(
                out_trade_no=out_trade_no,
                trade_no=self._trade_no(now),
                auth_code=auth_code,
                amount_fen=amount_fen,
                subject=str(biz.get("subject")),
                store_id=str(biz.get("store_id") or ""),
                terminal_id=str(biz.get("terminal_id") or ""),
                scenario=scenario,
                buyer_user_id=self.buyer_for(auth_code),
                buyer_logon_id=f"13{auth_code[2:4]}****{auth_code[2:6]}",
                created_at=now,
                status="WAIT_BUYER_PAY" if waiting else "TRADE_SUCCESS",
                paid_at=None if waiting else now,
                expires_at=expires_at,
                time_expire=biz.get("time_expire"),
                timeout_express=biz.get("timeout_express"),
            )
            if late:
                order = replace(order, status="TRADE_CLOSED", paid_at=None, closed_at=now)
            self.orders[out_trade_no] = order
        if late:
            return self._failure("ACQ.TRADE_HAS_CLOSE", "交易已经关闭"), None
        if waiting:
            return self._trade_node("10003", " order success pay inprocess", order), None
        if scenario == "20":
            return {
                "code": "20000",
                "msg": "Service Currently Unavailable",
                "sub_code": "isp.unknow-error",
                "sub_msg": "系统繁忙",
            }, None
        if scenario == "21":
            return self._failure("ACQ.SYSTEM_ERROR", "系统异常，请重新发起请求"), None
        node = self._trade_node("10000", "Success", order) | {
            "receipt_amount": _yuan(order.amount_fen),
            "buyer_pay_amount": _yuan(order.amount_fen),
            "gmt_payment": _wall(now),
            "fund_bill_list": [{"fund_channel": "ALIPAYACCOUNT", "amount": _yuan(order.amount_fen)}],
            "buyer_user_id": order.buyer_user_id,
        }
        return node, {"50": "slow", "51": "tampered_body", "52": "not_json"}.get(scenario)

    @staticmethod
    def _trade_node(code: str, msg: str, order: SimOrder) -> dict[str, Any]:
        return {
            "code": code,
            "msg": msg,
            "trade_no": order.trade_no,
            "out_trade_no": order.out_trade_no,
            "buyer_logon_id": order.buyer_logon_id,
            "total_amount": _yuan(order.amount_fen),
        }

    def _find(self, biz: dict[str, Any], now: datetime) -> SimOrder | None:
        order = self.orders.get(str(biz.get("out_trade_no") or ""))
        if order is None and biz.get("trade_no"):
            order = next((o for o in self.orders.values() if o.trade_no == biz["trade_no"]), None)
        return self._settled(order, now) if order else None

    def _query(self, biz: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            order = self._find(biz, self._now())
        if order is None:
            return self._failure("ACQ.TRADE_NOT_EXIST", "交易不存在")
        node = self._trade_node("10000", "Success", order) | {
            "trade_status": order.status,
            "buyer_user_id": order.buyer_user_id,
            "store_id": order.store_id,
            "terminal_id": order.terminal_id,
        }
        if order.paid_at is not None:
            node |= {"buyer_pay_amount": _yuan(order.amount_fen), "send_pay_date": _wall(order.paid_at)}
        return node

    def _cancel(self, biz: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        with self._lock:
            now = self._now()
            order = self._find(biz, now)
            if order is None:
                return self._failure("ACQ.TRADE_NOT_EXIST", "交易不存在"), None
            order = replace(order, cancel_calls=order.cancel_calls + 1)
            self.orders[order.out_trade_no] = order
            if order.scenario == "40" and order.cancel_calls == 1:
                return {
                    "code": "10000",
                    "msg": "Success",
                    "trade_no": order.trade_no,
                    "out_trade_no": order.out_trade_no,
                    "retry_flag": "Y",
                }, None
            if order.scenario == "41" and order.cancel_calls == 1:
                return {}, "http_500"
            if order.scenario == "41" and order.cancel_calls == 2:
                return self._failure("ACQ.SYSTEM_ERROR", "系统异常，请重新发起请求"), None
            if order.status == "TRADE_SUCCESS":
                if order.paid_at is not None and now - order.paid_at > timedelta(hours=24):
                    return self._failure("ACQ.TRADE_CANCEL_TIME_OUT", "超过撤销时间范围，请使用退款接口"), None
                order = replace(
                    order,
                    status="TRADE_CLOSED",
                    closed_at=now,
                    refunded_at=now,
                    cancel_action="refund",
                    refund_no=f"RF{order.trade_no[-16:]}",
                )
            elif order.status == "WAIT_BUYER_PAY":
                order = replace(order, status="TRADE_CLOSED", closed_at=now, cancel_action="close")
            self.orders[order.out_trade_no] = order
        answer = {
            "code": "10000",
            "msg": "Success",
            "trade_no": order.trade_no,
            "out_trade_no": order.out_trade_no,
            "retry_flag": "N",
        }
        return answer | {"action": order.cancel_action or "close"}, None

    def _refund(self, biz: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        amount_text = str(biz.get("refund_amount") or "")
        try:
            amount_fen = int(Decimal(amount_text) * 100) if _AMOUNT.match(amount_text) else 0
        except InvalidOperation:
            amount_fen = 0
        if amount_fen <= 0:
            return self._failure("ACQ.INVALID_PARAMETER", "参数无效：refund_amount 须大于 0"), None
        with self._lock:
            now = self._now()
            order = self._find(biz, now)
            if order is None:
                return self._failure("ACQ.TRADE_NOT_EXIST", "交易不存在"), None
            order = replace(order, refund_calls=order.refund_calls + 1)
            self.orders[order.out_trade_no] = order
            request_no = str(biz.get("out_request_no") or order.out_trade_no)  # none given: the trade's own number
            if order.scenario == "61" and order.refund_calls == 1:
                return self._failure("ACQ.SYSTEM_ERROR", "系统错误"), None
            existing = self.refunds.get((order.out_trade_no, request_no))
            if existing is not None:
                if existing.amount_fen != amount_fen:
                    return self._failure("ACQ.DISCORDANT_REPEAT_REQUEST", "请求信息不一致"), None
                made, fund_change = existing, "N"  # the same refund again: answered, nothing moves twice
            else:
                if order.status == "TRADE_CLOSED":
                    return self._failure("ACQ.TRADE_HAS_CLOSE", "交易已经关闭"), None
                if order.status != "TRADE_SUCCESS":
                    return self._failure("ACQ.TRADE_STATUS_ERROR", "交易状态不合法"), None
                if order.scenario == "62":
                    return self._failure("ACQ.SELLER_BALANCE_NOT_ENOUGH", "卖家余额不足"), None
                if amount_fen > order.amount_fen - self._refunded(order.out_trade_no):
                    return self._failure("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限"), None
                made = SimRefund(order.out_trade_no, request_no, amount_fen, str(biz.get("refund_reason") or ""), now)
                self.refunds[(order.out_trade_no, request_no)] = made
                fund_change = "Y"
                if self._refunded(order.out_trade_no) == order.amount_fen:
                    order = replace(order, status="TRADE_CLOSED", closed_at=now)  # refunded in full
                    self.orders[order.out_trade_no] = order
            total = self._refunded(order.out_trade_no)
        node = {
            "code": "10000",
            "msg": "Success",
            "trade_no": order.trade_no,
            "out_trade_no": order.out_trade_no,
            "buyer_logon_id": order.buyer_logon_id,
            "fund_change": fund_change,
            "refund_fee": _yuan(total),
            "gmt_refund_pay": _wall(made.refunded_at),
            "buyer_user_id": order.buyer_user_id,
        }
        lost = order.scenario == "60" and order.refund_calls == 1
        return node, "not_json" if lost else None

    def _refund_query(self, biz: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            order = self._find(biz, self._now())
            if order is None:
                return self._failure("ACQ.TRADE_NOT_EXIST", "交易不存在")
            request_no = str(biz.get("out_request_no") or order.out_trade_no)
            refund = self.refunds.get((order.out_trade_no, request_no))
        node: dict[str, Any] = {
            "code": "10000",
            "msg": "Success",
            "trade_no": order.trade_no,
            "out_trade_no": order.out_trade_no,
        }
        if refund is None:
            return node  # Alipay's answer for a refund it never made: no refund fields
        return node | {
            "out_request_no": refund.out_request_no,
            "total_amount": _yuan(order.amount_fen),
            "refund_amount": _yuan(refund.amount_fen),
            "refund_status": "REFUND_SUCCESS",
            "gmt_refund_pay": _wall(refund.refunded_at),
        }

    # --- the bill ---

    def _bill_url(self, biz: dict[str, Any], base_url: str) -> dict[str, Any]:
        if biz.get("bill_type") != "trade":
            return self._failure("isp.invalid-parameter", "bill_type 仅支持 trade")
        try:
            day = date.fromisoformat(str(biz.get("bill_date")))
        except ValueError:
            return self._failure("isp.invalid-parameter", "bill_date 格式应为 yyyy-MM-dd")
        now = self.now()
        day_over = datetime.combine(day + timedelta(days=1), datetime.min.time(), CST) <= now
        if not day_over and not (self.bill_same_day and day <= now.astimezone(CST).date()):
            return self._failure("isp.bill_not_exist", "账单不存在")
        content = self.bill_zip(day)
        file_id = secrets.token_hex(8)
        with self._lock:
            self._bills[file_id] = content
        return {
            "code": "10000",
            "msg": "Success",
            "bill_download_url": f"{base_url}/downloadBillFile.resource?fileId={file_id}",
        }

    def bill_zip(self, day: date) -> bytes:
        """The day's bill as Alipay hands it out: a zip of two GBK CSVs."""
        with self._lock:
            now = self._now()
            orders = [self._settled(o, now) for o in list(self.orders.values())]
            refunds = list(self.refunds.values())
        rows: list[tuple[datetime, list[str]]] = []
        by_trade = {o.out_trade_no: o for o in orders}
        for r in refunds:
            o = by_trade[r.out_trade_no]
            if r.refunded_at.astimezone(CST).date() != day:
                continue
            base = [f"{o.trade_no}\t", f"{o.out_trade_no}\t"]
            buyer = [o.store_id, "", "", o.terminal_id, o.buyer_logon_id]
            money = (
                [f"-{_yuan(r.amount_fen)}"] * 2
                + ["0.00"] * 5
                + [""]
                + ["0.00"] * 2
                + [f"{r.out_request_no}\t"]
                + ["0.00"] * 2
                + [""]
            )
            rows.append(
                (r.refunded_at, [*base, "退款", o.subject, _wall(o.created_at), _wall(r.refunded_at), *buyer, *money])
            )
        for o in orders:
            base = [f"{o.trade_no}\t", f"{o.out_trade_no}\t"]
            buyer = [o.store_id, "", "", o.terminal_id, o.buyer_logon_id]
            if o.paid_at is not None and o.paid_at.astimezone(CST).date() == day:
                money = [_yuan(o.amount_fen)] * 2 + ["0.00"] * 5 + [""] + ["0.00"] * 2 + [""] + ["0.00"] * 2 + [""]
                rows.append(
                    (o.paid_at, [*base, "交易", o.subject, _wall(o.created_at), _wall(o.paid_at), *buyer, *money])
                )
            if o.refunded_at is not None and o.refunded_at.astimezone(CST).date() == day:
                money = (
                    [f"-{_yuan(o.amount_fen)}"] * 2
                    + ["0.00"] * 5
                    + [""]
                    + ["0.00"] * 2
                    + [f"{o.refund_no}\t"]
                    + ["0.00"] * 2
                    + [""]
                )
                rows.append(
                    (
                        o.refunded_at,
                        [*base, "退款", o.subject, _wall(o.created_at), _wall(o.refunded_at), *buyer, *money],
                    )
                )
        rows.sort(key=lambda row: row[0])
        trades = [r for _, r in rows if r[2] == "交易"]
        refunds = [r for _, r in rows if r[2] == "退款"]
        span = f"#起始日期：[{day:%Y年%m月%d日} 00:00:00]   终止日期：[{day + timedelta(days=1):%Y年%m月%d日} 00:00:00]"
        account = f"#账号：[{self.merchant_pid}0156]"
        exported = f"#导出时间：[{now.astimezone(CST):%Y年%m月%d日 %H:%M:%S}]"

        detail = io.StringIO()
        writer = csv.writer(detail, lineterminator="\r\n")
        for line in ("#支付宝业务明细查询", account, span, "#" + "-" * 41 + "业务明细列表" + "-" * 40):
            detail.write(line + "\r\n")
        writer.writerow(BILL_HEADER)
        writer.writerows(r for _, r in rows)
        trade_total = sum(Decimal(r[11]) for r in trades)
        refund_total = sum(Decimal(r[11]) for r in refunds)
        for line in (
            "#" + "-" * 41 + "业务明细列表结束" + "-" * 36,
            f"#交易合计：{len(trades)}笔，商家实收共{trade_total:.2f}元，商家优惠共0.00元",
            f"#退款合计：{len(refunds)}笔，商家实收退款共{refund_total:.2f}元，商家优惠退款共0.00元",
            exported,
        ):
            detail.write(line + "\r\n")

        summary = io.StringIO()
        writer = csv.writer(summary, lineterminator="\r\n")
        for line in ("#支付宝业务汇总查询", account, span, "#" + "-" * 41 + "业务汇总列表" + "-" * 40):
            summary.write(line + "\r\n")
        writer.writerow(
            [
                "门店编号",
                "门店名称",
                "交易订单总笔数",
                "退款订单总笔数",
                "订单金额（元）",
                "商家实收（元）",
                "服务费（元）",
            ]
        )
        total = trade_total + refund_total
        writer.writerow(["合计", "", len(trades), len(refunds), f"{total:.2f}", f"{total:.2f}", "0.00"])
        summary.write("#" + "-" * 41 + "业务汇总列表结束" + "-" * 36 + "\r\n" + exported + "\r\n")

        stem = f"{self.merchant_pid}0156_{day:%Y%m%d}"
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{stem}_业务明细.csv", detail.getvalue().encode("gbk"))
            archive.writestr(f"{stem}_业务明细(汇总).csv", summary.getvalue().encode("gbk"))
        return out.getvalue()


def create_alipay_simulator(
    merchant_public_key_pem: str | bytes, alipay_private_key_pem: str | bytes, **options: Any
) -> FastAPI:
    """The simulator's ASGI app; the simulator itself (advance, inject, order, bill_zip) is `app.state.simulator`."""
    return AlipaySimulator(merchant_public_key_pem, alipay_private_key_pem, **options).app()
