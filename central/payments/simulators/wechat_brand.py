"""A simulator of WeChat Pay's Brand API for the merchant member card (商家名片会员), wire level: the calls
central/payments/brand_api.py makes, signed and checked as WeChat Pay does. `WeChatV3Simulator(brand=...)` serves
it on the same port as WeChat Pay and enrols the payer of a paid code payment whose attach carries a card's join
fields (下单同步入会).

- **Requests** must carry `Authorization: WECHATPAY-BRAND-SHA256-RSA2048 brand_id="…",…` signed with the brand's
  API key (checked with its public key: brand id, serial_no, a timestamp within 5 minutes of its clock, the
  signature) — 401 `SIGN_ERROR` otherwise — and name the brand's WeChat Pay public key in `Wechatpay-Serial`
  (400 `INVALID_REQUEST` otherwise). Answers are signed with that key's private half.
- **Limit**: at most `calls_per_second` accepted calls in any second of its clock (5, as WeChat Pay documents per
  brand id); one more is refused before any processing with 429 `FREQUENCY_LIMITED`. `limited = n` refuses the
  next n calls so, whatever the rate. Every call is kept with its time and answer (`calls`).
- **Cards**: templates by card id (`add_card`); user cards by (card id, code). A user holds at most one card of a
  template: enrolling one again (by payment or import) leaves their card as it is.
- **Feeds** are kept by `out_request_no`: the same one again is answered 204 and not added twice; with other
  content it is 400 `INVALID_REQUEST`.

| call | answers |
|---|---|
| `GET /brand/card-member/cards/{card_id}` | the template; 404 `RESOURCE_NOT_EXISTS` |
| `GET /brand/card-member/user-cards?openid=&user_card_state=&offset=&limit=` | `{data, total_count, offset, limit}`; limit 1–20 |
| `GET /brand/card-member/user-cards/{code}?card_id=` | the user card; 404 `RESOURCE_NOT_EXISTS` |
| `PATCH /brand/card-member/user-cards/{code}?card_id=` | 204; `openid` must be the holder's (400 otherwise) |
| `POST /brand/card-member/user-cards/import-by-openid` | 200 with the user card (their earlier one if they hold one) |
| `POST /brand/card-member/user-feeds` | 204 |
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response

from central.payments.wechat_v3 import (
    BRAND_AUTH_SCHEMA,
    MAX_CLOCK_SKEW_SECONDS,
    load_private_key,
    load_public_key,
    parse_authorization,
    request_message,
    response_message,
    rsa_sign,
    rsa_verify,
)

DEFAULT_BRAND_PUBLIC_KEY_ID = "PUB_KEY_ID_0112000000000000000000000000000001"
WINDOW = timedelta(seconds=1)


@dataclass
class SimUserCard:
    card_id: str
    code: str
    openid: str
    via: str  # payment, import
    created_at: datetime
    state: str = "EFFECTIVE"
    level: str = ""
    out_trade_no: str | None = None


@dataclass
class BrandCall:
    """One Brand API call as received: when (the simulator's clock), what, and the HTTP status answered."""

    at: datetime
    endpoint: str
    status: int


# The call being handled: when it arrived, and once admitted its entry in `calls`.
_ARRIVED: ContextVar[datetime | None] = ContextVar("brand_call_arrived", default=None)
_ADMITTED: ContextVar[BrandCall | None] = ContextVar("brand_call_admitted", default=None)


@dataclass
class BrandCardSimulator:
    brand_id: str
    brand_public_key_pem: str  # checks requests (the brand API certificate's public key)
    wechatpay_private_key_pem: str  # signs answers (the brand's WeChat Pay key)
    appid: str  # the card templates' appid: openids are of it
    public_key_id: str = DEFAULT_BRAND_PUBLIC_KEY_ID
    brand_serial_no: str = ""  # when set, requests must name it (serial_no)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    calls_per_second: int = 5
    limited: int = 0  # the next this many calls answer 429 FREQUENCY_LIMITED
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)  # card_id -> template
    user_cards: dict[tuple[str, str], SimUserCard] = field(default_factory=dict)  # (card_id, code) -> card
    feeds: dict[str, dict[str, Any]] = field(default_factory=dict)  # out_request_no -> body
    calls: list[BrandCall] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _before: Callable[[], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._brand_key = load_public_key(self.brand_public_key_pem)
        self._signer = load_private_key(self.wechatpay_private_key_pem)

    # -- for tests and the v3 simulator --

    def add_card(self, card_id: str, title: str = "会员卡") -> None:
        with self._lock:
            self.cards[card_id] = {
                "out_request_no": f"{self.brand_id}{secrets.token_hex(6)}",
                "card_id": card_id,
                "brand_id": self.brand_id,
                "appid": self.appid,
                "card_type": "NORMAL",
                "card_title": title,
                "card_color": "#63B359",
                "code_mode": "MERCHANT_ALLOCATE",
                "state": "CARD_EFFECTIVE",
            }

    def enrol(self, card_id: str, openid: str, code: str, via: str, out_trade_no: str | None = None) -> SimUserCard:
        """Give the user a card of `card_id` with `code`, unless they hold one already (answered instead)."""
        with self._lock:
            held = self.card_of(card_id, openid)
            if held is not None:
                return held
            if card_id not in self.cards:
                raise KeyError(card_id)
            made = SimUserCard(card_id, code, openid, via, self.clock(), out_trade_no=out_trade_no)
            self.user_cards[(card_id, code)] = made
            return made

    def card_of(self, card_id: str, openid: str) -> SimUserCard | None:
        with self._lock:
            return next((c for c in self.user_cards.values() if c.card_id == card_id and c.openid == openid), None)

    def count(self, endpoint: str | None = None, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for c in self.calls if endpoint in (None, c.endpoint) and status in (None, c.status))

    def busiest_second(self) -> int:
        """The most accepted calls any one-second window of the simulator's clock held."""
        with self._lock:
            times = sorted(c.at for c in self.calls if c.status != 429)
        most, start = 0, 0
        for end, at in enumerate(times):
            while at - times[start] >= WINDOW:
                start += 1
            most = max(most, end - start + 1)
        return most

    # -- the web app --

    def install(self, app: FastAPI, before: Callable[[], None] | None = None) -> None:
        """Add the Brand API's card-member calls to `app`; `before()` runs before each is handled (the v3
        simulator enrols the payers of paid joins there)."""
        self._before = before
        router = APIRouter()
        router.add_api_route("/brand/card-member/cards/{card_id}", self._card, methods=["GET"])
        router.add_api_route("/brand/card-member/user-cards", self._user_cards, methods=["GET"])
        router.add_api_route("/brand/card-member/user-cards/import-by-openid", self._import_by_openid, methods=["POST"])
        router.add_api_route("/brand/card-member/user-cards/{code}", self._user_card, methods=["GET"])
        router.add_api_route("/brand/card-member/user-cards/{code}", self._update_user_card, methods=["PATCH"])
        router.add_api_route("/brand/card-member/user-feeds", self._user_feed, methods=["POST"])
        app.include_router(router)

    def app(self) -> FastAPI:
        app = FastAPI(title="WeChat Pay Brand API simulator", docs_url=None, redoc_url=None, openapi_url=None)
        self.install(app)
        return app

    # -- the calls --

    async def _card(self, request: Request, card_id: str) -> Response:
        refused, _ = await self._admit(request, "card")
        if refused is not None:
            return refused
        with self._lock:
            template = self.cards.get(card_id)
        if template is None:
            return self._answer("card", 404, {"code": "RESOURCE_NOT_EXISTS", "message": "会员卡模板不存在"})
        return self._answer("card", 200, template)

    async def _user_cards(self, request: Request) -> Response:
        refused, _ = await self._admit(request, "user-cards")
        if refused is not None:
            return refused
        query = request.query_params
        openid, state = query.get("openid", ""), query.get("user_card_state")
        try:
            offset, limit = int(query.get("offset", "")), int(query.get("limit", ""))
        except ValueError:
            return self._error("user-cards", 400, "PARAM_ERROR", "offset和limit必填")
        if not openid or offset < 0 or not 1 <= limit <= 20:
            return self._error("user-cards", 400, "PARAM_ERROR", "openid必填，limit范围为1~20")
        with self._lock:
            held = [c for c in self.user_cards.values() if c.openid == openid and state in (None, c.state)]
        page = held[offset : offset + limit]
        return self._answer(
            "user-cards",
            200,
            {
                "data": [self._user_card_body(c) for c in page],
                "total_count": len(held),
                "offset": offset,
                "limit": limit,
            },
        )

    async def _user_card(self, request: Request, code: str) -> Response:
        refused, _ = await self._admit(request, "user-card")
        if refused is not None:
            return refused
        with self._lock:
            card = self.user_cards.get((request.query_params.get("card_id", ""), code))
        if card is None:
            return self._error("user-card", 404, "RESOURCE_NOT_EXISTS", "用户会员卡不存在")
        return self._answer("user-card", 200, self._user_card_body(card))

    async def _update_user_card(self, request: Request, code: str) -> Response:
        refused, body = await self._admit(request, "update-user-card")
        if refused is not None:
            return refused
        with self._lock:
            card = self.user_cards.get((request.query_params.get("card_id", ""), code))
            if card is None:
                return self._error("update-user-card", 404, "RESOURCE_NOT_EXISTS", "用户会员卡不存在")
            if body.get("openid") != card.openid:
                return self._error("update-user-card", 400, "INVALID_REQUEST", "openid与会员卡code不匹配")
            level = body.get("level")
            if level is not None:
                if not isinstance(level, str) or len(level) > 10:
                    return self._error("update-user-card", 400, "PARAM_ERROR", "level最长10个字符")
                card.level = level
        return self._answer("update-user-card", 204, None)

    async def _import_by_openid(self, request: Request) -> Response:
        refused, body = await self._admit(request, "import-by-openid")
        if refused is not None:
            return refused
        card_id, openid, code = body.get("card_id"), body.get("openid"), body.get("user_card_code")
        if not all(isinstance(v, str) and v for v in (card_id, openid, code)) or len(code) > 32:
            return self._error("import-by-openid", 400, "PARAM_ERROR", "card_id、openid、user_card_code必填")
        with self._lock:
            if card_id not in self.cards:
                return self._error("import-by-openid", 404, "RESOURCE_NOT_EXISTS", "会员卡模板不存在")
            other = self.user_cards.get((card_id, code))
            if other is not None and other.openid != openid:
                return self._error("import-by-openid", 400, "INVALID_REQUEST", "会员卡code已被使用")
            card = self.enrol(card_id, openid, code, "import")
        return self._answer("import-by-openid", 200, self._user_card_body(card))

    async def _user_feed(self, request: Request) -> Response:
        refused, body = await self._admit(request, "user-feeds")
        if refused is not None:
            return refused
        wanted = ("card_id", "user_card_code", "openid", "out_request_no", "cell")
        if not all(isinstance(body.get(n), str) and body[n] for n in wanted):
            return self._error(
                "user-feeds", 400, "PARAM_ERROR", "card_id、user_card_code、openid、out_request_no、cell必填"
            )
        if len(body["out_request_no"]) > 64 or len(body["cell"]) > 128:
            return self._error("user-feeds", 400, "PARAM_ERROR", "out_request_no最长64，cell最长128")
        with self._lock:
            card = self.user_cards.get((body["card_id"], body["user_card_code"]))
            if card is None:
                return self._error("user-feeds", 404, "RESOURCE_NOT_EXISTS", "用户会员卡不存在")
            if card.openid != body["openid"]:
                return self._error("user-feeds", 400, "INVALID_REQUEST", "openid与会员卡code不匹配")
            earlier = self.feeds.get(body["out_request_no"])
            if earlier is not None and earlier != body:
                return self._error("user-feeds", 400, "INVALID_REQUEST", "商家请求单号重复，且请求参数与之前不一致")
            self.feeds[body["out_request_no"]] = body
        return self._answer("user-feeds", 204, None)

    # -- checks and answers --

    async def _admit(self, request: Request, endpoint: str) -> tuple[Response | None, dict[str, Any]]:
        """Check the signature, the key named and the limit; the request's JSON body ({} for GET)."""
        now = self.clock()
        _ARRIVED.set(now)  # a call counts from its arrival, as WeChat Pay sees it
        _ADMITTED.set(None)
        raw = await request.body()
        refused = self._check_signature(request, raw)
        if refused is not None:
            return self._record(endpoint, refused), {}
        if request.headers.get("Wechatpay-Serial", "") != self.public_key_id:
            return self._error(endpoint, 400, "INVALID_REQUEST", "Wechatpay-Serial不是该品牌的微信支付公钥ID"), {}
        with self._lock:
            recent = sum(1 for c in self.calls if c.status != 429 and now - c.at < WINDOW)
            over = self.limited > 0 or recent >= self.calls_per_second
            if self.limited > 0:
                self.limited -= 1
            if not over:  # counted at once, while it is being handled
                admitted = BrandCall(now, endpoint, 0)
                self.calls.append(admitted)
                _ADMITTED.set(admitted)
        if over:
            return self._error(endpoint, 429, "FREQUENCY_LIMITED", "频率超限，请降低请求接口频率"), {}
        if self._before is not None:
            self._before()
        body: dict[str, Any] = {}
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                return self._error(endpoint, 400, "PARAM_ERROR", "请求体不是合法的JSON"), {}
            if not isinstance(parsed, dict):
                return self._error(endpoint, 400, "PARAM_ERROR", "请求体应为JSON对象"), {}
            body = parsed
        return None, body

    def _check_signature(self, request: Request, raw: bytes) -> Response | None:
        fields = parse_authorization(request.headers.get("Authorization", ""), BRAND_AUTH_SCHEMA)
        if fields is None:
            return self._plain_error(401, "SIGN_ERROR", "Authorization缺失或认证类型不是WECHATPAY-BRAND-SHA256-RSA2048")
        missing = [n for n in ("brand_id", "nonce_str", "signature", "timestamp", "serial_no") if not fields.get(n)]
        if missing:
            return self._plain_error(401, "SIGN_ERROR", f"Authorization缺少{missing[0]}")
        if fields["brand_id"] != self.brand_id:
            return self._plain_error(401, "SIGN_ERROR", "品牌ID与签名信息不匹配")
        if self.brand_serial_no and fields["serial_no"].upper() != self.brand_serial_no.upper():
            return self._plain_error(401, "SIGN_ERROR", "品牌API证书序列号有误")
        try:
            stamp = int(fields["timestamp"])
        except ValueError:
            return self._plain_error(401, "SIGN_ERROR", "timestamp格式错误")
        if abs(self.clock().timestamp() - stamp) > MAX_CLOCK_SKEW_SECONDS:
            return self._plain_error(401, "SIGN_ERROR", "请求时间戳已过期，请校准系统时间")
        url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        message = request_message(request.method, url, fields["timestamp"], fields["nonce_str"], raw)
        if not rsa_verify(self._brand_key, message, fields["signature"]):
            return self._plain_error(401, "SIGN_ERROR", "签名错误，请检查签名参数和方法是否都符合签名算法要求")
        return None

    def _user_card_body(self, card: SimUserCard) -> dict[str, Any]:
        body: dict[str, Any] = {
            "card_id": card.card_id,
            "brand_id": self.brand_id,
            "appid": self.appid,
            "openid": card.openid,
            "user_card_code": card.code,
            "user_card_state": card.state,
            "create_time": card.created_at.isoformat(),
        }
        if card.level:
            body["level"] = card.level
        return body

    def _record(self, endpoint: str, response: Response) -> Response:
        with self._lock:
            admitted = _ADMITTED.get()
            if admitted is not None:
                admitted.status = response.status_code
            else:
                self.calls.append(BrandCall(_ARRIVED.get() or self.clock(), endpoint, response.status_code))
        return response

    def _answer(self, endpoint: str, status: int, body: dict[str, Any] | None) -> Response:
        data = b"" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        stamp, nonce = str(int(self.clock().timestamp())), secrets.token_hex(16).upper()
        headers = {
            "Wechatpay-Serial": self.public_key_id,
            "Wechatpay-Signature": rsa_sign(self._signer, response_message(stamp, nonce, data)),
            "Wechatpay-Timestamp": stamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
            "Request-ID": secrets.token_hex(16),
        }
        media = "application/json" if body is not None else None
        return self._record(endpoint, Response(data, status_code=status, headers=headers, media_type=media))

    def _error(self, endpoint: str, status: int, code: str, message: str) -> Response:
        return self._answer(endpoint, status, {"code": code, "message": message})

    @staticmethod
    def _plain_error(status: int, code: str, message: str) -> Response:
        """Refused before any processing (a bad signature): not signed."""
        body = json.dumps({"code": code, "message": message}, ensure_ascii=False).encode()
        return Response(body, status_code=status, media_type="application/json")
