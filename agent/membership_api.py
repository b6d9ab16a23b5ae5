"""The membership part of the local API (docs/checkout.md, "Joining and the wallet"): the privacy notice, joining
with consent, and the customer's wallet."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from agent.deps import TOKEN_REQUIRED, V1_ERRORS, StateDep
from agent.errors import (
    Conflict,
    ConsentRequired,
    InvalidPhone,
    MemberCodeRefused,
    NotFound,
    NoticeChanged,
    Offline,
    PhoneLookupOff,
    Unavailable,
    UnknownCode,
    error_responses,
)
from agent.membership import Joined, Membership, PrivacyNotice, Wallet

router = APIRouter(prefix="/v1", tags=["membership"], dependencies=TOKEN_REQUIRED, responses=V1_ERRORS)


def get_membership(state: StateDep) -> Membership:
    if state.membership is None:
        raise Unavailable("membership is not open yet: retry shortly")
    return state.membership


MembershipDep = Annotated[Membership, Depends(get_membership)]


class JoinIn(BaseModel):
    phone: str = Field(min_length=1, max_length=32, examples=["13812345678"])
    consent: bool = Field(description="the customer ticked consent to the privacy notice (unticked by default)")
    notice_version: str = Field(max_length=32, description="the notice version shown, from GET /v1/members/notice")
    session_id: str | None = Field(
        None, description="join as the payer of this session's code payment (支付即会员): their openid is linked"
    )


class WalletIn(BaseModel):
    text: str | None = Field(None, min_length=1, max_length=4096, description="a member code, card or payment code")
    phone: str | None = Field(None, min_length=1, max_length=32, description="a phone number the customer confirmed")


class Listening(BaseModel):
    listening_s: float = Field(description="the station's next member, card or payment code scan is the wallet's")


@router.get("/members/notice")
async def privacy_notice(membership: MembershipDep) -> PrivacyNotice:
    """The privacy notice a customer reads before joining, with its version."""
    return membership.notice()


@router.post(
    "/members",
    status_code=201,
    responses={
        200: {"model": Joined, "description": "the number was already a member's: their wallet, nothing new made"},
        **error_responses(ConsentRequired, NoticeChanged, InvalidPhone, NotFound, Conflict, Offline),
    },
)
async def join(body: JoinIn, response: Response, membership: MembershipDep) -> Joined:
    """Join with consent: central enrols the customer (201), or answers the member the number is (200)."""
    joined, created = await membership.join(body.phone, body.consent, body.notice_version, body.session_id)
    response.status_code = 201 if created else 200
    return joined


class WalletFound(BaseModel):
    found: bool = Field(description="false: no member holds this code or number (they may join); not an error")
    wallet: Wallet | None
    message: str | None = None
    message_zh: str | None = None


@router.post(
    "/wallet", responses=error_responses(InvalidPhone, UnknownCode, MemberCodeRefused, PhoneLookupOff, Offline)
)
async def wallet(body: WalletIn, membership: MembershipDep) -> WalletFound:
    """The customer's wallet, without opening a sale: points, coupons, last receipts (masked). Nobody found is an
    answer, not an error (`found` false): a kiosk asks this for numbers that may be no member's yet."""
    try:
        return WalletFound(found=True, wallet=await membership.wallet(body.text, body.phone))
    except NotFound as exc:
        return WalletFound(found=False, wallet=None, message=exc.message, message_zh=exc.message_zh)


@router.post("/wallet/listen")
async def listen(membership: MembershipDep) -> Listening:
    """The next member, card or payment code scan at this station (with no sale open) shows the wallet: an event
    `wallet` on GET /v1/events, or `message` when the code finds nobody."""
    return Listening(listening_s=membership.listen())
