"""The till's checkout: one open sale per station, driven by scans and the local API.

A step runs under the station's lock, changes the sale, saves it to `open_sale` and tells the screens (events).
The order that keeps money safe:

- a code payment's `out_trade_no` is saved before the charge is sent, so after a crash the till asks central how
  it ended instead of guessing (`recover`);
- the sale is journaled with its outbox row before any screen hears "paid" and before the receipt is queued;
- a payment whose answer did not come is followed in the background until central says how it ended; it is
  never charged again and never forgotten.

Pay-as-member: a payment code scanned with a basket set first asks central who the payer is, applies their tier
price, then charges the same code for the new amount — one scan does both. Points cannot be spent on that
identification alone (WeChat's rule): a member code or a confirmed phone number can.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from agent import pii
from agent.benefits import (
    BadBasket,
    CouponNotUsable,
    Redemption,
    RedemptionRefused,
    Tier,
    check_coupon,
    max_redeemable,
    price,
)
from agent.central_client import CentralClient, CentralError, CentralNotReached, CentralRejected
from agent.clock import SYSTEM_CLOCK, Clock, business_day, to_storage, utcnow
from agent.codes import Classification, CodeRules, Kind, classify
from agent.connectivity import Connectivity
from agent.db import reader
from agent.disk_space import DiskSpace
from agent.errors import (
    AgentError,
    BasketMissing,
    BasketRefused,
    CouponRefused,
    DiskFull,
    InvalidPhone,
    MemberCodeRefused,
    NoPaymentInProgress,
    NotFound,
    NothingLeftToPay,
    Offline,
    PayerNotIdentified,
    PaymentFailed,
    PaymentInProgress,
    PaymentStarted,
    PhoneLookupOff,
    ProductNotInCatalogue,
    ProviderNotEnabled,
    RedemptionNotAllowed,
    SaleClosed,
    SaleOpen,
    TenderNotTaken,
    UnknownCode,
)
from agent.events import EventHub
from agent.identify import CentralNeeded, Identification, Identifier, MemberNotFound
from agent.ids import uuid7
from agent.journal import Journal, JournalEntry, JournalRecord
from agent.journal_bodies import sale_body, void_body
from agent.member_cache import CachedCoupon, MemberCache, PhoneLookupUnavailable
from agent.member_code import MemberCodeError
from agent.receipt_printing import ReceiptPrinting
from agent.sale import (
    FINAL_PAYMENT_STATES,
    CodePayment,
    PaymentState,
    PricingView,
    Sale,
    SaleCoupon,
    SaleLine,
    SaleMember,
    Tender,
    TenderRefused,
    new_tender,
)
from agent.settings import Settings
from central.contract import Payment, PaymentProvider, PaymentRequest, PaymentVoid
from drivers.backoff import Backoff

if TYPE_CHECKING:
    from agent.metrics import AgentMetrics

log = logging.getLogger(__name__)

# How long one long-poll for a code payment's state may wait at central.
PAYMENT_WAIT_S = 5.0
# Between attempts to reach central about a payment whose outcome is unknown: steady, a customer may be waiting
# (a cap above `first` would make it back off).
RESOLVE_RETRY = Backoff(first=3.0, cap=3.0, jitter=0)
# Closed sales kept in memory for `GET /v1/sessions/{id}` after they end.
KEEP_CLOSED = 20

OFFLINE_ZH = "网络中断，暂时无法使用微信或支付宝付款，请使用现金或银行卡"
OFFLINE_EN = "the network is down: code payment is not possible now; please pay in cash or by card"


class Checkout:
    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        members: MemberCache,
        journal: Journal,
        identifier: Identifier,
        connectivity: Connectivity,
        client: CentralClient,
        events: EventHub,
        receipts: ReceiptPrinting | None = None,
        push_soon: Callable[[], None] | None = None,
        disk: DiskSpace | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ):
        self.settings = settings
        self.engine = engine
        self.members = members
        self.journal = journal
        self.identifier = identifier
        self.connectivity = connectivity
        self.client = client
        self.events = events
        self._receipts = receipts
        self._push_soon = push_soon or (lambda: None)
        self._disk = disk
        # The sale's time rules (a code payment's limit, the follower's waits) read this clock; the receipt's
        # business day reads the wall clock, as the journal that counts it does.
        self.clock = clock
        self.rules: CodeRules = settings.codes.rules()
        self.station_id = settings.station.id
        self.current: Sale | None = None
        self._closed: OrderedDict[str, Sale] = OrderedDict()
        self._lock = asyncio.Lock()
        self._followers: dict[str, asyncio.Task] = {}
        # Code payments' requests, held in memory (never on disk: they carry the auth code) while their outcome is
        # open, so one central has not seen can be sent again under its own number.
        self._requests: dict[str, PaymentRequest] = {}
        self._catalog = {item.gtin: item for item in settings.checkout.catalog}
        self.metrics: AgentMetrics | None = None  # counts sales and code payments (agent/metrics.py)

    # --- sessions ------------------------------------------------------------------------------------------

    async def open(self) -> Sale:
        async with self._lock:
            return await self._open()

    async def look(self, sale_id: str) -> Sale:
        """The sale as a screen asks for it: an open sale's online flag is brought up to date (the network may
        have come back since its last step), from the till's cached view of central."""
        sale = self.get(sale_id)
        if sale.is_open:
            sale.online = await self.connectivity.online()
        return sale

    def get(self, sale_id: str) -> Sale:
        if self.current is not None and self.current.id == sale_id:
            return self.current
        if sale_id in self._closed:
            return self._closed[sale_id]
        raise NotFound(f"no session {sale_id} at this station")

    async def code(self, sale_id: str | None, text: str) -> Sale:
        """A scanned or typed code. `sale_id` None: the station's open sale, opening one if needed."""
        classification = classify(text, self.rules)
        async with self._lock:
            sale = await self._sale_for_code(sale_id, classification)
            self._publish("scan", sale, None, code=classification.to_public())
            if classification.kind is Kind.PAYMENT:  # a payment's record is kept even when it fails
                return await self._apply_code(sale, classification)
            with self._all_or_nothing(sale):
                return await self._apply_code(sale, classification)

    async def phone(self, sale_id: str, phone: str, confirmed: bool) -> Sale:
        async with self._lock:
            sale = self._open_sale(sale_id)
            self._no_money_yet(sale, "change the member")
            try:
                found = await self.identifier.phone(phone, confirmed=confirmed)
            except pii.InvalidPhoneNumber as exc:
                raise InvalidPhone(f"{exc}", "请输入正确的手机号码") from None
            except PhoneLookupUnavailable as exc:
                raise PhoneLookupOff(str(exc)) from exc
            except MemberNotFound as exc:
                raise NotFound(str(exc), "未找到该手机号的会员") from None
            with self._all_or_nothing(sale):
                return await self._identified(sale, found)

    async def set_basket(self, sale_id: str, lines: list[SaleLine]) -> Sale:
        async with self._lock:
            sale = self._open_sale(sale_id)
            self._no_money_yet(sale, "change the basket")
            try:
                for line in lines:
                    line.basket_line()  # validates quantity and price
            except BadBasket as exc:
                raise BasketRefused(str(exc)) from None
            if not lines:
                raise BasketRefused("the basket is empty")
            with self._all_or_nothing(sale):
                sale.lines = [line.model_copy() for line in lines]
                await self._reprice(sale)
            sale.state = "basket"
            sale.message = f"{len(lines)} line(s), amount due ¥{sale.amount_due_fen / 100:.2f}"
            return await self._changed(sale, "basket")

    async def set_redemption(self, sale_id: str, points: int) -> Sale:
        async with self._lock:
            sale = self._open_sale(sale_id)
            self._no_money_yet(sale, "change the points to spend")
            if points and sale.member is None:
                raise RedemptionNotAllowed("identify the member before spending points")
            if points and sale.member is not None and not sale.member.may_redeem:
                raise RedemptionNotAllowed(
                    "points can be spent only by a member identified by member code or confirmed phone: ask for the member code",
                    "使用积分请出示会员码",
                )
            with self._all_or_nothing(sale):
                sale.redeem_points = points
                await self._reprice(sale)
            sale.message = f"{points} points to spend" if points else "no points spent"
            return await self._changed(sale, "basket")

    async def remove_coupon(self, sale_id: str, code: str) -> Sale:
        async with self._lock:
            sale = self._open_sale(sale_id)
            self._no_money_yet(sale, "take a coupon off")
            if not any(c.code == code for c in sale.coupons):
                raise NotFound(f"coupon {code} is not on this sale")
            with self._all_or_nothing(sale):
                sale.coupons = [c for c in sale.coupons if c.code != code]
                await self._reprice(sale)
            sale.message = f"coupon {code} taken off"
            return await self._changed(sale, "basket")

    async def tender(
        self,
        sale_id: str,
        kind: str,
        amount_fen: int | None = None,
        tendered_fen: int | None = None,
        reference: str | None = None,
        auth_code: str | None = None,
    ) -> Sale:
        async with self._lock:
            sale = self._open_sale(sale_id)
            if kind == "code":
                if not auth_code:
                    raise UnknownCode("a code tender needs the auth_code scanned from the customer's phone")
                classification = classify(auth_code, self.rules)
                if classification.kind is not Kind.PAYMENT:
                    raise UnknownCode("this is not a payment code: ask the customer to show the payment code (付款码)")
                return await self._code_payment(sale, classification)
            return await self._other_tender(sale, kind, amount_fen, tendered_fen, reference)

    async def cancel_payment(self, sale_id: str) -> Sale:
        """Give up the code payment in progress: central reverses it (the customer is not charged)."""
        async with self._lock:
            sale = self._open_sale(sale_id)
            waiting = [p for p in sale.unsettled_payments if not p.cancel_requested]
            if not waiting:
                raise NoPaymentInProgress("no code payment is in progress")
            for payment in waiting:
                await self._give_up(sale, payment)
            sale.message = "code payment cancelled: being reversed"
            return await self._changed(sale, "payment")

    async def cancel(self, sale_id: str) -> Sale:
        """Cancel the sale. Code payments taken are reversed; if money moved, a void is journaled."""
        async with self._lock:
            sale = self._open_sale(sale_id)
            void = self._void_entry(sale) if sale.tenders else None  # what was taken, before it is given back
            for payment in sale.payments:
                if payment.state not in ("REVERSED", "FAILED") and not payment.cancel_requested:
                    await self._give_up(sale, payment)
            if void is not None:
                await asyncio.to_thread(self.journal.append, void)
            sale.state = "cancelled"
            sale.message = "sale cancelled" + (": money taken is given back" if void else "")
            await self._finish(sale)
            self._publish("cancelled", sale, sale.message)
            return sale

    # --- scans from the station's devices ------------------------------------------------------------------

    def on_scan(self, scan) -> None:
        """ScanRouter subscriber: a scan from one of this station's devices, handled on the loop."""
        asyncio.get_running_loop().create_task(self._scan(scan.scan.text))

    async def _scan(self, text: str) -> None:
        try:
            await self.code(None, text)
        except AgentError as exc:
            sale = self.current
            self._publish("message", sale, exc.message, message_zh=exc.message_zh, error=exc.code)
        except Exception:  # a bug must not kill the scan path
            log.exception("scan handling failed")

    def on_printed_threadsafe(self, loop: asyncio.AbstractEventLoop) -> Callable[[str], None]:
        """A print-queue hook: tell the screens when a receipt has printed (job ids are `<transaction>-<purpose>`)."""

        def printed(job_id: str) -> None:
            for purpose in ("-receipt", "-refund", "-reprint"):
                if purpose in job_id:
                    loop.call_soon_threadsafe(self._printed, job_id.split(purpose)[0], purpose[1:], job_id)

        return printed

    def _printed(self, transaction_id: str, purpose: str, job_id: str) -> None:
        sale = self._closed.get(transaction_id)
        self.events.publish(
            "printed",
            sale.id if sale else None,
            f"{purpose} printed",
            session=sale.view() if sale else None,
            transaction_id=transaction_id,
            job_id=job_id,
        )

    # --- recovery ------------------------------------------------------------------------------------------

    async def recover(self) -> None:
        """After a start: finish or reopen the sale that was open when the agent stopped, asking central how its
        code payments ended."""
        rows = await asyncio.to_thread(self._load_open)
        for body in rows:
            sale = Sale.model_validate_json(body)
            journaled = await asyncio.to_thread(self.journal.get, sale.id)
            if journaled is not None:
                if journaled.kind == "void" and sale.unsettled_payments:
                    sale.state = "cancelled"  # cancelled just before the stop, a payment of it still being given up
                else:
                    await asyncio.to_thread(self._delete_open, sale.id)  # journaled just before the stop
                    continue
            if not sale.is_open:  # cancelled, with a payment still being given up: finish that, in the background
                self._closed[sale.id] = sale
            else:
                if self.current is not None:
                    log.warning("more than one open sale found; keeping the newest", extra={"sale": sale.id})
                self.current = sale
                sale.message = "sale restored after a restart"
            for payment in sale.unsettled_payments:
                if payment.state == "sending":  # it may have left: only central's word, or a void, settles it
                    payment.state = "UNKNOWN"
                payment.message = "checking how this payment ended"
                self._follow(sale, payment)
            log.info(
                "sale restored", extra={"sale": sale.id, "state": sale.state, "payments": len(sale.unsettled_payments)}
            )
            await self._save(sale)
            if sale.is_open and sale.tenders and not sale.unsettled_payments and sale.remaining_fen == 0:
                await self._complete(sale)  # paid in full when the agent stopped, but not journaled yet
            elif sale.is_open:
                self._publish("opened", sale, sale.message)

    async def close(self) -> None:
        for task in list(self._followers.values()):
            task.cancel()
        await asyncio.gather(*self._followers.values(), return_exceptions=True)

    # --- steps ---------------------------------------------------------------------------------------------

    async def _open(self) -> Sale:
        if self.current is not None and self.current.is_open:
            raise SaleOpen(
                f"a sale is already open at station {self.station_id}: finish or cancel it first",
                session_id=self.current.id,
            )
        if self._disk is not None and not (space := self._disk.check()).ok:
            # Refused while a day's sales still fit, so no paid sale ever meets a full disk on its way to the journal.
            raise DiskFull(space.message, space.message_zh)
        sale = Sale(
            id=str(uuid7()), station_id=self.station_id, created_at=utcnow(), online=await self.connectivity.online()
        )
        self.current = sale
        sale.message = "sale opened" + ("" if sale.online else " (offline: cash and card only)")
        await self._save(sale)
        self._publish("opened", sale, sale.message)
        return sale

    async def _sale_for_code(self, sale_id: str | None, code: Classification) -> Sale:
        if sale_id is not None:
            return self._open_sale(sale_id)
        if self.current is not None and self.current.is_open:
            return self.current
        if code.kind is Kind.UNKNOWN:
            raise UnknownCode(
                f"unknown code {code.display_value!r}: not a member, payment, card, coupon or product code",
                "无法识别的码",
            )
        return await self._open()

    async def _apply_code(self, sale: Sale, code: Classification) -> Sale:
        kind = code.kind
        if kind is Kind.UNKNOWN:
            raise UnknownCode(
                f"unknown code {code.display_value!r}: not a member, payment, card, coupon or product code",
                "无法识别的码",
            )
        if kind is Kind.PAYMENT:
            if sale.pricing is None:
                return await self._identify_payer(sale, code)
            return await self._code_payment(sale, code)
        if kind is Kind.MEMBER_CODE:
            self._no_money_yet(sale, "change the member")
            try:
                found = await self.identifier.member_code(code.value)
            except MemberCodeError as exc:
                raise MemberCodeRefused(f"member code refused: {exc}", "会员码无效或已使用，请刷新会员码") from None
            except MemberNotFound as exc:
                raise NotFound(str(exc), "未找到会员") from None
            return await self._identified(sale, found)
        if kind is Kind.CARD:
            self._no_money_yet(sale, "change the member")
            try:
                found = await self.identifier.card(code.value)
            except MemberNotFound as exc:
                raise NotFound(str(exc), "未找到该会员卡") from None
            return await self._identified(sale, found)
        if kind is Kind.COUPON:
            return await self._add_coupon(sale, code.value)
        if kind is Kind.GUIDE:
            sale.guide_id = code.value
            sale.message = f"sale attributed to guide {code.value}"
            return await self._changed(sale, "message")
        if kind is Kind.PRODUCT:
            return await self._add_product(sale, code.value)
        raise UnknownCode(f"{kind.value} codes are not used at checkout")

    async def _identified(self, sale: Sale, found: Identification, save: bool = True) -> Sale:
        member = found.member
        if member is None:
            sale.message = "the payer is not a member yet"
            return await self._changed(sale, "member")
        again = sale.member if sale.member is not None and sale.member.id == member.id else None
        same = again is not None
        may_redeem = found.may_redeem or (again is not None and again.may_redeem)
        if not (same and may_redeem):
            sale.redeem_points = 0
        sale.member = SaleMember(
            id=member.id,
            display_name=member.display_name,
            tier=member.tier,
            points=member.points,
            phone_masked=member.phone_masked,
            via=found.via,
            may_redeem=may_redeem,
        )
        # Coupons of another member leave with the member they belonged to (their owners read off the loop).
        if sale.coupons:
            codes = [c.code for c in sale.coupons]
            owners = await asyncio.to_thread(lambda: {code: self._coupon_owner(code) for code in codes})
            sale.coupons = [c for c in sale.coupons if owners[c.code] in (None, member.id)]
        if sale.state == "idle":
            sale.state = "member"
        if sale.lines:
            await self._reprice(sale)
        via = {"member_code": "member code", "card": "card", "phone": "phone number", "payment_code": "payment code"}[
            found.via
        ]
        sale.message = f"member {member.display_name} ({member.tier or 'no tier'}) identified by {via}"
        return await self._changed(sale, "member", save)

    async def _identify_payer(self, sale: Sale, code: Classification) -> Sale:
        """A payment code before the basket: who is the customer? (It is charged only once the basket is set.)"""
        self._enabled_provider(code)
        try:
            found = await self.identifier.payment_code(code.value)
        except CentralNeeded as exc:
            raise Offline(str(exc), OFFLINE_ZH) from None
        except CentralError as exc:
            raise PayerNotIdentified(f"could not ask central who the payer is: {exc}") from exc
        sale = await self._identified(sale, found)
        sale.message = (sale.message or "") + "; set the basket, then scan the payment code again to pay"
        return sale

    async def _add_coupon(self, sale: Sale, code: str) -> Sale:
        self._no_money_yet(sale, "add a coupon")
        if any(c.code == code for c in sale.coupons):
            raise CouponRefused(f"coupon {code} is already on this sale")
        found = await asyncio.to_thread(self.members.coupon, code)
        if found is None:
            raise CouponRefused(f"coupon {code} is not known at this till", "优惠券无效")
        owner, coupon = found
        member_id = sale.member.id if sale.member else None
        try:
            check_coupon(coupon, owner, member_id, self.clock.now(), await self.connectivity.online())
        except CouponNotUsable as exc:
            raise CouponRefused(str(exc), "优惠券不可用") from None
        sale.coupons.append(SaleCoupon(code=coupon.code, title=coupon.title))
        if sale.lines:
            await self._reprice(sale)
        sale.message = f"coupon {coupon.title} added"
        return await self._changed(sale, "basket")

    async def _add_product(self, sale: Sale, gtin: str) -> Sale:
        item = self._catalog.get(gtin)
        if item is None:
            raise ProductNotInCatalogue(
                f"product {gtin} is not in this station's catalogue: the POS adds items", "该商品无法在此结算"
            )
        self._no_money_yet(sale, "change the basket")
        for line in sale.lines:
            if line.sku == gtin:
                line.qty += 1
                break
        else:
            sale.lines.append(
                SaleLine(sku=gtin, name=item.name, qty=1, unit_price_fen=item.price_fen, category=item.category)
            )
        await self._reprice(sale)
        sale.state = "basket"
        sale.message = f"{item.name} added"
        return await self._changed(sale, "basket")

    # --- pricing -------------------------------------------------------------------------------------------

    async def _reprice(self, sale: Sale) -> None:
        if not sale.lines:
            sale.pricing = None
            return
        online = await self.connectivity.online()
        sale.online = online
        rules = self.settings.points
        tier = None
        coupons: list[CachedCoupon] = []
        redemption = None
        if sale.member is not None:
            tier_settings = rules.tiers.get(sale.member.tier)
            if tier_settings is not None:
                tier = Tier(sale.member.tier, tier_settings.discount_percent, tier_settings.earn_multiplier_percent)
            for sale_coupon in sale.coupons:
                found = await asyncio.to_thread(self.members.coupon, sale_coupon.code)
                if found is not None:
                    coupons.append(found[1])
            left_today = None if online else await asyncio.to_thread(self._offline_redeem_left, sale.member.id)
            redemption = Redemption(sale.redeem_points, sale.member.points, sale.member.may_redeem, left_today)
        try:
            pricing = price([line.basket_line() for line in sale.lines], rules, tier, coupons, redemption)
        except BadBasket as exc:
            raise BasketRefused(str(exc)) from None
        except CouponNotUsable as exc:
            raise CouponRefused(str(exc), "优惠券不可用") from None
        except RedemptionRefused as exc:
            raise RedemptionNotAllowed(str(exc), "积分不可使用") from None
        for line, amount in zip(sale.lines, pricing.line_amounts_fen, strict=True):
            line.amount_fen = amount
        offs = dict(pricing.coupon_discounts)
        for sale_coupon in sale.coupons:
            sale_coupon.amount_off_fen = offs.get(sale_coupon.code, 0)
        most = 0
        if redemption is not None and redemption.may_redeem:
            most = max_redeemable(rules, pricing.subtotal_fen - pricing.discount_fen, redemption)
        sale.pricing = PricingView.of(pricing, most)

    def _offline_redeem_left(self, member_id: str) -> int:
        """The offline cap minus points this member spent at this till today while it was offline."""
        today = business_day(
            utcnow(), self.settings.store.zone, self.settings.store.business_day_cutoff_hour
        ).isoformat()
        with reader(self.engine) as connection:
            spent = connection.exec_driver_sql(
                "SELECT coalesce(sum(points_redeemed), 0) FROM journal WHERE member_id = ? AND business_day = ? AND kind = 'sale'"
                " AND json_extract(body, '$.online') = 0",
                (member_id, today),
            ).scalar_one()
        return max(0, self.settings.offline.redeem_cap_points_per_day - spent)

    def _coupon_owner(self, code: str) -> str | None:
        found = self.members.coupon(code)
        return None if found is None else found[0]

    # --- tenders -------------------------------------------------------------------------------------------

    async def _other_tender(
        self, sale: Sale, kind: str, amount_fen: int | None, tendered_fen: int | None, reference: str | None
    ) -> Sale:
        self._ready_to_pay(sale)
        try:
            tender = new_tender(sale.remaining_fen, kind, amount_fen, tendered_fen, reference)
        except TenderRefused as exc:
            raise TenderNotTaken(str(exc)) from None
        sale.tenders.append(tender)
        sale.state = "tender"
        sale.message = f"{kind} ¥{tender.amount_fen / 100:.2f}" + (
            f", change ¥{tender.change_fen / 100:.2f}" if tender.change_fen else ""
        )
        return await self._after_tender(sale)

    async def _code_payment(self, sale: Sale, code: Classification) -> Sale:
        provider = self._enabled_provider(code)
        if sale.member is None and sale.pricing is not None and not sale.tenders:
            # Pay as member: ask who pays, so their price is the one charged.
            try:
                found = await self.identifier.payment_code(code.value)
            except CentralNeeded as exc:
                raise Offline(str(exc), OFFLINE_ZH) from None
            except CentralNotReached as exc:
                self.connectivity.saw(False)
                raise Offline(f"{OFFLINE_EN} ({exc})", OFFLINE_ZH) from None
            except CentralError as exc:
                self.connectivity.suspect()
                log.warning("payer identification failed; charging without member benefits", extra={"error": str(exc)})
            else:
                if found.member is not None:
                    await self._identified(sale, found, save=False)  # saved with the payment, next
        elif not await self.connectivity.online():
            raise Offline(OFFLINE_EN, OFFLINE_ZH)
        self._ready_to_pay(sale)
        payment = CodePayment(
            out_trade_no=uuid7().hex,
            provider=provider,
            state="sending",
            amount_fen=sale.remaining_fen,
            created_at=self.clock.now(),
        )
        sale.payments.append(payment)
        sale.state = "tender"
        await self._save(sale)  # the out_trade_no is on disk before the charge goes out
        request = PaymentRequest(
            out_trade_no=payment.out_trade_no,
            auth_code=code.value,
            amount_fen=payment.amount_fen,
            station_id=self.station_id,
            description=f"{self.settings.store.name} {self.settings.checkout.payment_description}".strip()[:64],
            member_id=sale.member.id if sale.member else None,
            provider=provider,
        )
        self._requests[payment.out_trade_no] = request  # held while the outcome is open: sending it again is safe
        try:
            answer = await self.client.pay(request)
        except CentralNotReached as exc:
            # The request never left the store: not charged. Say so at once, and remember central is away.
            self.connectivity.saw(False)
            self._payment_state(payment, "FAILED", offline=True)
            payment.message, payment.message_zh = f"{OFFLINE_EN} ({exc})", OFFLINE_ZH
            await self._settle(sale, payment, follow=False)
            raise Offline(payment.message, OFFLINE_ZH) from None
        except CentralRejected as exc:
            # Central's own refusal (its error body says why): it created no payment under this number.
            self._payment_state(payment, "FAILED")
            payment.message, payment.message_zh = str(exc), "支付失败，请重试或换一种方式付款"
            await self._settle(sale, payment, follow=False)
            raise PaymentFailed(f"central refused the payment: {exc}", "支付失败，请重试或换一种方式付款") from None
        except CentralError as exc:
            # It may or may not have been charged: find out, never charge under another number.
            self.connectivity.suspect()
            payment.state = "UNKNOWN"
            payment.message = f"no answer from central ({exc}); checking how the payment ended — do not take it again"
            payment.message_zh = "正在确认支付结果，请稍候"
            self._follow(sale, payment)
            return await self._changed(sale, "payment")
        return await self._payment_answer(sale, payment, answer, follow=True)

    async def _payment_answer(self, sale: Sale, payment: CodePayment, answer: Payment, follow: bool) -> Sale:
        """Apply what central says of a payment, then act on it."""
        self.connectivity.saw(True)
        self._payment_state(payment, answer.state)
        payment.provider_trade_no = answer.provider_trade_no
        payment.message_zh = answer.reason_zh
        payment.message = answer.reason_en
        return await self._settle(sale, payment, follow)

    async def _settle(self, sale: Sale, payment: CodePayment, follow: bool) -> Sale:
        """Act on the payment's state: a tender when paid, follow it while open, back to the basket when not paid."""
        if payment.final:
            self._requests.pop(payment.out_trade_no, None)
        if payment.state == "SUCCESS" and not payment.cancel_requested:
            sale.tenders.append(
                Tender(
                    kind=payment.provider,
                    amount_fen=payment.amount_fen,
                    tendered_fen=payment.amount_fen,
                    reference=payment.provider_trade_no,
                    out_trade_no=payment.out_trade_no,
                )
            )
            payment.message, payment.message_zh = "paid", "支付成功"
            sale.message = f"{payment.provider} ¥{payment.amount_fen / 100:.2f} paid"
            return await self._after_tender(sale)
        if payment.state == "SUCCESS":  # paid after the cashier gave up: central takes it back
            payment.void_answered = False
            await self._give_up(sale, payment)
        elif payment.state == "USERPAYING":
            payment.message, payment.message_zh = (
                "waiting for the customer to confirm on the phone",
                "请在手机上确认支付",
            )
            if follow:
                self._follow(sale, payment)
        elif payment.state in ("PENDING", "UNKNOWN"):
            payment.message, payment.message_zh = (
                "the provider has not answered yet: checking — do not take payment again",
                "正在确认支付结果，请稍候",
            )
            if follow:
                self._follow(sale, payment)
        elif payment.state in ("FAILED", "REVERSED", "REVERSING"):
            payment.message = payment.message or f"payment {payment.state.lower()}: the customer was not charged"
            payment.message_zh = payment.message_zh or "支付未成功，请重试或换一种方式付款"
            sale.message = payment.message
            if sale.is_open and not sale.tenders and not sale.unsettled_payments:
                sale.state = "basket"
        return await self._changed(sale, "payment")

    def _follow(self, sale: Sale, payment: CodePayment) -> None:
        if payment.out_trade_no not in self._followers:
            task = asyncio.get_running_loop().create_task(self._follow_payment(sale, payment))
            self._followers[payment.out_trade_no] = task
            task.add_done_callback(lambda _: self._followers.pop(payment.out_trade_no, None))

    async def _follow_payment(self, sale: Sale, payment: CodePayment) -> None:
        """Ask central until the payment is final; past the till's limit, give it up.

        Central not knowing the payment is no answer: its request may still be on its way. While the till holds
        the request it sends it again (the same out_trade_no is one payment at central, ever); without it (after a
        restart), or once the till gave up, it voids the number, which central records even unseen — so a late
        copy of the charge is refused, and "not charged" is a fact, not a guess."""
        limit = timedelta(seconds=self.settings.checkout.code_payment_limit_s)
        out_trade_no = payment.out_trade_no
        try:
            while not payment.final:
                answer: Payment | None
                try:
                    if payment.cancel_requested and not payment.void_answered:
                        answer = await self.client.void_payment(out_trade_no, self._void_of(payment))
                        payment.void_answered = True
                    elif self.clock.now() - payment.created_at > limit and not payment.cancel_requested:
                        async with self._lock:
                            payment.message = "the customer did not confirm in time"
                            await self._give_up(sale, payment)
                            await self._changed(sale, "payment")
                        continue
                    else:
                        answer = await self.client.payment(out_trade_no, wait_s=PAYMENT_WAIT_S)
                        if answer is None:
                            answer = await self._send_again(payment)
                except CentralError as exc:
                    log.warning(
                        "payment outcome not known yet", extra={"out_trade_no": out_trade_no, "error": str(exc)}
                    )
                    await self.clock.sleep(RESOLVE_RETRY.delay(failures=1))
                    continue
                if answer is None:
                    continue
                async with self._lock:
                    if payment.final or (answer.state == payment.state and not answer.final):
                        continue
                    await self._payment_answer(sale, payment, answer, follow=False)
        finally:
            self._requests.pop(out_trade_no, None)

    async def _send_again(self, payment: CodePayment) -> Payment | None:
        """Central has not seen this payment: send the held request again, or, without one, give the number up
        (the follower then voids it). None when there is no answer to apply yet."""
        request = self._requests.get(payment.out_trade_no)
        if request is not None and not payment.cancel_requested:
            try:
                return await self.client.pay(request)
            except CentralRejected as exc:
                log.warning(
                    "payment sent again was refused; voiding it",
                    extra={"out_trade_no": payment.out_trade_no, "error": str(exc)},
                )
        self._requests.pop(payment.out_trade_no, None)
        payment.cancel_requested = True  # voided at the top of the follower's next turn
        return None

    async def _give_up(self, sale: Sale, payment: CodePayment) -> None:
        """The till gives the payment up: central voids it (reversed if it holds it, refused for good if its request
        has not arrived); until central says so, the payment counts as not paid and is followed."""
        payment.cancel_requested = True
        self._requests.pop(payment.out_trade_no, None)
        if payment.state == "SUCCESS":
            sale.tenders = [t for t in sale.tenders if t.out_trade_no != payment.out_trade_no]
        try:
            answer = await self.client.void_payment(payment.out_trade_no, self._void_of(payment))
        except CentralError as exc:
            payment.message = f"cancel requested; central not reached yet ({exc}), retrying"
            self._follow(sale, payment)
            return
        payment.void_answered = True
        self._payment_state(payment, answer.state if answer.state != "SUCCESS" else "REVERSING")
        payment.message, payment.message_zh = "payment cancelled: the customer is not charged", "支付已撤销"
        if not payment.final:
            self._follow(sale, payment)
        elif sale.is_open and not sale.tenders and not sale.unsettled_payments:
            sale.state = "basket"

    def _payment_state(self, payment: CodePayment, state: PaymentState, offline: bool = False) -> None:
        """Set a code payment's state; one that ends here is counted, with the time since its charge was sent
        (`offline`: central was not reached, the charge never left the store)."""
        ends = state in FINAL_PAYMENT_STATES and not payment.final
        payment.state = state
        if ends and self.metrics is not None:
            self.metrics.code_payment_ended(
                payment.provider, state, None if offline else self.clock.now() - payment.created_at, offline
            )

    def _void_of(self, payment: CodePayment) -> PaymentVoid:
        return PaymentVoid(provider=payment.provider, amount_fen=payment.amount_fen, station_id=self.station_id)

    async def _after_tender(self, sale: Sale) -> Sale:
        if sale.remaining_fen > 0 or sale.unsettled_payments:
            return await self._changed(sale, "payment")
        return await self._complete(sale)

    async def _complete(self, sale: Sale) -> Sale:
        """Paid in full: journal it with its outbox row, its receipt's print job and its coupons used, dropping its
        saved copy, in one transaction; then tell the screens, and close."""
        sale.online = await self.connectivity.online()
        sale.receipt_no = await asyncio.to_thread(self._next_receipt_no)
        cash = any(t.kind == "cash" for t in sale.tenders)

        def within(connection: sa.Connection, record: JournalRecord) -> None:
            connection.exec_driver_sql("DELETE FROM open_sale WHERE id = ?", (sale.id,))
            self.members.mark_coupons_used([c.code for c in sale.coupons], record.created_at, connection)
            sale.receipt_job_id = self._queue_receipt(connection, record, cash)

        record = await asyncio.to_thread(self.journal.append, self._sale_entry(sale), within)
        if self.metrics is not None:
            self.metrics.sale_journaled(sale.tenders)
        sale.state = "paid"
        sale.transaction_id = record.id
        sale.message = f"paid ¥{sale.amount_due_fen / 100:.2f}" + (
            f", change ¥{sale.change_fen / 100:.2f}" if sale.change_fen else ""
        )
        self._publish("paid", sale, sale.message)
        if self._receipts is not None:
            self._receipts.wake()
            if sale.receipt_job_id is None:
                sale.message += "; the receipt could not be printed: reprint it from the transactions list"
        sale.state = "closed"
        await self._finish(sale, on_disk=False)  # dropped with the journal row
        self._publish("closed", sale, sale.message)
        self._push_soon()
        return sale

    def _queue_receipt(self, connection: sa.Connection, record: JournalRecord, open_drawer: bool) -> str | None:
        """The receipt's print job, in the journal row's transaction; None without a printer, or if it could not be
        rendered (a bug must not undo a paid sale: the receipt can be reprinted)."""
        if self._receipts is None:
            return None
        try:
            return self._receipts.queue_in(connection, record, "receipt", open_drawer)
        except Exception:
            log.exception("receipt could not be queued", extra={"transaction": record.id})
            return None

    # --- journal rows --------------------------------------------------------------------------------------

    def _sale_entry(self, sale: Sale) -> JournalEntry:
        pricing = sale.pricing
        assert pricing is not None, "a sale is paid, so journaled, only once its basket is priced"
        body = sale_body(sale, self.settings.points.excluded_categories)
        return JournalEntry(
            kind="sale",
            id=sale.id,
            total_fen=pricing.amount_due_fen,
            body=body,
            member_id=sale.member.id if sale.member else None,
            points_earned=pricing.points_earned if sale.member else 0,
            points_redeemed=pricing.points_redeemed if sale.member else 0,
        )

    def _void_entry(self, sale: Sale) -> JournalEntry:
        """A cancelled sale in which money moved: what was taken and given back, no points."""
        return JournalEntry(
            kind="void",
            id=sale.id,
            total_fen=sale.paid_fen,
            body=void_body(sale),
            member_id=sale.member.id if sale.member else None,
        )

    def _next_receipt_no(self) -> str:
        """Short and scannable: station, business day (yymmdd) and the day's count, e.g. T012611230042."""
        store = self.settings.store
        day = business_day(utcnow(), store.zone, store.business_day_cutoff_hour)
        with reader(self.engine) as connection:
            count = connection.exec_driver_sql(
                "SELECT count(*) FROM journal WHERE station_id = ? AND business_day = ?",
                (self.station_id, day.isoformat()),
            ).scalar_one()
        return f"{self.station_id}{day:%y%m%d}{count + 1:04d}"

    # --- helpers -------------------------------------------------------------------------------------------

    @contextmanager
    def _all_or_nothing(self, sale: Sale) -> Iterator[None]:
        """A refused step leaves the sale as it was (basket, member, coupons, pricing). Its code payments are left
        alone: no refusable step changes them, and their followers hold them by reference."""
        before = sale.model_copy(deep=True)
        try:
            yield
        except AgentError:
            for name in Sale.model_fields:
                if name != "payments":
                    setattr(sale, name, getattr(before, name))
            raise

    def _open_sale(self, sale_id: str) -> Sale:
        sale = self.get(sale_id)
        if not sale.is_open:
            raise SaleClosed(f"session {sale_id} is {sale.state}: nothing more can be done in it")
        return sale

    def _no_money_yet(self, sale: Sale, what: str) -> None:
        if sale.money_taken or sale.unsettled_payments:
            raise PaymentStarted(f"cannot {what} after payment has started: cancel the sale to start again")

    def _ready_to_pay(self, sale: Sale) -> None:
        if sale.pricing is None:
            raise BasketMissing("set the basket before taking payment", "请先结算商品")
        if sale.unsettled_payments:
            raise PaymentInProgress(
                "a code payment is still in progress: wait for it, or cancel it first", "正在支付中，请稍候"
            )
        if sale.remaining_fen <= 0:
            raise NothingLeftToPay("this sale is paid in full: nothing is left to pay")

    def _enabled_provider(self, code: Classification) -> PaymentProvider:
        """The payment code's provider, when this store takes it."""
        for provider in self.settings.checkout.providers:
            if provider == code.provider:
                return provider
        raise ProviderNotEnabled(
            f"this store does not take {code.provider} payment codes: ask for another payment method",
            "本店暂不支持该付款方式",
        )

    async def _changed(self, sale: Sale, event: str, save: bool = True) -> Sale:
        sale.version += 1
        if save:
            await self._save(sale)
        self._publish(event, sale, sale.message)
        return sale

    async def _finish(self, sale: Sale, on_disk: bool = True) -> None:
        """The sale left the open states: off disk (unless already, or while a payment of it is being given up)
        and into the short memory of closed sales."""
        sale.version += 1
        if on_disk:
            await self._save(sale)
        if self.current is sale:
            self.current = None
        self._closed[sale.id] = sale
        while len(self._closed) > KEEP_CLOSED:
            self._closed.popitem(last=False)

    def _publish(self, type: str, sale: Sale | None, message: str | None, **data: Any) -> None:
        self.events.publish(type, sale.id if sale else None, message, session=sale.view() if sale else None, **data)

    async def _save(self, sale: Sale) -> None:
        """An open sale is kept on disk; so is a cancelled one until its code payments are settled (a restart then
        goes on giving them up). A journaled sale lives in the journal, not here."""
        if sale.is_open or sale.unsettled_payments:
            await asyncio.to_thread(self._write_open, sale)
        elif sale.state == "cancelled":
            await asyncio.to_thread(self._delete_open, sale.id)

    def _write_open(self, sale: Sale) -> None:
        now = to_storage(utcnow())
        with self.engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO open_sale (id, station_id, state, body, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET state = excluded.state, body = excluded.body, updated_at = excluded.updated_at",
                (sale.id, sale.station_id, sale.state, sale.model_dump_json(), to_storage(sale.created_at), now),
            )

    def _delete_open(self, sale_id: str) -> None:
        with self.engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM open_sale WHERE id = ?", (sale_id,))

    def _load_open(self) -> list[str]:
        with reader(self.engine) as connection:
            return [
                row[0]
                for row in connection.exec_driver_sql(
                    "SELECT body FROM open_sale WHERE station_id = ? ORDER BY created_at", (self.station_id,)
                )
            ]


def record_view(record: JournalRecord) -> dict:
    """A journaled transaction as the API shows it."""
    return {
        "id": record.id,
        "kind": record.kind,
        "receipt_no": record.receipt_no,
        "business_day": record.business_day.isoformat(),
        "created_at": record.created_at.isoformat(),
        "member_id": record.member_id,
        "total_fen": record.total_fen,
        "points_earned": record.points_earned,
        "points_redeemed": record.points_redeemed,
        "body": record.body,
    }
