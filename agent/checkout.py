"""The till's checkout: one open sale per station, driven by scans and the local API.

A step locks the station, gathers the facts it needs (who the customer is, what the cache knows, whether central is
reachable: agent/sale_facts.py), decides through the sale's rules (agent/sale_rules.py: pure), and hands the step to
the station's sales (agent/station_sales.py), which save it, void, journal and print as it says, and tell the screens.
The order that keeps money safe:

- a code payment's `out_trade_no` is saved before the charge is sent, so after a crash the till asks central how
  it ended instead of guessing (`recover`);
- the sale is journaled with its outbox row before any screen hears "paid" and before the receipt is queued;
- a payment whose answer did not come is followed in the background (agent/payment_follower.py) until central says
  how it ended; it is never charged again and never forgotten.

Pay-as-member: a payment code scanned with a basket set first asks central who the payer is, applies their tier
price, then charges the same code for the new amount — one scan does both. Points cannot be spent on that
identification alone (WeChat's rule): a member code or a confirmed phone number can.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import sqlalchemy as sa

from agent import pii
from agent import sale_rules as rules
from agent.central_client import CentralClient, CentralError, CentralNotReached, CentralRejected
from agent.clock import SYSTEM_CLOCK, Clock, utcnow
from agent.codes import Classification, CodeRules, Kind, classify
from agent.connectivity import Connectivity
from agent.disk_space import DiskSpace
from agent.errors import (
    AgentError,
    DiskFull,
    InvalidPhone,
    MemberCodeRefused,
    NotFound,
    Offline,
    PayerNotIdentified,
    PhoneLookupOff,
    ProviderNotEnabled,
    SaleOpen,
    UnknownCode,
)
from agent.events import EventHub
from agent.identify import CentralNeeded, Identifier, MemberNotFound
from agent.ids import uuid7
from agent.journal import Journal
from agent.journal_bodies import void_entry
from agent.member_cache import MemberCache, PhoneLookupUnavailable
from agent.member_code import MemberCodeError
from agent.receipt_printing import ReceiptPrinting
from agent.sale import Sale, SaleLine
from agent.sale_facts import SaleFacts
from agent.settings import Settings
from agent.station_sales import StationSales
from central.contract import PaymentProvider, PaymentRequest

if TYPE_CHECKING:
    from agent.metrics import AgentMetrics

log = logging.getLogger(__name__)


class WalletScans(Protocol):
    """The part of the wallet (agent/membership.py) the scan path asks."""

    def claims(self, text: str) -> bool: ...

    async def on_scan(self, text: str) -> None: ...


class Checkout:
    """The station's checkout as the API and the scanners drive it; its sales are kept by `StationSales`."""

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
        self.identifier = identifier
        self.connectivity = connectivity
        self.client = client
        self.events = events
        self.sales = StationSales(
            settings,
            engine,
            members,
            journal,
            connectivity,
            client,
            events,
            receipts,
            push_soon or (lambda: None),
            clock,
        )
        self.facts = SaleFacts(settings, members, journal, connectivity, clock)
        self.members = members
        self.journal = journal
        self._disk = disk
        # The sale's time rules (a code payment's limit, the follower's waits) read this clock; the receipt's
        # business day reads the wall clock, as the journal that counts it does.
        self.clock = clock
        self.rules: CodeRules = settings.codes.rules()
        self.station_id = settings.station.id
        self._catalog = {item.gtin: item for item in settings.checkout.catalog}
        self.wallet: WalletScans | None = None  # set by the runtime: the customer's wallet may claim a scan

    @property
    def current(self) -> Sale | None:
        return self.sales.current

    @property
    def metrics(self) -> AgentMetrics | None:
        return self.sales.metrics

    @metrics.setter
    def metrics(self, metrics: AgentMetrics | None) -> None:
        self.sales.metrics = metrics  # counts sales and code payments (agent/metrics.py)

    async def recover(self) -> None:
        """After a start: finish or reopen the sale that was open when the agent stopped."""
        await self.sales.recover()

    async def close(self) -> None:
        await self.sales.follower.close()

    def on_printed_threadsafe(self, loop: asyncio.AbstractEventLoop) -> Callable[[str], None]:
        return self.sales.on_printed_threadsafe(loop)

    # --- sessions ------------------------------------------------------------------------------------------

    async def open(self) -> Sale:
        async with self.sales.lock:
            return await self._open()

    async def look(self, sale_id: str) -> Sale:
        """The sale as a screen asks for it: an open sale's online flag is brought up to date (the network may
        have come back since its last step), from the till's cached view of central."""
        sale = self.get(sale_id)
        if sale.is_open:
            sale.online = await self.connectivity.online()
        return sale

    def get(self, sale_id: str) -> Sale:
        return self.sales.get(sale_id)

    async def code(self, sale_id: str | None, text: str) -> Sale:
        """A scanned or typed code. `sale_id` None: the station's open sale, opening one if needed."""
        code = classify(text, self.rules)
        async with self.sales.lock:
            if sale_id is not None:
                sale = self._open_sale(sale_id)
            elif self.current is not None and self.current.is_open:
                sale = self.current
            elif code.kind is Kind.UNKNOWN:
                raise rules.unknown_code(code.display_value)
            else:
                sale = await self._open()
            self.sales.publish("scan", sale, None, code=code.to_public())
            return await self._apply_code(sale, code)

    async def phone(self, sale_id: str, phone: str, confirmed: bool) -> Sale:
        async with self.sales.lock:
            sale = self._open_sale(sale_id)
            rules.no_money_yet(sale, "change the member")
            try:
                found = await self.identifier.phone(phone, confirmed=confirmed)
            except pii.InvalidPhoneNumber as exc:
                raise InvalidPhone(f"{exc}", "请输入正确的手机号码") from None
            except PhoneLookupUnavailable as exc:
                raise PhoneLookupOff(str(exc)) from exc
            except MemberNotFound as exc:
                raise NotFound(str(exc), "未找到该手机号的会员") from None
            return await self.sales.carry_out(await self.facts.identified(sale, found))

    async def set_basket(self, sale_id: str, lines: list[SaleLine], approved_by: str | None = None) -> Sale:
        """The POS's basket; `approved_by`: the supervisor who approved its price overrides, checked by the caller."""
        async with self.sales.lock:
            sale = self._open_sale(sale_id)
            facts = await self.facts.pricing(sale, bool(lines))
            needed = "price_override" in self.settings.approval.actions
            return await self.sales.carry_out(rules.set_basket(sale, lines, facts, approved_by, needed))

    async def set_quantity(self, sale_id: str, index: int, qty: int) -> Sale:
        """A line's quantity changed at the kiosk (0 takes it off)."""
        async with self.sales.lock:
            sale = self._open_sale(sale_id)
            facts = await self.facts.pricing(sale, qty > 0 or len(sale.lines) > 1)
            return await self.sales.carry_out(rules.set_quantity(sale, index, qty, facts))

    async def set_redemption(self, sale_id: str, points: int) -> Sale:
        async with self.sales.lock:
            sale = self._open_sale(sale_id)
            rules.no_money_yet(sale, "change the points to spend")
            return await self.sales.carry_out(rules.set_redemption(sale, points, await self.facts.pricing(sale)))

    async def remove_coupon(self, sale_id: str, code: str) -> Sale:
        async with self.sales.lock:
            sale = self._open_sale(sale_id)
            rules.no_money_yet(sale, "take a coupon off")
            return await self.sales.carry_out(rules.remove_coupon(sale, code, await self.facts.pricing(sale)))

    async def tender(
        self,
        sale_id: str,
        kind: str,
        amount_fen: int | None = None,
        tendered_fen: int | None = None,
        reference: str | None = None,
        auth_code: str | None = None,
    ) -> Sale:
        async with self.sales.lock:
            sale = self._open_sale(sale_id)
            if kind != "code":
                return await self.sales.carry_out(rules.take_tender(sale, kind, amount_fen, tendered_fen, reference))
            if not auth_code:
                raise UnknownCode("a code tender needs the auth_code scanned from the customer's phone")
            code = classify(auth_code, self.rules)
            if code.kind is not Kind.PAYMENT:
                raise UnknownCode("this is not a payment code: ask the customer to show the payment code (付款码)")
            return await self._code_payment(sale, code)

    async def cancel_payment(self, sale_id: str) -> Sale:
        """Give up the code payment in progress: central reverses it (the customer is not charged)."""
        async with self.sales.lock:
            return await self.sales.carry_out(rules.cancel_payment(self._open_sale(sale_id)))

    async def cancel(self, sale_id: str, approved_by: str | None = None) -> Sale:
        """Cancel the sale. Code payments taken are reversed; if money moved, a void is journaled, which needs a
        supervisor (`approved_by`, checked by the caller) when `approval.actions` has "void"."""
        async with self.sales.lock:
            sale = self._open_sale(sale_id)
            step = rules.cancelled(sale, approved_by, "void" in self.settings.approval.actions)
            void = void_entry(sale, approved_by) if sale.tenders else None  # what was taken, before it is given back
            return await self.sales.cancelled(step, void)

    # --- scans from the station's devices ------------------------------------------------------------------

    def on_scan(self, scan) -> None:
        """ScanRouter subscriber: a scan from one of this station's devices, handled on the loop. With no sale open,
        a scan the wallet is waiting for (`wallet`) is the wallet's, not a new sale's."""
        text = scan.scan.text
        open_sale = self.current is not None and self.current.is_open
        if not open_sale and self.wallet is not None and self.wallet.claims(text):
            asyncio.get_running_loop().create_task(self.wallet.on_scan(text))
            return
        asyncio.get_running_loop().create_task(self._scan(text))

    async def _scan(self, text: str) -> None:
        try:
            await self.code(None, text)
        except AgentError as exc:
            self.sales.publish("message", self.current, exc.message, message_zh=exc.message_zh, error=exc.code)
        except Exception:  # a bug must not kill the scan path
            log.exception("scan handling failed")

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
        step = rules.opened(str(uuid7()), self.station_id, utcnow(), await self.connectivity.online())
        self.sales.opened(step.sale)
        return await self.sales.carry_out(step)

    async def _apply_code(self, sale: Sale, code: Classification) -> Sale:
        kind = code.kind
        if kind is Kind.PAYMENT:
            if sale.pricing is None:
                return await self._identify_payer(sale, code)
            return await self._code_payment(sale, code)
        if kind is Kind.MEMBER_CODE:
            rules.no_money_yet(sale, "change the member")
            try:
                found = await self.identifier.member_code(code.value)
            except MemberCodeError as exc:
                raise MemberCodeRefused(f"member code refused: {exc}", "会员码无效或已使用，请刷新会员码") from None
            except MemberNotFound as exc:
                raise NotFound(str(exc), "未找到会员") from None
            return await self.sales.carry_out(await self.facts.identified(sale, found))
        if kind is Kind.CARD:
            rules.no_money_yet(sale, "change the member")
            try:
                found = await self.identifier.card(code.value)
            except MemberNotFound as exc:
                raise NotFound(str(exc), "未找到该会员卡") from None
            return await self.sales.carry_out(await self.facts.identified(sale, found))
        if kind is Kind.COUPON:
            rules.no_money_yet(sale, "add a coupon")
            coupon = (await self.members.acoupons_by_code([code.value])).get(code.value)
            online = await self.connectivity.online()
            facts = await self.facts.pricing(sale, codes=[c.code for c in sale.coupons] + [code.value], online=online)
            limit = self.settings.checkout.coupons_per_sale
            step = rules.add_coupon(sale, code.value, coupon, self.clock.now(), online, facts, limit)
            return await self.sales.carry_out(step)
        if kind is Kind.GUIDE:
            return await self.sales.carry_out(rules.attribute_guide(sale, code.value))
        if kind is Kind.PRODUCT:
            item = self._catalog.get(code.value)
            facts = await self.facts.pricing(sale, item is not None) if item is not None else None
            return await self.sales.carry_out(rules.add_product(sale, code.value, item, facts))
        if kind is Kind.UNKNOWN:
            raise rules.unknown_code(code.display_value)
        raise UnknownCode(f"{kind.value} codes are not used at checkout")

    async def _identify_payer(self, sale: Sale, code: Classification) -> Sale:
        """A payment code before the basket: who is the customer? (It is charged only once the basket is set.)"""
        self._enabled_provider(code)
        try:
            found = await self.identifier.payment_code(code.value)
        except CentralNeeded as exc:
            raise Offline(str(exc), rules.OFFLINE_ZH) from None
        except CentralError as exc:
            raise PayerNotIdentified(f"could not ask central who the payer is: {exc}") from exc
        step = await self.facts.identified(sale, found)
        step.sale.message = f"{step.sale.message}; set the basket, then scan the payment code again to pay"
        return await self.sales.carry_out(step)

    async def _code_payment(self, sale: Sale, code: Classification) -> Sale:
        provider = self._enabled_provider(code)
        if sale.member is None and sale.pricing is not None and not sale.tenders:
            # Pay as member: ask who pays, so their price is the one charged.
            try:
                found = await self.identifier.payment_code(code.value)
            except CentralNeeded as exc:
                raise Offline(str(exc), rules.OFFLINE_ZH) from None
            except CentralNotReached as exc:
                self.connectivity.saw(False)
                raise Offline(f"{rules.OFFLINE_EN} ({exc})", rules.OFFLINE_ZH) from None
            except CentralError as exc:
                self.connectivity.suspect()
                log.warning("payer identification failed; charging without member benefits", extra={"error": str(exc)})
            else:
                if found.member is not None:  # saved with the payment, next
                    sale = await self.sales.carry_out(await self.facts.identified(sale, found, save=False))
        elif not await self.connectivity.online():
            raise Offline(rules.OFFLINE_EN, rules.OFFLINE_ZH)
        step = rules.charge_started(sale, uuid7().hex, provider, self.clock.now())
        sale = await self.sales.carry_out(step)  # the out_trade_no is on disk before the charge goes out
        payment = sale.payments[-1]
        request = PaymentRequest(
            out_trade_no=payment.out_trade_no,
            auth_code=code.value,
            amount_fen=payment.amount_fen,
            station_id=self.station_id,
            description=f"{self.settings.store.name} {self.settings.checkout.payment_description}".strip()[:64],
            member_id=sale.member.id if sale.member else None,
            provider=provider,
        )
        self.sales.follower.hold(request)  # held while the outcome is open: sending it again is safe
        try:
            answer = await self.client.pay(request)
        except CentralNotReached as exc:  # never left the store: not charged; remember central is away
            self.connectivity.saw(False)
            return await self.sales.carry_out(rules.charge_not_sent(sale, payment.out_trade_no, str(exc)), offline=True)
        except CentralRejected as exc:
            return await self.sales.carry_out(rules.charge_refused(sale, payment.out_trade_no, str(exc)))
        except CentralError as exc:
            self.connectivity.suspect()
            return await self.sales.carry_out(rules.charge_unanswered(sale, payment.out_trade_no, str(exc)))
        self.connectivity.saw(True)
        return await self.sales.carry_out(rules.answered(sale, payment.out_trade_no, answer))

    def _enabled_provider(self, code: Classification) -> PaymentProvider:
        """The payment code's provider, when this store takes it."""
        for provider in self.settings.checkout.providers:
            if provider == code.provider:
                return provider
        raise ProviderNotEnabled(
            f"this store does not take {code.provider} payment codes: ask for another payment method",
            "本店暂不支持该付款方式",
        )

    def _open_sale(self, sale_id: str) -> Sale:
        sale = self.get(sale_id)
        rules.open_or_refuse(sale)
        return sale
