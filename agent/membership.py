"""The customer's own side of membership at a kiosk or till: joining with consent, and the wallet.

Joining is central's to do (it owns identity): offline it is refused whole, never half-done. The customer reads a
short privacy notice (its text and version are here, together, so a change of one is a change of the other) and
ticks consent; central records which version they agreed to and when. A payer identified by a payment code who is
not a member may join with that payment (支付即会员): central links the payer it recorded for the payment.

The wallet shows a member what they hold without opening a sale: masked name and phone, tier, points (with how many
are still provisional), coupons, and their last receipts at this station. It is reached by a typed phone or code
(`wallet()`), or by the next scan after the kiosk asks for one (`listen()`), answered as a `wallet` event.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from pydantic import BaseModel, Field

from agent import idempotency, pii
from agent.benefits import usable_now
from agent.central_client import CentralClient, CentralError, CentralNotReached, CentralRejected, CentralTimedOut
from agent.clock import SYSTEM_CLOCK, Clock
from agent.codes import CodeRules, Kind, classify
from agent.connectivity import Connectivity
from agent.errors import (
    AgentError,
    Conflict,
    ConsentRequired,
    InvalidPhone,
    InvalidRequest,
    MemberCodeRefused,
    NotFound,
    NoticeChanged,
    Offline,
    PayerNotIdentified,
    PhoneLookupOff,
    UnknownCode,
)
from agent.events import EventHub
from agent.identify import CentralNeeded, Identification, Identifier, MemberNotFound
from agent.journal import Journal
from agent.member_cache import MemberCache, PhoneLookupUnavailable
from agent.member_code import MemberCodeError
from agent.receipts import e_receipt_url
from agent.sale import HeldCoupon, Sale
from agent.screen_qr import qr_svg
from agent.settings import Settings
from agent.sync import to_cache_change
from central.contract import EnrolRequest

log = logging.getLogger(__name__)

NOTICE_VERSION = "2026-11"
OFFLINE_ZH = "网络中断，暂时无法办理入会，请稍后再试或到收银台办理"
LISTEN_S = 30.0  # how long the kiosk waits for the customer's scan after "show my membership"
RECEIPTS = 5  # the last receipts the wallet lists


class PrivacyNotice(BaseModel):
    version: str
    store_name: str
    zh: list[str] = Field(description="the notice in Chinese, one paragraph per item")
    en: list[str]


class WalletMember(BaseModel):
    """A member as the customer may see themselves on a shared screen: masked."""

    display_name: str
    phone_masked: str | None
    tier: str
    tier_name: str
    points: int
    points_pending: int = Field(description="of `points`, moved by this till's sales central has not confirmed yet")
    card_no: str | None = Field(description="the card number to keep as a QR, when the member has one")
    card_qr_svg: str | None = Field(description="that card number as a QR code, SVG markup for the screen")


class WalletReceipt(BaseModel):
    transaction_id: str
    receipt_no: str | None
    created_at: datetime
    total_fen: int
    points_earned: int
    e_receipt_url: str | None = Field(description="the page the receipt's QR opens; null when none can be made")


class Wallet(BaseModel):
    member: WalletMember
    coupons: list[HeldCoupon] = Field(description="usable now (offline: only those that work offline)")
    receipts: list[WalletReceipt] = Field(description="the member's last sales at this station, newest first")
    via: str = Field(description="how they were identified: member_code, card, phone or payment_code")


class Joined(BaseModel):
    created: bool = Field(description="false: the number was already a member's; nothing new was made")
    welcome_points: int
    wallet: Wallet
    message: str
    message_zh: str


class Membership:
    def __init__(
        self,
        settings: Settings,
        identifier: Identifier,
        members: MemberCache,
        journal: Journal,
        client: CentralClient,
        connectivity: Connectivity,
        events: EventHub,
        sale_of: Callable[[str], Sale | None],
        clock: Clock = SYSTEM_CLOCK,
    ):
        self.settings = settings
        self.identifier = identifier
        self.members = members
        self.journal = journal
        self.client = client
        self.connectivity = connectivity
        self.events = events
        self._sale_of = sale_of
        self.clock = clock
        self._rules: CodeRules = settings.codes.rules()
        self._listening_until: float | None = None  # monotonic: the wallet takes the next scan until then

    # --- the notice and joining ----------------------------------------------------------------------------

    def notice(self) -> PrivacyNotice:
        store = self.settings.store.name
        days = self.settings.storage.member_retention_days
        return PrivacyNotice(
            version=NOTICE_VERSION,
            store_name=store,
            zh=[
                f"{store}会员隐私说明（{NOTICE_VERSION} 版）",
                "我们保存：您的手机号（只保存加密后的号码和 138****5678 这样的掩码）、会员等级、积分和消费记录。",
                "用途：识别会员身份，计算会员价、优惠券和积分，提供电子小票。不用于其他目的，不提供给第三方。",
                f"保存多久：直到您注销会员；收银机上的会员信息在您最后一次到店 {days} 天后删除。",
                "如何删除：到收银台或联系门店申请注销，我们会删除您的个人信息。",
            ],
            en=[
                f"{store} membership privacy notice (version {NOTICE_VERSION})",
                "We keep your phone number (only as a keyed hash and a mask like 138****5678), your tier, points and "
                "purchases.",
                "Why: to recognise you, apply member prices, coupons and points, and give you e-receipts. Nothing "
                "else; never given to others.",
                f"How long: until you leave the scheme; the till deletes your details {days} days after your last "
                "visit.",
                "How to delete: ask at the till or contact the store to leave, and we delete your personal data.",
            ],
        )

    async def join(
        self, phone: str, consent: bool, notice_version: str, session_id: str | None = None
    ) -> tuple[Joined, bool]:
        """Enrol at central, or find the member the number already is; (the answer, created)."""
        if not consent:
            raise ConsentRequired(
                "the customer must read the privacy notice and tick consent", "请阅读隐私说明并勾选同意后再加入"
            )
        if notice_version != NOTICE_VERSION:
            raise NoticeChanged(
                f"the privacy notice is now version {NOTICE_VERSION}: show it again", "隐私说明已更新，请重新阅读"
            )
        try:
            pii.normalize_cn_mobile(phone)
        except pii.InvalidPhoneNumber as exc:
            raise InvalidPhone(str(exc), "请输入正确的手机号码") from None
        out_trade_no = self._paid_by_code(session_id) if session_id is not None else None
        if not await self.connectivity.online():
            raise Offline("joining needs central, which cannot be reached now", OFFLINE_ZH)
        request = EnrolRequest(phone=phone, consent=True, notice_version=NOTICE_VERSION, out_trade_no=out_trade_no)
        # The request's own key when it has one, so the POS's retry is the same enrolment at central too.
        taken = idempotency.CURRENT.get()
        key = f"join-{taken.key}" if taken is not None else f"join-{uuid.uuid4()}"
        try:
            result = await self.client.enrol(request, key)
        except (CentralNotReached, CentralTimedOut) as exc:
            raise Offline(f"joining could not reach central: {exc}", OFFLINE_ZH) from None
        except CentralRejected as exc:
            raise Conflict(f"central refused the enrolment: {exc}", "暂时无法加入，请到收银台办理") from None
        except CentralError as exc:
            raise Offline(f"central could not enrol now: {exc}", OFFLINE_ZH) from None
        await self.members.aapply([to_cache_change(result.member)])
        found = await self.identifier.phone(phone, confirmed=True)
        wallet = await self._wallet(found)
        if result.created:
            message, zh = "welcome: the customer is a member now", "欢迎加入会员！"
        else:
            message, zh = "this number is already a member's: nothing new was made", "该手机号已是会员"
        log.info("member joined" if result.created else "join found a member", extra={"via": "kiosk"})
        answer = Joined(
            created=result.created, welcome_points=result.welcome_points, wallet=wallet, message=message, message_zh=zh
        )
        return answer, result.created

    def _paid_by_code(self, session_id: str) -> str:
        sale = self._sale_of(session_id)
        if sale is None:
            raise NotFound(f"no session {session_id}")
        paid = [p for p in sale.payments if p.state == "SUCCESS" and not p.cancel_requested]
        if not paid or sale.member is not None:
            raise Conflict("only a sale paid by a payment code of a payer who is not a member joins with its payment")
        return paid[-1].out_trade_no

    # --- the wallet -------------------------------------------------------------------------------------------

    async def wallet(self, text: str | None = None, phone: str | None = None) -> Wallet:
        """The customer's wallet from a scanned or typed code, or a phone number they typed and confirmed."""
        return await self._wallet(await self._identify(text, phone))

    def listen(self) -> float:
        """The station's next member, card or payment code scan shows the wallet (event `wallet`) instead of opening
        a sale, for the next LISTEN_S seconds; the seconds."""
        self._listening_until = self.clock.monotonic() + LISTEN_S
        return LISTEN_S

    def claims(self, text: str) -> bool:
        """Checkout's question for a scan with no sale open: is it the wallet's?"""
        until = self._listening_until
        if until is None or self.clock.monotonic() > until:
            return False
        return classify(text, self._rules).kind in (Kind.MEMBER_CODE, Kind.CARD, Kind.PAYMENT)

    async def on_scan(self, text: str) -> None:
        self._listening_until = None
        try:
            wallet = await self.wallet(text=text)
        except AgentError as exc:
            self.events.publish("message", None, exc.message, message_zh=exc.message_zh, error=exc.code)
            return
        except Exception:  # a bug must not kill the scan path
            log.exception("wallet scan failed")
            return
        self.events.publish("wallet", None, "the customer's wallet", wallet=wallet.model_dump(mode="json"))

    async def _identify(self, text: str | None, phone: str | None) -> Identification:
        if (text is None) == (phone is None):
            raise InvalidRequest("send the scanned code or the phone number, one of the two")
        try:
            if phone is not None:
                return await self.identifier.phone(phone, confirmed=True)
            assert text is not None
            code = classify(text, self._rules)
            if code.kind is Kind.MEMBER_CODE:
                return await self.identifier.member_code(code.value)
            if code.kind is Kind.CARD:
                return await self.identifier.card(code.value)
            if code.kind is Kind.PAYMENT:
                found = await self.identifier.payment_code(code.value)
                if found.member is None:
                    raise NotFound("this payer is not a member", "您还不是会员，可以立即加入")
                return found
            raise UnknownCode("show your member code, member card or payment code", "请出示会员码、会员卡或付款码")
        except pii.InvalidPhoneNumber as exc:
            raise InvalidPhone(str(exc), "请输入正确的手机号码") from None
        except PhoneLookupUnavailable as exc:
            raise PhoneLookupOff(str(exc)) from exc
        except MemberNotFound as exc:
            raise NotFound(str(exc), "未找到会员，可以立即加入") from None
        except MemberCodeError as exc:
            raise MemberCodeRefused(f"member code refused: {exc}", "会员码无效或已使用，请刷新会员码") from None
        except CentralNeeded as exc:
            raise Offline(str(exc), "网络中断，请稍后再试") from None
        except CentralError as exc:
            raise PayerNotIdentified(f"could not ask central who the payer is: {exc}") from exc

    async def _wallet(self, found: Identification) -> Wallet:
        member = found.member
        assert member is not None, "a wallet is shown only for a member found"
        online = await self.connectivity.online()
        now = self.clock.now()
        coupons, sales, pending, card_no = await asyncio.gather(
            self.members.acoupons(member.id),
            self.journal.amember_sales(member.id, RECEIPTS),
            self.journal.aunconfirmed_points(member.id),
            self.members.acard_no(member.id),
        )
        return Wallet(
            member=WalletMember(
                display_name=member.display_name,
                phone_masked=member.phone_masked,
                tier=member.tier,
                tier_name=self.settings.points.tier_name(member.tier),
                # The cache holds central's confirmed balance; this till's sales not confirmed yet come on top.
                points=member.points + pending,
                points_pending=pending,
                card_no=card_no,
                card_qr_svg=None if card_no is None else qr_svg(card_no),
            ),
            coupons=[HeldCoupon.of(c) for c in coupons if usable_now(c, now, online)],
            receipts=[
                WalletReceipt(
                    transaction_id=r.id,
                    receipt_no=r.receipt_no,
                    created_at=r.created_at,
                    total_fen=r.total_fen,
                    points_earned=r.points_earned,
                    e_receipt_url=e_receipt_url(
                        self.settings.e_receipt_template, r.id, self.settings.privacy.key_bytes()
                    ),
                )
                for r in sales
            ],
            via=found.via,
        )
