"""The mini program's side of identity: login, the UnionID from the user's data, and joining with the phone number.

**Login.** The mini program sends the code of `wx.login`; central exchanges it (`sns/jscode2session`) for the
user's openid of this app, their UnionID when WeChat gives it (the app is bound to an Open Platform account), and
the session key. The session key stays here: it decrypts the user's data, so it is never answered and never
logged. The mini program gets a session token instead (random, 256 bits, kept as SHA-256 only, valid
`wechat_session_ttl_seconds`), to send as `Authorization: Bearer`. A new login ends the user's earlier sessions:
WeChat has issued a new session key, and data sealed with the old one no longer comes.

The login links what it learnt to the member who already holds the openid or the UnionID (`identity.link_openid`:
attach, or merge two members found to share the UnionID); it creates no member.

**User data.** `encryptedData` + `iv` from the mini program are decrypted with the session key (`opendata`); the
watermark must name this app and be recent; the UnionID found there is linked as at login.

**Phone quick-fill.** The code of the getPhoneNumber button is exchanged (`wxa/business/getuserphonenumber`, with
the session's openid, so WeChat checks the code is this user's) for the number, which joins the customer
(`identity.join`: consent recorded with its notice version, welcome points, a card number), linked to the
session's openid and UnionID. Each successful exchange is billed by WeChat (since 2023-08-28): the same code sent
again in the same session answers the member without a second exchange, and no exchange happens without consent.
When the quota is used up WeChat answers errcode 1400001: `phone_quota_exhausted` (503), logged as a warning.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from central import contract, feed, identity
from central.config import Settings
from central.db import read_session, write_session
from central.errors import CentralError, Conflict, Forbidden, Invalid, NotFound, Unauthorized
from central.models import WechatSession
from central.wechat import links, opendata
from central.wechat.api_client import WeChatApi, WeChatApiError, WeChatBusy, WeChatError, WeChatUnreachable

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 2.0  # a request of the mini program waits at most this long for central's WeChat rate limit
PHONE_QUOTA_EXHAUSTED = 1400001
CODE_ERRORS = frozenset({40029, 40163})  # invalid or expired code; code already used


class NotConfigured(NotFound):
    code = "not_configured"


class SessionInvalid(Unauthorized):
    code = "session_invalid"


class WeChatUnavailable(CentralError):
    status = 502
    code = "wechat_unavailable"


class WeChatLimited(CentralError):
    status = 503
    code = "wechat_busy"


class PhoneQuotaExhausted(CentralError):
    status = 503
    code = "phone_quota_exhausted"


@dataclass(frozen=True)
class MiniSession:
    """A session as the routes see it; the session key is left out of its repr, so it cannot reach a log."""

    id: int
    appid: str
    openid: str
    unionid: str | None
    member_id: str | None
    phone_code_hash: str | None
    expires_at: datetime
    session_key: str = field(repr=False)


@dataclass(frozen=True)
class LoginResult:
    session_token: str = field(repr=False)
    expires_at: datetime
    member: contract.MemberChange | None
    has_unionid: bool


@dataclass(frozen=True)
class Linked:
    member: contract.MemberChange | None
    has_unionid: bool


@dataclass(frozen=True)
class PhoneJoined:
    member: contract.MemberChange
    created: bool
    welcome_points: int


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def wechat_failure(exc: WeChatApiError, what: str) -> CentralError:
    """The error a client of central gets for a failed call to WeChat."""
    if isinstance(exc, WeChatBusy):
        return WeChatLimited(f"too many requests to WeChat right now; retry in {exc.retry_after:.0f} s")
    if isinstance(exc, WeChatUnreachable):
        return WeChatUnavailable(f"WeChat could not be asked ({exc}); retry shortly")
    assert isinstance(exc, WeChatError)
    if exc.quota or exc.errcode == -1:
        return WeChatLimited(f"WeChat is busy or its call limit is reached (errcode {exc.errcode}); retry later")
    if exc.errcode in CODE_ERRORS:
        return Invalid(
            f"WeChat refused the {what} (invalid, expired or already used): get a new one", code="invalid_code"
        )
    if exc.errcode == 40226:
        return Forbidden("WeChat refuses this user's login (high-risk account)", code="login_refused")
    return WeChatUnavailable(f"WeChat refused the call: errcode {exc.errcode} {exc.errmsg}".rstrip())


# --- login ----------------------------------------------------------------------------------------------------


def login(engine: sa.Engine, api: WeChatApi, settings: Settings, js_code: str, now: datetime) -> LoginResult:
    try:
        answer = api.jscode2session(js_code, max_wait=MAX_WAIT_SECONDS)
    except WeChatApiError as exc:
        raise wechat_failure(exc, "login code (call wx.login again)") from None
    openid, session_key = answer.get("openid"), answer.get("session_key")
    unionid = _wechat_id(answer.get("unionid"))
    if _wechat_id(openid) is None or not _is_session_key(session_key):
        raise WeChatUnavailable("WeChat's login answer has no openid or session key; retry shortly")
    assert isinstance(openid, str) and isinstance(session_key, str)
    token = secrets.token_urlsafe(32)
    expires_at = now + timedelta(seconds=settings.wechat_session_ttl_seconds)
    with write_session(engine) as session:
        feed.lock(session)
        member_id = links.link(session, api.appid, openid, unionid, now)
        unionid = unionid or links.unionid_of(session, member_id)
        table = WechatSession.__table__
        # WeChat has issued a new session key: data sealed with the old one no longer comes. Expired sessions go too.
        session.execute(
            sa.delete(table).where(
                sa.or_(sa.and_(table.c.appid == api.appid, table.c.openid == openid), table.c.expires_at <= now)
            )
        )
        session.add(
            WechatSession(
                token_hash=token_hash(token),
                appid=api.appid,
                openid=openid,
                unionid=unionid,
                session_key=session_key,
                member_id=member_id,
                created_at=now,
                expires_at=expires_at,
            )
        )
        member = _answer(session, member_id, now)
        session.commit()
    return LoginResult(token, expires_at, member, unionid is not None)


def current_session(engine: sa.Engine, appid: str, token: str, now: datetime) -> MiniSession:
    """The live session of this token; SessionInvalid otherwise."""
    table = WechatSession.__table__
    with read_session(engine) as session:
        row = session.execute(sa.select(table).where(table.c.token_hash == token_hash(token))).first()
    if row is None or row.appid != appid or row.expires_at <= now:
        raise SessionInvalid("the session is unknown or has expired: log in again (POST /v1/wechat/miniprogram/login)")
    return MiniSession(
        id=row.id,
        appid=row.appid,
        openid=row.openid,
        unionid=row.unionid,
        member_id=row.member_id,
        phone_code_hash=row.phone_code_hash,
        expires_at=row.expires_at,
        session_key=row.session_key,
    )


# --- user data ------------------------------------------------------------------------------------------------


def link_user_info(
    engine: sa.Engine, settings: Settings, mini: MiniSession, encrypted_data: str, iv: str, now: datetime
) -> Linked:
    """Decrypt the user's data with the session key, check its watermark, and link the UnionID it holds."""
    data = opendata.decrypt(mini.session_key, encrypted_data, iv)
    opendata.check_watermark(data, mini.appid, now, settings.wechat_watermark_max_age_seconds)
    if "openId" in data and data["openId"] != mini.openid:
        raise Invalid("the data is another user's (openId is not this session's)", code="openid_mismatch")
    unionid = _wechat_id(data.get("unionId"))
    if unionid is not None and mini.unionid is not None and unionid != mini.unionid:
        raise Conflict("the data names another UnionID than this session's", code="unionid_mismatch")
    with write_session(engine) as session:
        feed.lock(session)
        member_id = links.link(session, mini.appid, mini.openid, unionid, now)
        unionid = unionid or mini.unionid or links.unionid_of(session, member_id)
        table = WechatSession.__table__
        session.execute(sa.update(table).where(table.c.id == mini.id).values(unionid=unionid, member_id=member_id))
        member = _answer(session, member_id, now)
        session.commit()
    return Linked(member, unionid is not None)


# --- phone quick-fill -----------------------------------------------------------------------------------------


def join_with_phone(
    engine: sa.Engine,
    api: WeChatApi,
    settings: Settings,
    mini: MiniSession,
    code: str,
    consent: bool,
    notice_version: str,
    now: datetime,
) -> PhoneJoined:
    """Exchange the getPhoneNumber code for the number and join the customer with it, with their consent."""
    if not consent:  # before the exchange: WeChat bills it
        raise Invalid(
            "the customer must consent to membership (consent: true) after reading the privacy notice",
            code="consent_required",
        )
    code_hash = token_hash(code)
    if mini.phone_code_hash == code_hash and mini.member_id is not None:
        with read_session(engine) as session:
            live = identity.resolve(session, mini.member_id)
            found = feed.snapshot(session, live.id, now) if live else None
        if found is not None:
            return PhoneJoined(found, False, 0)  # this code was exchanged already: WeChat bills every exchange
    try:
        answer = api.call(
            "POST",
            "wxa/business/getuserphonenumber",
            json={"code": code, "openid": mini.openid},
            max_wait=MAX_WAIT_SECONDS,
        )
    except WeChatError as exc:
        if exc.errcode == PHONE_QUOTA_EXHAUSTED:
            log.warning(
                "mini program %s: WeChat's phone number quota is used up (errcode 1400001); customers cannot join "
                "with quick-fill until the merchant tops it up in the mini program's admin (微信公众平台)",
                mini.appid,
            )
            raise PhoneQuotaExhausted(
                "the mini program's phone number quick-fill quota is used up (WeChat errcode 1400001): the customer "
                "can join by typing their number at a till or kiosk; the merchant tops the quota up in WeChat"
            ) from None
        raise wechat_failure(exc, "phone number code (tap the button again)") from None
    except WeChatApiError as exc:
        raise wechat_failure(exc, "phone number code") from None
    phone = _phone_of(answer, mini.appid)
    request = contract.EnrolRequest(
        phone=phone,
        consent=True,
        notice_version=notice_version,
        unionid=mini.unionid,
        openid=contract.OpenId(appid=mini.appid, openid=mini.openid),
    )
    with write_session(engine) as session:
        feed.lock(session)
        joined = identity.join(
            session, request, settings.key_bytes(), now, None, settings.welcome_points, settings.card_no_prefix
        )
        table = WechatSession.__table__
        session.execute(
            sa.update(table).where(table.c.id == mini.id).values(member_id=joined.member_id, phone_code_hash=code_hash)
        )
        member = _answer(session, joined.member_id, now)
        session.commit()
    assert member is not None
    return PhoneJoined(member, joined.created, joined.welcome_points)


def _phone_of(answer: dict[str, Any], appid: str) -> str:
    info = answer.get("phone_info")
    if not isinstance(info, dict) or not isinstance(info.get("purePhoneNumber"), str):
        raise WeChatUnavailable("WeChat's answer holds no phone number; retry shortly")
    watermark = info.get("watermark")
    if isinstance(watermark, dict) and watermark.get("appid") not in (None, appid):
        raise WeChatUnavailable("WeChat's answer is for another app (watermark.appid); check the mini program's appid")
    if str(info.get("countryCode", "86")) != "86":
        raise Invalid(
            "only mainland China mobile numbers can join here; the customer can join at a store",
            code="phone_not_supported",
        )
    return info["purePhoneNumber"]


# --- shared ---------------------------------------------------------------------------------------------------


def _answer(session: Session, member_id: str | None, now: datetime) -> contract.MemberChange | None:
    feed.assign_versions(session, now)  # the answer shows the member as committed
    return feed.snapshot(session, member_id, now) if member_id else None


def _wechat_id(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


def _is_session_key(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return len(base64.b64decode(value.encode("ascii"), validate=True)) == opendata.BLOCK
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False
