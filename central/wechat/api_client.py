"""A client of WeChat's server API (https://api.weixin.qq.com) for one app: the mini program or the official account.

- **Access token.** From `POST /cgi-bin/stable_token` (grant_type client_credential, normal mode), kept until five
  minutes before it expires and shared by every call of the app in this process. Stable tokens, not `cgi-bin/token`:
  WeChat keeps them apart from the tokens other holders of the same app fetch with `cgi-bin/token` (the member-card
  sync of central/payments/cards.py, a merchant's own tools), and in normal mode asking again while one is valid
  answers the same token, so several replicas never invalidate each other's. When WeChat refuses a token (errcode
  40001, 40014, 42001) it is fetched again and the call made once more.
- **Rate limit.** A token bucket per app (`calls_per_second`, bursts of `burst`); a caller that cannot wait long
  (a request of the mini program) gives `max_wait` and gets `WeChatBusy` instead of waiting.
- **Errors.** `WeChatError` when WeChat answers an errcode (`quota` true for 45009 daily / 45011 per-minute
  limits), `WeChatUnreachable` when there is no answer in WeChat's protocol.
- **Logs.** httpx logs each request line at INFO, query string included; a filter on its logger masks the
  AppSecret, access tokens and codes there, so a log never holds them.

Blocking (httpx.Client): the routes that use it run in worker threads, the follower sync in a thread of its own.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from central.config import Settings

log = logging.getLogger(__name__)

TOKEN_ERRORS = frozenset({40001, 40014, 42001})  # invalid, malformed, expired access token
QUOTA_ERRORS = frozenset({45009, 45011})  # daily quota used up; too many calls this minute
TOKEN_MARGIN_SECONDS = 300  # renew this long before WeChat's expiry


class WeChatApiError(Exception):
    """A call to WeChat's server API did not succeed."""


class WeChatUnreachable(WeChatApiError):
    """No answer in WeChat's protocol: the network, an HTTP error, or a body that is not a JSON object."""


class WeChatError(WeChatApiError):
    """WeChat answered with an errcode other than 0."""

    def __init__(self, endpoint: str, errcode: int, errmsg: str):
        super().__init__(f"{endpoint}: errcode {errcode} {errmsg}".rstrip())
        self.endpoint = endpoint
        self.errcode = errcode
        self.errmsg = errmsg

    @property
    def quota(self) -> bool:
        return self.errcode in QUOTA_ERRORS


class WeChatBusy(WeChatApiError):
    """Central's own limit of calls per second would make the caller wait longer than it can."""

    def __init__(self, retry_after: float):
        super().__init__(f"too many calls to WeChat; retry in {retry_after:.1f} s")
        self.retry_after = retry_after


class RateLimiter:
    """At most `per_second` calls a second, `burst` at once (GCRA: each call books the next free slot)."""

    def __init__(
        self,
        per_second: float,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.interval = 1.0 / per_second
        self.tolerance = (max(1, burst) - 1) * self.interval
        self._clock = clock
        self._sleep = sleep
        self._due = float("-inf")  # the theoretical time of the next call
        self._lock = threading.Lock()

    def wait(self, max_wait: float | None = None) -> None:
        """Block until this call may go; WeChatBusy at once when that is more than `max_wait` seconds away."""
        with self._lock:
            now = self._clock()
            due = max(self._due, now)
            delay = max(0.0, due - self.tolerance - now)
            if max_wait is not None and delay > max_wait:
                raise WeChatBusy(delay)
            self._due = due + self.interval
        if delay > 0:
            self._sleep(delay)


class WeChatApi:
    """Calls of one app (`appid` with its AppSecret) to WeChat's server API at `base_url`."""

    def __init__(
        self,
        base_url: str,
        appid: str,
        secret: str,
        *,
        timeout: float = 10.0,
        limiter: RateLimiter | None = None,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.base_url = base_url.rstrip("/")
        self.appid = appid
        self._secret = secret
        self.limiter = limiter or RateLimiter(20.0, burst=5)
        self._http = http or httpx.Client(timeout=timeout, trust_env=False)
        self._own_http = http is None
        self._clock = clock
        self._token: tuple[str, float] | None = None  # (token, clock time to renew at)
        self._token_lock = threading.Lock()
        install_log_filter()

    def __repr__(self) -> str:  # never the secret
        return f"WeChatApi({self.base_url!r}, appid={self.appid!r})"

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    # -- calls --

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        with_token: bool = True,
        max_wait: float | None = None,
    ) -> dict[str, Any]:
        """One call; its answer when errcode is 0 (or absent). With `with_token` the app's access token is added,
        and fetched again once if WeChat refuses it."""
        endpoint = path.strip("/")
        used: str | None = None
        for attempt in (1, 2):
            query = dict(params or {})
            if with_token:
                used = self.access_token(stale=used, max_wait=max_wait)
                query["access_token"] = used
            self.limiter.wait(max_wait)
            answer = self._send(method, endpoint, query, json)
            errcode = _errcode(answer)
            if errcode == 0:
                return answer
            if with_token and errcode in TOKEN_ERRORS and attempt == 1:
                log.info("WeChat refused the access token of %s (errcode %s); fetching a new one", self.appid, errcode)
                continue
            raise WeChatError(endpoint, errcode, str(answer.get("errmsg", "")))
        raise AssertionError("unreachable")  # the loop returns or raises

    def jscode2session(self, js_code: str, max_wait: float | None = None) -> dict[str, Any]:
        """A mini program's login code -> openid, session_key and (when WeChat gives it) unionid."""
        params = {"appid": self.appid, "secret": self._secret, "js_code": js_code, "grant_type": "authorization_code"}
        return self.call("GET", "sns/jscode2session", params=params, with_token=False, max_wait=max_wait)

    def access_token(self, stale: str | None = None, max_wait: float | None = None) -> str:
        """The app's access token; a new one when there is none, it is due for renewal, or it is `stale` (refused)."""
        with self._token_lock:
            if self._token is not None:
                kept, renew_at = self._token
                if kept != stale and self._clock() < renew_at:
                    return kept
            self.limiter.wait(max_wait)
            answer = self._send(
                "POST",
                "cgi-bin/stable_token",
                {},
                {"grant_type": "client_credential", "appid": self.appid, "secret": self._secret},
            )
            errcode = _errcode(answer)
            token = answer.get("access_token")
            if errcode != 0 or not isinstance(token, str) or not token:
                raise WeChatError("cgi-bin/stable_token", errcode or -1, str(answer.get("errmsg", "no access_token")))
            expires_in = answer.get("expires_in", 7200)
            lifetime = expires_in if isinstance(expires_in, int) and expires_in > 0 else 7200
            self._token = (token, self._clock() + max(30, lifetime - TOKEN_MARGIN_SECONDS))
            return token

    def _send(self, method: str, endpoint: str, params: dict[str, str], body: dict[str, Any] | None) -> dict[str, Any]:
        url = f"{self.base_url}/{endpoint}"
        try:
            response = self._http.request(method, url, params=params, json=body)
        except httpx.HTTPError as exc:
            raise WeChatUnreachable(f"{endpoint}: WeChat unreachable ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise WeChatUnreachable(f"{endpoint}: WeChat answered HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            raise WeChatUnreachable(f"{endpoint}: WeChat answered something that is not JSON") from None
        if not isinstance(answer, dict):
            raise WeChatUnreachable(f"{endpoint}: WeChat answered JSON that is not an object")
        return answer


def _errcode(answer: dict[str, Any]) -> int:
    errcode = answer.get("errcode", 0)
    return errcode if isinstance(errcode, int) and not isinstance(errcode, bool) else -1


# --- logs -----------------------------------------------------------------------------------------------------

_SECRET_QUERY = re.compile(r"(?i)(?<![A-Za-z0-9_])(secret|access_token|js_code|code)=[^&\s\"']*")


def redact(text: str) -> str:
    """`…?appid=wx1&secret=abc&js_code=xyz` -> `…?appid=wx1&secret=***&js_code=***`."""
    return _SECRET_QUERY.sub(r"\1=***", text)


class _RedactQuery(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(str(a)) if isinstance(a, httpx.URL | str) else a for a in record.args)
        return True


_FILTER = _RedactQuery()


def install_log_filter() -> None:
    """Mask secrets in the request lines httpx logs (its logger, once)."""
    httpx_log = logging.getLogger("httpx")
    if _FILTER not in httpx_log.filters:
        httpx_log.addFilter(_FILTER)


def apis_from_settings(settings: Settings) -> dict[str, WeChatApi]:
    """A client per configured app: "miniprogram" and/or "official_account"."""
    apis = {}
    for role in ("miniprogram", "official_account"):
        appid, secret = getattr(settings, f"wechat_{role}_appid"), getattr(settings, f"wechat_{role}_secret")
        if appid and secret:
            rate = settings.wechat_api_calls_per_second
            apis[role] = WeChatApi(
                settings.wechat_api_base_url,
                appid,
                secret.get_secret_value(),
                timeout=settings.wechat_api_timeout_seconds,
                limiter=RateLimiter(rate, burst=max(1, int(rate))),
            )
    return apis
