"""The sale's time rules on a fake clock (tests/support/clock.py): how a code payment is followed while the customer
confirms, when the till gives it up, how it waits for central to come back, how a refund whose answer was lost is
finished, and how long an offline verdict stands. Minutes of store time run in milliseconds, with no sleeps.

The checkout and refunds are the real ones on a real SQLite file; central is faked at the `CentralClient` method
boundary, because the subject here is the timing, not the wire (tests/agent/test_checkout.py, test_money_faults.py and
test_checkout_durability.py run the same rules end to end, in real time, against the real central service).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.central_client import CentralNotReached, CentralTimedOut
from agent.checkout import Checkout
from agent.connectivity import Connectivity
from agent.db import open_database
from agent.errors import Offline, RefundInProgress
from agent.events import Event, EventHub
from agent.identify import Identifier
from agent.journal import Journal
from agent.member_cache import MemberCache
from agent.member_code_gate import MemberCodeGate
from agent.payment_follower import PAYMENT_WAIT_S, RESOLVE_RETRY
from agent.refunds import RETRY, Refunds
from agent.sale import SaleLine
from agent.settings import Settings
from central.contract import IdentifyResult, Payment, PaymentRequest, PaymentVoid, Refund, RefundRequest
from tests.support.clock import FakeClock

pytestmark = pytest.mark.timeout(30)

LIMIT_S = 20  # the till's code_payment_limit_s in these tests
CODE = "134567890123456789"  # a WeChat payment code
BASKET = [SaleLine(sku="6901234567892", name="矿泉水 550ml", qty=2, unit_price_fen=200)]


class Central:
    """Central as the till's client sees it, on the test's clock: a charge waits for the customer (`confirm_at`),
    a long-poll holds until the state changes or its wait ends, and central can be away (`away_until`) or lose
    refund answers (`lost_refund_answers`). Every call is recorded with the fake second it was made at."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.confirm_at: float | None = None  # None: the customer never confirms
        self.away_until = 0.0
        self.refuse_connections = False  # away, and the connection is refused (not merely unanswered)
        self.lost_refund_answers = 0
        self.calls: list[tuple[str, float]] = []
        self.payments: dict[str, Payment] = {}
        self.refunds: dict[str, Refund] = {}

    def called(self, name: str) -> list[float]:
        return [at for called, at in self.calls if called == name]

    def _reach(self, name: str) -> None:
        self.calls.append((name, self.clock.seconds))
        if self.refuse_connections:
            raise CentralNotReached("connection refused")
        if self.clock.seconds < self.away_until:
            raise CentralTimedOut("central did not answer in time")

    def _state(self, out_trade_no: str) -> Payment:
        payment = self.payments[out_trade_no]
        if payment.state == "USERPAYING" and self.confirm_at is not None and self.clock.seconds >= self.confirm_at:
            payment = payment.model_copy(update={"state": "SUCCESS", "paid": True, "final": True})
            self.payments[out_trade_no] = payment
        return payment

    async def probe(self, timeout: float) -> bool:
        self.calls.append(("probe", self.clock.seconds))
        return not self.refuse_connections and self.clock.seconds >= self.away_until

    async def identify_payer(self, auth_code: str) -> IdentifyResult:
        self._reach("identify")
        return IdentifyResult(provider="wechat")

    async def pay(self, request: PaymentRequest) -> Payment:
        self._reach("pay")
        if request.out_trade_no not in self.payments:
            self.payments[request.out_trade_no] = Payment(
                out_trade_no=request.out_trade_no,
                provider="wechat",
                state="USERPAYING",
                paid=False,
                final=False,
                amount_fen=request.amount_fen,
                station_id=request.station_id,
                provider_trade_no="4200000001",
                created_at=self.clock.now(),
                updated_at=self.clock.now(),
            )
        return self._state(request.out_trade_no)

    async def payment(self, out_trade_no: str, wait_s: float = 0) -> Payment | None:
        self._reach("payment")
        if out_trade_no not in self.payments:
            return None
        payment = self._state(out_trade_no)
        if not payment.final and wait_s:  # the long-poll: held until the customer confirms or the wait ends
            until = wait_s if self.confirm_at is None else min(wait_s, max(0.0, self.confirm_at - self.clock.seconds))
            await self.clock.sleep(until)
            payment = self._state(out_trade_no)
        return payment

    async def void_payment(self, out_trade_no: str, request: PaymentVoid) -> Payment:
        self._reach("void")
        voided = Payment(
            out_trade_no=out_trade_no,
            provider=request.provider,
            state="REVERSED",
            paid=False,
            final=True,
            amount_fen=request.amount_fen,
            station_id=request.station_id,
            created_at=self.clock.now(),
            updated_at=self.clock.now(),
        )
        self.payments[out_trade_no] = voided
        return voided

    async def refund_payment(self, out_trade_no: str, request: RefundRequest) -> Refund:
        self._reach("refund")
        refund = self.refunds.setdefault(
            request.out_refund_no,
            Refund(
                out_refund_no=request.out_refund_no,
                out_trade_no=out_trade_no,
                provider="wechat",
                state="SUCCESS",
                final=True,
                amount_fen=request.amount_fen,
                created_at=self.clock.now(),
                updated_at=self.clock.now(),
            ),
        )
        if self.lost_refund_answers:
            self.lost_refund_answers -= 1
            raise CentralTimedOut("the refund's answer was lost")
        return refund

    async def refund(self, out_trade_no: str, out_refund_no: str) -> Refund:
        self._reach("refund-get")
        return self.refunds[out_refund_no]


@dataclass
class Till:
    clock: FakeClock
    central: Central
    checkout: Checkout
    refunds: Refunds
    journal: Journal
    events: EventHub
    refund_journaled: asyncio.Event  # set when a refund is journaled (its push is asked for)

    async def sale_with_basket(self) -> str:
        sale = await self.checkout.open()
        await self.checkout.set_basket(sale.id, [line.model_copy() for line in BASKET])
        return sale.id

    async def event(self, sale_id: str, matches: Callable[[Event], bool]) -> Event:
        """The first event of the sale that matches, published already or to come (no polling: the hub wakes us)."""

        async def first() -> Event:
            async for event in self.events.follow(last_id=0, session_id=sale_id):
                if matches(event):
                    return event
            raise AssertionError("the events ended")

        return await asyncio.wait_for(first(), 10)


def on_a_fake_clock(scenario: Callable[[Till], Awaitable[None]]) -> Callable[[Path], None]:
    """A test of `scenario` run against a fresh till (its database in pytest's tmp_path) on a fresh fake clock."""

    def test(tmp_path: Path) -> None:
        async def run() -> None:
            till = open_till(tmp_path)
            try:
                await scenario(till)
            finally:
                await till.checkout.close()
                await till.refunds.close()

        asyncio.run(run())

    test.__name__, test.__doc__ = scenario.__name__, scenario.__doc__
    return test


def open_till(tmp_path: Path) -> Till:
    settings = Settings(
        store={"id": "S1", "name": "测试门店"},
        station={"id": "T01"},
        central={"url": "http://127.0.0.1:9"},
        checkout={"providers": ["wechat"], "code_payment_limit_s": LIMIT_S},
        storage={"database": tmp_path / "agent.db"},
    )
    engine = open_database(settings.storage.database)
    clock = FakeClock()
    central = Central(clock)
    client: Any = central  # the CentralClient methods the checkout and refunds call
    connectivity = Connectivity(client, (), clock=clock)
    members = MemberCache(engine, None)
    journal = Journal(engine, "T01", settings.store.zone, settings.store.business_day_cutoff_hour)
    gate = MemberCodeGate(engine, settings.member_codes.window_s, settings.member_codes.clock_skew_s)
    identifier = Identifier(members, gate, client, connectivity.online)
    events = EventHub()
    refunded = asyncio.Event()
    checkout = Checkout(settings, engine, members, journal, identifier, connectivity, client, events, clock=clock)
    refunds = Refunds(settings, engine, journal, members, client, connectivity, push_soon=refunded.set, clock=clock)
    return Till(clock, central, checkout, refunds, journal, events, refunded)


# --- following a code payment while the customer confirms ------------------------------------------------------


@on_a_fake_clock
async def test_while_the_customer_confirms_the_till_long_polls_back_to_back_and_closes_at_the_confirmation(
    till: Till,
) -> None:
    till.central.confirm_at = 12.0
    sale_id = await till.sale_with_basket()
    sale = await till.checkout.tender(sale_id, "code", auth_code=CODE)
    assert sale.payments[0].state == "USERPAYING" and sale.state == "tender"

    for _ in range(2):  # two long-polls run out, each asked again at once
        await till.clock.sleeping(1)
        till.clock.advance(PAYMENT_WAIT_S)
    await till.clock.sleeping(1)
    till.clock.advance(2.0)  # the customer confirms during the third
    closed = await till.event(sale_id, lambda e: e.type == "closed")

    assert closed.data["session"]["state"] == "closed"
    assert till.central.called("payment") == [0.0, 5.0, 10.0]  # no gap between polls: central holds each one
    assert till.clock.slept == [PAYMENT_WAIT_S, PAYMENT_WAIT_S, 2.0]
    assert till.central.called("void") == [] and till.journal.get(sale_id) is not None


@on_a_fake_clock
async def test_past_the_limit_the_till_gives_the_payment_up_and_central_reverses_it(till: Till) -> None:
    sale_id = await till.sale_with_basket()
    await till.checkout.tender(sale_id, "code", auth_code=CODE)  # the customer never confirms

    for _ in range(5):
        await till.clock.sleeping(1)
        till.clock.advance(PAYMENT_WAIT_S)
    given_up = await till.event(sale_id, lambda e: (e.data["session"]["payment"] or {}).get("state") == "REVERSED")

    # Asked every 5 s; the first answer after the 20 s limit (at 25 s: 20 s is not past it) gives it up.
    assert till.central.called("payment") == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert till.central.called("void") == [25.0]
    session = given_up.data["session"]
    assert session["state"] == "basket" and session["paid_fen"] == 0
    assert session["payment"]["message"] == "payment cancelled: the customer is not charged"
    assert till.journal.get(sale_id) is None


# --- central away while a payment is open -------------------------------------------------------------------


@on_a_fake_clock
async def test_with_central_away_the_till_asks_every_3_s_and_the_limit_still_holds_until_central_voids(
    till: Till,
) -> None:
    sale_id = await till.sale_with_basket()
    await till.checkout.tender(sale_id, "code", auth_code=CODE)
    till.central.away_until = 40.0  # the WAN goes during the first long-poll, for 40 s

    await till.clock.sleeping(1)
    till.clock.advance(PAYMENT_WAIT_S)
    while till.clock.seconds < 40.0:
        await till.clock.sleeping(1)
        till.clock.advance(RESOLVE_RETRY.first)
    given_up = await till.event(sale_id, lambda e: (e.data["session"]["payment"] or {}).get("state") == "REVERSED")

    # Steady, not backing off: a customer may be waiting. Past the limit the till asks for the void instead, and
    # only central's answer settles it: until then the payment is open, never "not charged" from silence.
    # (At 23 s the give-up asks once; unanswered, it is asked again every 3 s like any other request.)
    assert till.central.called("payment") == [0.0, 5.0, 8.0, 11.0, 14.0, 17.0, 20.0]
    assert till.central.called("void") == [23.0, 26.0, 29.0, 32.0, 35.0, 38.0, 41.0]
    assert till.clock.slept == [PAYMENT_WAIT_S] + [RESOLVE_RETRY.first] * 12
    assert given_up.data["session"]["state"] == "basket" and till.journal.get(sale_id) is None


# --- the offline verdict -------------------------------------------------------------------------------------


@on_a_fake_clock
async def test_a_refused_connection_refuses_code_payment_for_3_s_without_asking_then_rechecks(till: Till) -> None:
    sale_id = await till.sale_with_basket()
    till.central.refuse_connections = True
    with pytest.raises(Offline):
        await till.checkout.tender(sale_id, "code", auth_code=CODE)
    asked = len(till.central.calls)

    till.clock.advance(2.9)
    with pytest.raises(Offline):  # the verdict stands: the next customer is not kept waiting for a probe
        await till.checkout.tender(sale_id, "code", auth_code=CODE)
    assert len(till.central.calls) == asked

    till.central.refuse_connections = False
    till.clock.advance(0.2)  # past the recheck: a probe finds central back
    till.central.confirm_at = 0.0
    sale = await till.checkout.tender(sale_id, "code", auth_code=CODE)
    assert sale.state == "closed" and till.journal.get(sale_id) is not None


# --- a refund whose answer was lost ---------------------------------------------------------------------------


@on_a_fake_clock
async def test_a_lost_refund_answer_is_finished_in_the_background_at_3_6_12_24_s_under_the_same_number(
    till: Till,
) -> None:
    till.central.confirm_at = 0.0
    sale_id = await till.sale_with_basket()
    sale = await till.checkout.tender(sale_id, "code", auth_code=CODE)
    assert sale.state == "closed"
    till.central.lost_refund_answers = 4  # the first answer and three tries after it

    with pytest.raises(RefundInProgress):
        await till.refunds.refund(sale.id, None, None)
    for delay in (3.0, 6.0, 12.0, 24.0):
        await till.clock.sleeping(1)
        assert till.clock.slept[-1] == delay == RETRY.delay(len(till.clock.slept))
        till.clock.advance(delay)
    await asyncio.wait_for(till.refund_journaled.wait(), 10)

    assert till.central.called("refund") == [0.0, 3.0, 9.0, 21.0, 45.0]
    assert len(till.central.refunds) == 1  # one refund number, asked five times: refunded once
    assert [r.total_fen for r in till.refunds.refunds_of(sale.id)] == [400]
