"""A client of WeChat Pay's Brand API (品牌API) for the merchant member card (商家名片会员), and the join fields a code
payment carries to enrol its payer (下单同步入会). What central does with them is central/payments/brand_cards.py.

Written against WeChat Pay's published brand documents (pay.weixin.qq.com/doc/brand: 品牌API概述 4015407523, 开发指引
4015562404, the card-member API pages), not an SDK:

- **Signing** is API v3's (central/payments/wechat_v3.py: SHA256withRSA over method, path and query, timestamp,
  nonce, body) with the Brand API's own schema and identity: `Authorization: WECHATPAY-BRAND-SHA256-RSA2048
  brand_id="…",nonce_str="…",signature="…",timestamp="…",serial_no="…"`, signed with the brand API certificate's
  private key; every request also names the brand's WeChat Pay public key in `Wechatpay-Serial` (`PUB_KEY_ID_…`).
  Answers are checked with that public key (public-key mode only: the Brand API has no platform certificates).
  The brand's keys are its own, from 品牌经营平台, not the merchant's API v3 keys.
- **Paths** have the `/brand` prefix instead of `/v3`:

  | call | method and path |
  |---|---|
  | a card template | `GET /brand/card-member/cards/{card_id}` |
  | a user's cards under the brand | `GET /brand/card-member/user-cards?openid=&user_card_state=&offset=&limit=` (limit 1–20) |
  | one user card | `GET /brand/card-member/user-cards/{user_card_code}?card_id=&openid=` |
  | change a user card (level, …) | `PATCH /brand/card-member/user-cards/{user_card_code}?card_id=` with `openid` |
  | join a known user (存量会员 by openid) | `POST /brand/card-member/user-cards/import-by-openid` |
  | a user feed (会员动态: points earned) | `POST /brand/card-member/user-feeds` with `out_request_no` (≤ 64) and `cell` (≤ 128) |

- **Limit**: 5 calls a second per brand id (接口限频: 按品牌商户品牌 ID 维度 5 次/秒), every card-member call together.
  `RateLimit` spaces the calls of this process and never lets a second hold more, as WeChat Pay counts them; it
  answers a call over the limit 429 `FREQUENCY_LIMITED` (`BrandApiError.rate_limited`), which is retried later.
- **Join on payment** (下单同步入会): the code payment's `attach` gets `cell=…&card_id=…&user_card_code=…` after the
  merchant's own attach (central has none); a payer who holds no card of that template is enrolled with that code
  when the payment succeeds. `cell` (the 会员动态 shown with the payment) may be left out. The attach is at most 128
  characters (`join_attach`, checked at start against the settings).
- **Cells**: WeChat Pay's pages name the feed templates (0 开通商家会员, 1 本次积分+【x】, 7 有【x】积分,可抵【y】元, …)
  but not the syntax of a cell that fills one in; a merchant gets it with the template's approval. Central fills
  the settings' cell templates with `{points}` and `{balance}` (`feed_cell`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import string
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from central.payments.provider import ProviderBadResponse
from central.payments.wechat_v3 import (
    ATTACH_MAX,
    BRAND_AUTH_SCHEMA,
    LoopClients,
    ResponseVerifier,
    authorization,
    load_private_key,
    load_public_key,
)

if TYPE_CHECKING:
    from central.config import Settings

log = logging.getLogger(__name__)

__all__ = ["ATTACH_MAX", "BrandApiError", "BrandCardClient", "RateLimit", "feed_cell", "join_attach"]

RATE_LIMITED = "FREQUENCY_LIMITED"
# Codes that say "the same again, later": nothing was done.
RETRY_CODES = frozenset({"SYSTEM_ERROR", "FREQUENCY_LIMITED", "BIZ_ERR_NEED_RETRY"})
PAGE = 20  # the most user cards a page holds
# A second and a little: two clocks (ours, WeChat Pay's) never measure a second quite alike.
WINDOW_SECONDS = 1.02


def join_attach(card_id: str, code: str, cell: str | None = None, own: str = "") -> str:
    """The `attach` of a code payment that enrols its payer in member card `card_id` with `code`: the merchant's own
    attach, then `cell=…&card_id=…&user_card_code=…` (下单同步入会, 下单同步用户实时动态 2.3)."""
    fields = ([("cell", cell)] if cell else []) + [("card_id", card_id), ("user_card_code", code)]
    return own + "&".join(f"{name}={value}" for name, value in fields)


def parse_join_attach(attach: str) -> dict[str, str]:
    """The join fields of an attach (`join_attach`'s inverse; the merchant's own part before them is dropped)."""
    start = min((i for i in (attach.find("cell="), attach.find("card_id=")) if i >= 0), default=-1)
    if start < 0:
        return {}
    fields = {}
    for part in attach[start:].split("&"):
        name, _, value = part.partition("=")
        if name in ("cell", "card_id", "user_card_code"):
            fields[name] = value
    return fields


def feed_cell(template: str, *, points: int, balance: int) -> str:
    """A cell from the settings' template: `{points}` (this entry's change) and `{balance}` filled in. KeyError or
    IndexError for any other field, ValueError for a broken template."""
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = names - {"points", "balance"}
    if unknown:
        raise KeyError(", ".join(sorted(unknown)))
    return template.format(points=points, balance=balance)


class BrandApiError(Exception):
    """A Brand API call did not succeed. `status`/`code` are WeChat Pay's when it answered."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code

    @property
    def rate_limited(self) -> bool:
        return self.status == 429 or self.code == RATE_LIMITED

    @property
    def retryable(self) -> bool:
        """No answer, an answer that is not the protocol, a 5xx or a "try again" code: the same call may succeed
        later. Otherwise WeChat Pay refused it (a parameter, a card or code it does not know, no permission)."""
        return self.status is None or self.status >= 500 or self.status in (401, 429) or self.code in RETRY_CODES


class RateLimit:
    """At most `per_second` calls in any second as WeChat Pay sees them, for every caller of this process: the
    calls are spaced 1/`per_second` apart (a token bucket holding one token), and a call also waits until a second
    (and a little) has passed since the answer to the call `per_second` places before it came back. A call arrives
    before its answer does, so a call held up on the way (a new connection, a busy loop) can never bunch the next
    ones up at WeChat Pay's end. `hold(seconds)` pauses every caller, e.g. after a 429."""

    def __init__(
        self,
        per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ):
        self.interval = 1.0 / per_second
        self._answers: deque[float] = deque(maxlen=max(1, int(per_second)))
        self._clock = clock
        self._sleep = sleep
        self._due = float("-inf")
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    async def take(self) -> None:
        """Wait for this call's turn (turns are taken in order)."""
        # A lock per event loop: the service's loop is a new one after a restart in the same process.
        async with self._locks.setdefault(asyncio.get_running_loop(), asyncio.Lock()):
            now = self._clock()
            due = max(self._due, now)
            if len(self._answers) == self._answers.maxlen:
                due = max(due, self._answers[0] + WINDOW_SECONDS)
            if due > now:
                await self._sleep(due - now)
            self._due = due + self.interval

    def answered(self) -> None:
        """The call whose turn was taken last is over (answered, failed or timed out)."""
        self._answers.append(self._clock())

    def hold(self, seconds: float) -> None:
        self._due = max(self._due, self._clock() + seconds)


@dataclass(frozen=True)
class UserCard:
    """A member card a user holds, as the Brand API answers it."""

    card_id: str
    code: str
    state: str  # UNACTIVATED, EFFECTIVE, EXPIRED, INVALID
    openid: str | None = None


class BrandCardClient:
    """The card-member calls of one brand, against `base_url` (https://api.mch.weixin.qq.com, or a simulator)."""

    def __init__(
        self,
        *,
        base_url: str,
        brand_id: str,
        serial_no: str,
        private_key: rsa.RSAPrivateKey,
        public_key_id: str,
        verifier: ResponseVerifier,
        calls_per_second: float = 5.0,
        timeout: float = 10.0,
        clock: Callable[[], datetime] | None = None,
        limit: RateLimit | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self._prefix = urlsplit(self.base_url).path
        self.brand_id = brand_id
        self.serial_no = serial_no.upper()
        self._key = private_key
        self.public_key_id = public_key_id
        self.verifier = verifier
        self.timeout = timeout
        self.limit = limit or RateLimit(calls_per_second)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._clients = LoopClients(timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> BrandCardClient:
        """ValueError (stopping the service at start) when a key file cannot be used."""
        if not (settings.wechat_brand_private_key_path and settings.wechat_brand_public_key_path):
            raise ValueError("the Brand API needs wechat_brand_private_key_path and wechat_brand_public_key_path")
        public_key_id = settings.wechat_brand_public_key_id or ""
        return cls(
            base_url=settings.wechat_brand_base_url or settings.wechat_base_url or "",
            brand_id=settings.wechat_brand_id or "",
            serial_no=settings.wechat_brand_serial_no or "",
            private_key=load_private_key(_read(settings.wechat_brand_private_key_path, "the brand API private key")),
            public_key_id=public_key_id,
            verifier=ResponseVerifier(
                {
                    public_key_id: load_public_key(
                        _read(settings.wechat_brand_public_key_path, "the brand's WeChat Pay public key")
                    )
                }
            ),
            calls_per_second=settings.wechat_brand_calls_per_second,
            timeout=settings.wechat_timeout_seconds,
        )

    # -- calls --

    async def card(self, card_id: str) -> dict[str, Any]:
        """A card template (查询会员卡模板信息)."""
        return await self._call("GET", f"/brand/card-member/cards/{quote(card_id, safe='')}")

    async def user_cards(self, openid: str, state: str | None = None) -> list[UserCard]:
        """Every card the user holds under this brand (查询用户在品牌下所有会员卡), all pages."""
        cards: list[UserCard] = []
        offset = 0
        while True:
            query = {"openid": openid} | ({"user_card_state": state} if state else {})
            answer = await self._call(
                "GET", "/brand/card-member/user-cards?" + urlencode(query | {"offset": offset, "limit": PAGE})
            )
            page = answer.get("data") or []
            if not isinstance(page, list):
                raise BrandApiError("user-cards: data is not a list", status=200)
            cards.extend(_user_card(item) for item in page if isinstance(item, dict))
            total = answer.get("total_count")
            offset += len(page)
            if not page or not isinstance(total, int) or offset >= total:
                return cards

    async def user_card(self, code: str, card_id: str, openid: str | None = None) -> UserCard:
        """One user card by its code (查询用户会员卡信息)."""
        query = {"card_id": card_id} | ({"openid": openid} if openid else {})
        answer = await self._call("GET", f"/brand/card-member/user-cards/{quote(code, safe='')}?{urlencode(query)}")
        return _user_card(answer)

    async def update_user_card(self, code: str, card_id: str, openid: str, **fields: Any) -> None:
        """Change a user card (修改用户会员卡信息), e.g. `level="金卡"` (at most 10 characters)."""
        await self._call(
            "PATCH",
            f"/brand/card-member/user-cards/{quote(code, safe='')}?{urlencode({'card_id': card_id})}",
            {"openid": openid, **fields},
        )

    async def import_by_openid(self, card_id: str, openid: str, code: str) -> None:
        """Give a user the card with `code` (根据OPENID导入用户会员卡): joining a member central already knows."""
        await self._call(
            "POST",
            "/brand/card-member/user-cards/import-by-openid",
            {"card_id": card_id, "openid": openid, "user_card_code": code},
        )

    async def user_feed(self, card_id: str, code: str, openid: str, out_request_no: str, cell: str) -> None:
        """A user feed (创建用户动态信息): what changed on the card, e.g. the points a sale earned. The same
        `out_request_no` again is the same feed."""
        await self._call(
            "POST",
            "/brand/card-member/user-feeds",
            {
                "card_id": card_id,
                "user_card_code": code,
                "openid": openid,
                "out_request_no": out_request_no,
                "cell": cell,
            },
        )

    async def aclose(self) -> None:
        await self._clients.aclose()

    # -- the exchange --

    def _http(self) -> httpx.AsyncClient:
        return self._clients.get()

    async def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One signed call within the rate limit; its verified JSON answer ({} for 204). BrandApiError otherwise."""
        http = self._http()  # made and signed before the turn is taken, so the request leaves right after it
        data = b"" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        what = f"{method} {path.split('?', 1)[0]}"
        headers = {
            "Authorization": authorization(
                mchid=self.brand_id,
                serial_no=self.serial_no,
                key=self._key,
                method=method,
                url=self._prefix + path,
                body=data,
                timestamp=str(int(self._clock().timestamp())),
                schema=BRAND_AUTH_SCHEMA,
                who="brand_id",
            ),
            "Accept": "application/json",
            "Wechatpay-Serial": self.public_key_id,
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        await self.limit.take()
        try:
            response = await http.request(method, self.base_url + path, content=data, headers=headers)
        except httpx.HTTPError as exc:
            raise BrandApiError(f"{what}: no answer from WeChat Pay ({type(exc).__name__}: {exc})") from exc
        finally:
            self.limit.answered()
        if response.status_code == 401:
            # Our signature was refused before any processing; such answers need not be signed.
            raise BrandApiError(
                f"{what}: HTTP 401, WeChat Pay could not verify our signature (brand key, serial or brand id?)",
                status=401,
                code="SIGN_ERROR",
            )
        try:
            self.verifier.verify(response.headers, response.content, self._clock(), f"{what}: the answer")
        except ProviderBadResponse as exc:
            raise BrandApiError(str(exc)) from exc
        parsed: Any = {}
        if response.content:
            try:
                parsed = json.loads(response.content)
            except ValueError:
                raise BrandApiError(f"{what}: HTTP {response.status_code}, the answer is not JSON") from None
        if not isinstance(parsed, dict):
            raise BrandApiError(f"{what}: the answer is JSON but not an object")
        if response.status_code >= 300:
            code = str(parsed.get("code") or "") or None
            raise BrandApiError(
                f"{what}: HTTP {response.status_code} {code or ''} {parsed.get('message', '')}".rstrip(),
                status=response.status_code,
                code=code,
            )
        return parsed


def _user_card(item: Mapping[str, Any]) -> UserCard:
    card_id, code = item.get("card_id"), item.get("user_card_code")
    if not isinstance(card_id, str) or not isinstance(code, str) or not card_id or not code:
        raise BrandApiError("a user card without card_id or user_card_code", status=200)
    openid = item.get("openid")
    return UserCard(card_id, code, str(item.get("user_card_state") or ""), openid if isinstance(openid, str) else None)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None
