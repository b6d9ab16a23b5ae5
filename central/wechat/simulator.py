"""A wire-level simulator of WeChat's server API for the mini program and the official account: `cgi-bin/stable_token`,
`sns/jscode2session`, `wxa/business/getuserphonenumber`, `cgi-bin/user/get`, `cgi-bin/user/info/batchget`.

It speaks WeChat's JSON (errcode / errmsg), checks appids, AppSecrets and access tokens as WeChat does, and keeps
its state in memory. `pos-central simulate wechat` serves it on the WeChat Pay simulator's port (`install`); the
tests serve it alone (`app`).

**Simulated customers** are four digits, as in the WeChat Pay simulator, where they are digits 3–6 of an auth code.
Like WeChat, the simulator knows each customer's openid for every app (`customer_openid(appid, customer)`, the
function the payment simulator uses, so a customer's payment openid is the one of the payment appid) and one
UnionID for all apps of the merchant (`customer_unionid`); following the UnionID is how central ties them together.

| call | what the simulator does |
|---|---|
| `stable_token` | the app's current token (7,200 s), or a new one when there is none, it expired or was revoked; `force_refresh` revokes it |
| `jscode2session` | a code is `CCCC` + 4–60 of `[A-Za-z0-9_-]` (customer CCCC), single use (40163 again, 40029 otherwise); a new session key each time; the UnionID unless the customer's number starts with 9 (WeChat gives it only when the user is known to the merchant's Open Platform account: those customers get it from their encrypted user data) |
| `getuserphonenumber` | a code as above; its customer's mobile `1380013CCCC`; an `openid` sent that is not the customer's is 40029; `phone_quota` successful calls, then errcode 1400001 |
| `user/get` | the followers (`follow`) in the order they followed, `page_size` a page; `next_openid` is the page's last openid, and after the last page count 0 and `""` |
| `user/info/batchget` | at most 100 openids (40032 otherwise); a follower with its UnionID, one who left with `subscribe: 0`; an openid never seen is 40003 |

`quota_left[endpoint]` calls, then errcode 45009 (daily quota); `revoke_tokens()` makes the current tokens answer
40001, a token past its expiry answers 42001. `calls` records (endpoint, appid) of every call.

Not WeChat's API, for trying the demo with curl: `GET /_sim/wechat/login_code?customer=0001`,
`/_sim/wechat/phone_code?customer=0001`, `/_sim/wechat/userinfo?customer=0001` (sealed with the customer's current
session key), `POST /_sim/wechat/follow?customer=0001`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from central.payments.simulators.wechat import customer_openid
from central.wechat import opendata

CODE = re.compile(r"^([0-9]{4})[A-Za-z0-9_-]{4,60}$")
TOKEN_SECONDS = 7200
PAGE_SIZE = 10000
BATCHGET_MAX = 100

__all__ = ["WeChatApiSimulator", "customer_openid", "customer_phone", "customer_unionid"]


def customer_unionid(customer: str) -> str:
    """The UnionID of simulated customer `customer` (the same for every app of the merchant)."""
    digest = hashlib.sha256(f"unionid/{customer}".encode()).digest()
    return "o" + base64.urlsafe_b64encode(digest).decode()[:27]


def customer_phone(customer: str) -> str:
    """The mobile number of simulated customer `customer` (a valid mainland number)."""
    return f"1380013{customer}"


def _error(errcode: int, errmsg: str) -> JSONResponse:
    return JSONResponse({"errcode": errcode, "errmsg": errmsg})


@dataclass
class WeChatApiSimulator:
    miniprogram_appid: str | None = None
    miniprogram_secret: str = "miniprogram-secret-of-the-simulator"
    official_account_appid: str | None = None
    official_account_secret: str = "official-account-secret-of-the-simulator"
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    page_size: int = PAGE_SIZE
    phone_quota: int | None = None  # successful phone number calls left; None: no limit
    quota_left: dict[str, int] = field(default_factory=dict)  # endpoint -> calls left before errcode 45009
    calls: list[tuple[str, str | None]] = field(default_factory=list)
    followers: list[str] = field(default_factory=list)  # customers following the official account, in order
    _left: set[str] = field(default_factory=set)  # customers who followed and left
    _tokens: dict[str, tuple[str, datetime]] = field(default_factory=dict)  # token -> (appid, expiry)
    _current: dict[str, str] = field(default_factory=dict)  # appid -> its current token
    _used_codes: set[str] = field(default_factory=set)
    _session_keys: dict[str, str] = field(default_factory=dict)  # customer -> session key of the last login
    _scripted: dict[str, dict[str, str]] = field(default_factory=dict)  # js_code -> the answer to give
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # -- for tests and the demo --

    def login_code(self, customer: str) -> str:
        """A code like the one `wx.login` gives the customer's mini program."""
        return customer + secrets.token_hex(12)

    def phone_code(self, customer: str) -> str:
        """A code like the one the getPhoneNumber button gives."""
        return customer + secrets.token_hex(16)

    def script_login(self, js_code: str, openid: str, session_key: str, unionid: str | None = None) -> None:
        """Answer `js_code` with exactly these (e.g. WeChat's published decryption example)."""
        answer = {"openid": openid, "session_key": session_key} | ({"unionid": unionid} if unionid else {})
        with self._lock:
            self._scripted[js_code] = answer

    def session_key_of(self, customer: str) -> str:
        """The session key WeChat gave the customer's last login (what central keeps to itself)."""
        with self._lock:
            return self._session_keys[customer]

    def encrypted_user_info(
        self,
        customer: str,
        *,
        appid: str | None = None,
        timestamp: int | None = None,
        with_unionid: bool = True,
    ) -> tuple[str, str]:
        """(encryptedData, iv) of the customer's user info, sealed as WeChat does with their current session key;
        `appid` and `timestamp` change the watermark."""
        mini = self.miniprogram_appid or ""
        info: dict[str, Any] = {
            "openId": customer_openid(mini, customer),
            "nickName": "微信用户",
            "gender": 0,
            "language": "zh_CN",
            "city": "",
            "province": "",
            "country": "",
            "avatarUrl": "",
        }
        if with_unionid:
            info["unionId"] = customer_unionid(customer)
        info["watermark"] = {
            "timestamp": int(self.clock().timestamp()) if timestamp is None else timestamp,
            "appid": appid or mini,
        }
        iv = secrets.token_bytes(16)
        plaintext = json.dumps(info, ensure_ascii=False, separators=(",", ":")).encode()
        return opendata.encrypt(self.session_key_of(customer), plaintext, iv), base64.b64encode(iv).decode()

    def follow(self, *customers: str) -> None:
        with self._lock:
            for customer in customers:
                if customer not in self.followers:
                    self.followers.append(customer)
                self._left.discard(customer)

    def unfollow(self, customer: str) -> None:
        with self._lock:
            if customer in self.followers:
                self.followers.remove(customer)
                self._left.add(customer)

    def revoke_tokens(self, appid: str | None = None) -> None:
        """The current access tokens (of `appid`, or all) become invalid: calls with them answer 40001."""
        with self._lock:
            for token, (owner, _) in list(self._tokens.items()):
                if appid in (None, owner):
                    del self._tokens[token]
            for owner in list(self._current):
                if appid in (None, owner):
                    del self._current[owner]

    def count(self, endpoint: str, appid: str | None = None) -> int:
        with self._lock:
            return sum(1 for e, a in self.calls if e == endpoint and appid in (None, a))

    # -- the web app --

    def app(self) -> FastAPI:
        app = FastAPI(title="WeChat server API simulator", docs_url=None, redoc_url=None, openapi_url=None)
        self.install(app)
        return app

    def install(self, app: FastAPI) -> None:
        """Add the simulated calls to `app` (e.g. the WeChat Pay simulator's, to serve both on one port)."""
        router = APIRouter()
        router.add_api_route("/cgi-bin/stable_token", self._stable_token, methods=["POST"])
        router.add_api_route("/sns/jscode2session", self._jscode2session, methods=["GET"])
        router.add_api_route("/wxa/business/getuserphonenumber", self._getuserphonenumber, methods=["POST"])
        router.add_api_route("/cgi-bin/user/get", self._user_get, methods=["GET"])
        router.add_api_route("/cgi-bin/user/info/batchget", self._batchget, methods=["POST"])
        router.add_api_route("/_sim/wechat/login_code", self._sim_login_code, methods=["GET"])
        router.add_api_route("/_sim/wechat/phone_code", self._sim_phone_code, methods=["GET"])
        router.add_api_route("/_sim/wechat/userinfo", self._sim_userinfo, methods=["GET"])
        router.add_api_route("/_sim/wechat/follow", self._sim_follow, methods=["POST"])
        app.include_router(router)

    # -- the calls --

    def _apps(self) -> dict[str, str]:
        apps = {}
        if self.miniprogram_appid:
            apps[self.miniprogram_appid] = self.miniprogram_secret
        if self.official_account_appid:
            apps[self.official_account_appid] = self.official_account_secret
        return apps

    def _record(self, endpoint: str, appid: str | None) -> JSONResponse | None:
        """Count the call; the quota error when its quota is used up."""
        with self._lock:
            self.calls.append((endpoint, appid))
            left = self.quota_left.get(endpoint)
            if left is not None:
                if left <= 0:
                    return _error(45009, "reach max api daily quota limit")
                self.quota_left[endpoint] = left - 1
        return None

    def _check_token(self, access_token: str, appid: str | None) -> JSONResponse | None:
        with self._lock:
            found = self._tokens.get(access_token)
        if found is None or found[0] != appid:
            return _error(40001, "invalid credential, access_token is invalid or not latest")
        if self.clock() >= found[1]:
            return _error(42001, "access_token expired")
        return None

    async def _stable_token(self, request: Request) -> JSONResponse:
        body = await _json(request)
        appid = body.get("appid")
        if refused := self._record("cgi-bin/stable_token", appid if isinstance(appid, str) else None):
            return refused
        if body.get("grant_type") != "client_credential":
            return _error(40002, "invalid grant_type")
        apps = self._apps()
        if appid not in apps:
            return _error(40013, "invalid appid")
        if body.get("secret") != apps[appid]:
            return _error(40125, "invalid appsecret")
        now = self.clock()
        with self._lock:
            current = self._current.get(appid)
            if body.get("force_refresh") is True and current is not None:
                self._tokens.pop(current, None)
                current = None
            if current is not None and current in self._tokens and now < self._tokens[current][1]:
                expires_at = self._tokens[current][1]
            else:
                current = f"SIMTOKEN-{appid}-{secrets.token_hex(16)}"
                expires_at = now + timedelta(seconds=TOKEN_SECONDS)
                self._tokens[current] = (appid, expires_at)
                self._current[appid] = current
        return JSONResponse({"access_token": current, "expires_in": int((expires_at - now).total_seconds())})

    async def _jscode2session(
        self, appid: str = "", secret: str = "", js_code: str = "", grant_type: str = ""
    ) -> JSONResponse:
        if refused := self._record("sns/jscode2session", appid or None):
            return refused
        if not self.miniprogram_appid or appid != self.miniprogram_appid:
            return _error(40013, "invalid appid")
        if secret != self.miniprogram_secret:
            return _error(40125, "invalid appsecret")
        if grant_type != "authorization_code":
            return _error(40002, "invalid grant_type")
        with self._lock:
            if js_code in self._used_codes:
                return _error(40163, "code been used")
            scripted = self._scripted.get(js_code)
            match = CODE.match(js_code)
            if scripted is None and match is None:
                return _error(40029, "invalid code")
            self._used_codes.add(js_code)
            if scripted is not None:
                return JSONResponse(scripted)
            customer = match.group(1)  # type: ignore[union-attr]
            key = base64.b64encode(secrets.token_bytes(16)).decode()
            self._session_keys[customer] = key
        answer = {"session_key": key, "openid": customer_openid(appid, customer)}
        if not customer.startswith("9"):
            answer["unionid"] = customer_unionid(customer)
        return JSONResponse(answer)

    async def _getuserphonenumber(self, request: Request, access_token: str = "") -> JSONResponse:
        appid = self.miniprogram_appid
        if refused := self._record("wxa/business/getuserphonenumber", appid):
            return refused
        if refused := self._check_token(access_token, appid):
            return refused
        body = await _json(request)
        code = body.get("code")
        code = code if isinstance(code, str) else ""
        match = CODE.match(code)
        with self._lock:
            if match is None or code in self._used_codes:
                return _error(40029, "invalid code")
            customer = match.group(1)
            openid = body.get("openid")
            if openid is not None and openid != customer_openid(appid or "", customer):
                return _error(40029, "invalid code, the code is not this openid's")
            if self.phone_quota is not None and self.phone_quota <= 0:
                return _error(1400001, "phone number quota is not enough")
            self._used_codes.add(code)
            if self.phone_quota is not None:
                self.phone_quota -= 1
        phone = customer_phone(customer)
        watermark = {"timestamp": int(self.clock().timestamp()), "appid": appid}
        return JSONResponse(
            {
                "errcode": 0,
                "errmsg": "ok",
                "phone_info": {
                    "phoneNumber": phone,
                    "purePhoneNumber": phone,
                    "countryCode": "86",
                    "watermark": watermark,
                },
            }
        )

    async def _user_get(self, access_token: str = "", next_openid: str = "") -> JSONResponse:
        appid = self.official_account_appid
        if refused := self._record("cgi-bin/user/get", appid):
            return refused
        if refused := self._check_token(access_token, appid):
            return refused
        with self._lock:
            openids = [customer_openid(appid or "", c) for c in self.followers]
        start = 0
        if next_openid:
            if next_openid not in openids:
                return _error(40003, "invalid openid")
            start = openids.index(next_openid) + 1
        page = openids[start : start + self.page_size]
        answer: dict[str, Any] = {"total": len(openids), "count": len(page), "next_openid": page[-1] if page else ""}
        if page:
            answer["data"] = {"openid": page}
        return JSONResponse(answer)

    async def _batchget(self, request: Request, access_token: str = "") -> JSONResponse:
        appid = self.official_account_appid or ""
        if refused := self._record("cgi-bin/user/info/batchget", appid):
            return refused
        if refused := self._check_token(access_token, appid):
            return refused
        body = await _json(request)
        users = body.get("user_list")
        if not isinstance(users, list) or not 1 <= len(users) <= BATCHGET_MAX:
            return _error(40032, "invalid openid list size")
        with self._lock:
            following = {customer_openid(appid, c): c for c in self.followers}
            left = {customer_openid(appid, c): c for c in self._left}
        infos = []
        for user in users:
            openid = user.get("openid") if isinstance(user, dict) else None
            if openid in following:
                customer = following[openid]
                infos.append(
                    {
                        "subscribe": 1,
                        "openid": openid,
                        "language": "zh_CN",
                        "subscribe_time": 1700000000 + int(customer),
                        "unionid": customer_unionid(customer),
                        "remark": "",
                        "groupid": 0,
                        "tagid_list": [],
                        "subscribe_scene": "ADD_SCENE_QR_CODE",
                        "qr_scene": 0,
                        "qr_scene_str": "",
                    }
                )
            elif openid in left:
                infos.append({"subscribe": 0, "openid": openid})
            else:
                return _error(40003, "invalid openid")
        return JSONResponse({"user_info_list": infos})

    # -- for the demo (not WeChat's API) --

    async def _sim_login_code(self, customer: str) -> JSONResponse:
        return JSONResponse({"js_code": self.login_code(_customer(customer))})

    async def _sim_phone_code(self, customer: str) -> JSONResponse:
        return JSONResponse({"code": self.phone_code(_customer(customer))})

    async def _sim_userinfo(self, customer: str) -> JSONResponse:
        customer = _customer(customer)
        if customer not in self._session_keys:
            return JSONResponse({"error": "this customer has not logged in"}, status_code=404)
        encrypted, iv = self.encrypted_user_info(customer)
        return JSONResponse({"encrypted_data": encrypted, "iv": iv})

    async def _sim_follow(self, customer: str) -> JSONResponse:
        self.follow(_customer(customer))
        return JSONResponse({"followers": len(self.followers)})


def _customer(text: str) -> str:
    if not re.fullmatch(r"[0-9]{4}", text):
        raise HTTPException(422, "customer is four digits, e.g. 0001")
    return text


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
