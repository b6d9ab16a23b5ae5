"""The merchant's WeChat mini program: login, the UnionID from the user's data, joining with the phone number
(docs/WECHAT.md).

These routes are the mini program's, not the stores': they take no store token. Login answers a session token,
which the other two take as `Authorization: Bearer` (a separate auth path: a session token is no store's token and a
store's token opens no session). They are not in the stores' contract (`docs/openapi.json`): a merchant's own central
service need not have them. Handlers are blocking (run in worker threads): they call WeChat, then write.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field, StrictBool

from central import contract
from central.deps import EngineDep, Now, SettingsDep
from central.wechat import miniprogram
from central.wechat.api_client import WeChatApi, apis_from_settings
from central.wechat.miniprogram import MiniSession, NotConfigured, SessionInvalid

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """A WeChat client per configured app (the follower sync is a periodic job: central/background.py)."""
    apis = apis_from_settings(app.state.settings)
    app.state.wechat_apis = apis
    try:
        yield
    finally:
        app.state.wechat_apis = {}
        for api in apis.values():
            api.close()


router = APIRouter(prefix="/wechat/miniprogram", tags=["wechat"], include_in_schema=False, lifespan=lifespan)

_session_bearer = HTTPBearer(
    auto_error=False, scheme_name="MiniProgramSession", description="session_token from the mini program's login"
)


def miniprogram_api(request: Request) -> WeChatApi:
    api = getattr(request.app.state, "wechat_apis", {}).get("miniprogram")
    if api is None:
        raise NotConfigured(
            "no mini program is configured at this central service (wechat_miniprogram_appid, wechat_miniprogram_secret)"
        )
    return api


MiniProgramApi = Annotated[WeChatApi, Depends(miniprogram_api)]


def current_mini_session(
    engine: EngineDep,
    settings: SettingsDep,
    now: Now,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_session_bearer)],
) -> MiniSession:
    """The mini program session of the bearer token (never a store's token): 401 before anything else."""
    if credentials is None or not credentials.credentials:
        raise SessionInvalid("send the session token: Authorization: Bearer <session_token> from the login")
    appid = settings.wechat_miniprogram_appid or ""
    return miniprogram.current_session(engine, appid, credentials.credentials, now)


CurrentMiniSession = Annotated[MiniSession, Depends(current_mini_session)]


class LoginRequest(contract.WireModel):
    js_code: str = Field(min_length=1, max_length=128, description="the code of wx.login")


class LoginAnswer(contract.WireModel):
    session_token: str = Field(description="send as Authorization: Bearer to the other mini program routes")
    expires_at: datetime
    member: contract.MemberChange | None = Field(description="the member this WeChat user is, when central knows")
    has_unionid: bool = Field(description="whether central knows the user's UnionID (else send the user info)")


class UserInfoRequest(contract.WireModel):
    encrypted_data: str = Field(min_length=1, max_length=8192, description="encryptedData, base64")
    iv: str = Field(min_length=1, max_length=64, description="iv, base64")


class LinkAnswer(contract.WireModel):
    member: contract.MemberChange | None
    has_unionid: bool


class PhoneRequest(contract.WireModel):
    code: str = Field(min_length=1, max_length=128, description="the code of the getPhoneNumber button")
    consent: StrictBool = Field(description="the customer agreed to membership after reading the privacy notice")
    notice_version: str = Field(min_length=1, max_length=32, examples=["2026-11"], description="the notice they read")


class PhoneAnswer(contract.WireModel):
    member: contract.MemberChange
    created: bool
    welcome_points: int


@router.post("/login")
def login(body: LoginRequest, api: MiniProgramApi, engine: EngineDep, settings: SettingsDep, now: Now) -> LoginAnswer:
    """Exchange wx.login's code for a session of the mini program; the member this user is, if any."""
    result = miniprogram.login(engine, api, settings, body.js_code, now)
    return LoginAnswer(
        session_token=result.session_token,
        expires_at=result.expires_at,
        member=result.member,
        has_unionid=result.has_unionid,
    )


@router.post("/userinfo")
def userinfo(
    body: UserInfoRequest, mini: CurrentMiniSession, engine: EngineDep, settings: SettingsDep, now: Now
) -> LinkAnswer:
    """The user's encrypted data (wx.getUserInfo / getUserProfile): its UnionID is linked to the member."""
    linked = miniprogram.link_user_info(engine, settings, mini, body.encrypted_data, body.iv, now)
    return LinkAnswer(member=linked.member, has_unionid=linked.has_unionid)


@router.post("/phone", status_code=201)
def phone(
    body: PhoneRequest,
    response: Response,
    mini: CurrentMiniSession,
    api: MiniProgramApi,
    engine: EngineDep,
    settings: SettingsDep,
    now: Now,
) -> PhoneAnswer:
    """Join with the phone number of the getPhoneNumber button (a paid call at WeChat), with consent: 201 a new
    member, 200 one the customer already was."""
    joined = miniprogram.join_with_phone(engine, api, settings, mini, body.code, body.consent, body.notice_version, now)
    response.status_code = 201 if joined.created else 200
    return PhoneAnswer(member=joined.member, created=joined.created, welcome_points=joined.welcome_points)
