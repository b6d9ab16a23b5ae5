"""The sale's rules as tables (agent/sale_rules.py): a sale in a state, an event, and the new sale and actions that
must follow — including every transition the end-to-end tests found. Pure: sales built in memory, no clock, no
database, no network."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from agent import sale_rules as rules
from agent.errors import (
    AgentError,
    BasketMissing,
    CouponRefused,
    NoPaymentInProgress,
    Offline,
    PaymentFailed,
    PaymentInProgress,
    PaymentStarted,
    RedemptionNotAllowed,
    SaleClosed,
)
from agent.member_records import CachedCoupon, CachedMember
from agent.sale import CodePayment, Sale, SaleLine, SaleMember, Tender
from agent.settings import PointsSettings, TierSettings
from central.contract import Payment, PaymentState

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
OTN = "0196f0c2a1b27c3d8e9f"
POINTS = PointsSettings(tiers={"gold": TierSettings(discount_percent=10)})
ONLINE = rules.PricingFacts(POINTS, online=True)
WATER = SaleLine(sku="6901234567892", name="矿泉水 550ml", qty=2, unit_price_fen=200)
GOLD = CachedMember(id="M1", tier="gold", points=300, display_name="王*", phone_masked="138****0000", version=1)


def sale(state: str = "basket", payment: str | None = None, cancel: bool = False, tenders: int = 0) -> Sale:
    """A sale of two waters (¥4.00) in `state`, with a code payment in state `payment` and `tenders` cash tenders of
    ¥1.00 if asked."""
    s = Sale(id="S1", station_id="T01", created_at=T0)
    if state != "idle":
        s = rules.set_basket(s, [WATER], ONLINE).sale
        s.state = state  # type: ignore[assignment]
    s.tenders = [Tender(kind="cash", amount_fen=100, tendered_fen=100) for _ in range(tenders)]
    if payment is not None:
        s.payments = [
            CodePayment(
                out_trade_no=OTN,
                provider="wechat",
                state=payment,  # type: ignore[arg-type]
                amount_fen=s.remaining_fen,
                created_at=T0,
                cancel_requested=cancel,
            )
        ]
    return s


def central(state: str) -> Payment:
    final = state in ("SUCCESS", "FAILED", "REVERSED")
    return Payment(
        out_trade_no=OTN,
        provider="wechat",
        state=PaymentState(state),
        paid=state == "SUCCESS",
        final=final,
        amount_fen=400,
        station_id="T01",
        provider_trade_no="4200001" if state == "SUCCESS" else None,
        created_at=T0,
        updated_at=T0,
    )


@dataclass(frozen=True)
class Row:
    """One transition: the sale before, the event, and what must come out (None: not checked)."""

    name: str
    before: Sale
    event: Callable[[Sale], rules.Step]
    state: str | None = None  # the sale's state after
    payment: str | None = None  # its code payment's state after
    event_name: str | None = None  # what the screens hear
    voids: tuple[str, ...] = ()
    complete: bool = False
    paid_fen: int | None = None
    refusal: type[AgentError] | None = None  # raised: at once (a refused step), or once the step is kept


ROWS = [
    # tenders
    Row("cash in full completes", sale(), lambda s: rules.take_tender(s, "cash", None, 500, None), complete=True),
    Row(
        "cash in part waits for the rest",
        sale(),
        lambda s: rules.take_tender(s, "cash", 100, None, None),
        state="tender",
        event_name="payment",
        paid_fen=100,
    ),
    Row(
        "a code charge is kept as sending before it leaves",
        sale(),
        lambda s: rules.charge_started(s, OTN, "wechat", T0),
        state="tender",
        payment="sending",
    ),
    # the charge's outcome
    Row(
        "paid at once completes",
        sale("tender", "sending"),
        lambda s: rules.answered(s, OTN, central("SUCCESS")),
        payment="SUCCESS",
        complete=True,
        paid_fen=400,
    ),
    Row(
        "the customer confirms on the phone",
        sale("tender", "sending"),
        lambda s: rules.answered(s, OTN, central("USERPAYING")),
        state="tender",
        payment="USERPAYING",
        event_name="payment",
        paid_fen=0,
    ),
    Row(
        "refused by the provider: back to the basket",
        sale("tender", "sending"),
        lambda s: rules.answered(s, OTN, central("FAILED")),
        state="basket",
        payment="FAILED",
        event_name="payment",
    ),
    Row(
        "central not reached: not charged, offline",
        sale("tender", "sending"),
        lambda s: rules.charge_not_sent(s, OTN, "connection refused"),
        state="basket",
        payment="FAILED",
        refusal=Offline,
    ),
    Row(
        "central refused the request: not charged",
        sale("tender", "sending"),
        lambda s: rules.charge_refused(s, OTN, "wrong_provider"),
        state="basket",
        payment="FAILED",
        refusal=PaymentFailed,
    ),
    Row(
        "no answer: unknown, followed, never charged again",
        sale("tender", "sending"),
        lambda s: rules.charge_unanswered(s, OTN, "timed out"),
        state="tender",
        payment="UNKNOWN",
        event_name="payment",
    ),
    Row(
        "a part paid by cash, the rest by code: completes",
        sale("tender", "sending", tenders=1),
        lambda s: rules.answered(s, OTN, central("SUCCESS")),
        complete=True,
        paid_fen=400,
    ),
    # giving up
    Row(
        "the cashier cancels a payment in progress",
        sale("tender", "USERPAYING"),
        rules.cancel_payment,
        payment="USERPAYING",
        event_name="payment",
        voids=(OTN,),
    ),
    Row(
        "the void answered: not charged, back to the basket",
        sale("tender", "USERPAYING", cancel=True),
        lambda s: rules.void_answered(s, OTN, central("REVERSED")),
        state="basket",
        payment="REVERSED",
    ),
    Row(
        "the void of a paid payment: being reversed, the sale waits",
        sale("tender", "SUCCESS", cancel=True),
        lambda s: rules.void_answered(s, OTN, central("SUCCESS")),
        state="tender",
        payment="REVERSING",
    ),
    Row(
        "paid after the till gave it up: taken back, not a tender",
        sale("tender", "USERPAYING", cancel=True),
        lambda s: rules.answered(s, OTN, central("SUCCESS")),
        payment="SUCCESS",
        voids=(OTN,),
        paid_fen=0,
    ),
    Row(
        "past the limit the follower gives it up",
        sale("tender", "UNKNOWN"),
        lambda s: rules.given_up(s, OTN, "the customer did not confirm in time"),
        payment="UNKNOWN",
        voids=(OTN,),
    ),
    Row(
        "central never saw it and the till will not resend: marked for the void",
        sale("tender", "UNKNOWN"),
        lambda s: rules.not_seen(s, OTN),
        payment="UNKNOWN",
    ),
    Row("a sale cancelled with no money: nothing to void", sale(), rules.cancelled, state="cancelled"),
    Row(
        "a sale cancelled mid-payment voids the payment",
        sale("tender", "USERPAYING"),
        rules.cancelled,
        state="cancelled",
        event_name="cancelled",
        voids=(OTN,),
    ),
    # restarts
    Row(
        "a charge sending at the stop is unknown after it",
        sale("tender", "sending"),
        lambda s: rules.restored(s, voided=False),
        state="tender",
        payment="UNKNOWN",
        event_name="opened",
    ),
    Row(
        "paid in full but not journaled at the stop: completes",
        sale("tender", tenders=4),
        lambda s: rules.restored(s, voided=False),
        complete=True,
    ),
    Row(
        "voided just before the stop, a payment still being given up",
        sale("tender", "USERPAYING", cancel=True),
        lambda s: rules.restored(s, voided=True),
        state="cancelled",
        event_name=None,
    ),
    # refusals
    Row(
        "no basket, no payment",
        sale("idle"),
        lambda s: rules.take_tender(s, "cash", None, None, None),
        refusal=BasketMissing,
    ),
    Row(
        "one code payment at a time",
        sale("tender", "USERPAYING"),
        lambda s: rules.take_tender(s, "cash", None, None, None),
        refusal=PaymentInProgress,
    ),
    Row(
        "no basket change once paying",
        sale("tender", "USERPAYING"),
        lambda s: rules.set_basket(s, [WATER], ONLINE),
        refusal=PaymentStarted,
    ),
    Row("nothing to cancel", sale(), rules.cancel_payment, refusal=NoPaymentInProgress),
    Row(
        "a closed sale takes nothing",
        sale("closed"),
        lambda s: rules.set_redemption(s, 0, ONLINE),
        refusal=SaleClosed,
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_a_step_takes_the_sale_where_the_table_says(row: Row) -> None:
    before = row.before.model_copy(deep=True)
    if row.refusal is not None and row.state is None and row.payment is None:
        with pytest.raises(row.refusal):
            row.event(row.before)
        assert row.before == before, "a refused step leaves the sale as it was"
        return
    step = row.event(row.before)
    after = step.sale
    assert row.before == before, "the rules work on a copy"
    if row.state is not None:
        assert after.state == row.state
    if row.payment is not None:
        assert after.payments[-1].state == row.payment
    if row.event_name is not None:
        assert step.event == row.event_name
    assert step.voids == row.voids
    assert step.complete is row.complete
    if row.paid_fen is not None:
        assert after.paid_fen == row.paid_fen
    assert (type(step.refusal) if step.refusal else None) is row.refusal


def test_a_given_up_payment_leaves_the_sale_unsettled_until_its_void_is_answered() -> None:
    given_up = rules.answered(sale("tender", "USERPAYING", cancel=True), OTN, central("SUCCESS")).sale
    assert given_up.unsettled_payments and given_up.money_taken and given_up.paid_fen == 0


# --- members and prices -----------------------------------------------------------------------------------------


def test_a_gold_member_gets_the_tier_price_and_points_cannot_be_spent_on_a_payment_code_alone() -> None:
    found = rules.Found(GOLD, "payment_code", may_redeem=False)
    step = rules.identified(sale(), found, {}, ONLINE)
    assert step.sale.amount_due_fen == 360 and step.event == "member"
    with pytest.raises(RedemptionNotAllowed, match="member code"):
        rules.set_redemption(step.sale, 100, ONLINE)


def test_offline_the_day_cap_limits_the_points_a_member_may_spend() -> None:
    found = rules.Found(GOLD, "member_code", may_redeem=True)
    offline = rules.PricingFacts(POINTS, online=False, redeem_left_today=50)
    member = rules.identified(sale(), found, {}, offline).sale
    assert member.pricing is not None and member.pricing.max_redeemable_points == 50 and not member.online
    assert isinstance(member.member, SaleMember) and member.member.may_redeem


# --- the member's own coupons -------------------------------------------------------------------------------------


def held(code: str, amount_off_fen: int, threshold_fen: int = 0) -> CachedCoupon:
    later = datetime(2026, 12, 31, tzinfo=UTC)
    return CachedCoupon(
        code, f"减{amount_off_fen // 100}", "amount_off", amount_off_fen, 0, threshold_fen, None, T0, later, False
    )


def test_the_member_s_best_coupon_goes_on_by_itself_and_stays_off_once_the_cashier_takes_it_off() -> None:
    facts = rules.PricingFacts(POINTS, online=True, held=(held("C1", 50), held("C2", 100)))
    found = rules.Found(GOLD, "member_code", may_redeem=True, held=facts.held)
    member = rules.identified(sale(), found, {}, facts).sale
    assert [(c.code, c.auto, c.amount_off_fen) for c in member.coupons] == [("C2", True, 100)]
    assert [c.code for c in member.member.coupons] == ["C1", "C2"] if member.member else False
    off = rules.remove_coupon(member, "C2", facts).sale
    assert off.coupons == [] and off.pricing is not None and off.pricing.coupon_discount_fen == 0
    again = rules.set_basket(off, [WATER, WATER.model_copy(update={"sku": "6901234567893"})], facts).sale
    assert again.coupons == []  # the customer keeps their coupons for another day


def test_a_scanned_coupon_takes_the_place_of_the_till_s_own_and_the_limit_holds() -> None:
    facts = rules.PricingFacts(POINTS, online=True, held=(held("C2", 100),), coupons={"C1": held("C1", 50)})
    member = rules.identified(sale(), rules.Found(GOLD, "card", False, facts.held), {}, facts).sale
    scanned = rules.add_coupon(member, "C1", ("M1", held("C1", 50)), T0, True, facts, limit=1).sale
    assert [(c.code, c.auto) for c in scanned.coupons] == [("C1", False)]  # no room left for the till's own
    with pytest.raises(CouponRefused):
        rules.add_coupon(scanned, "C3", ("M1", held("C3", 30)), T0, True, facts, limit=1)
