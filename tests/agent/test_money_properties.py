"""Property tests of the money and points rules: whatever the basket, coupons, tenders and order of partial
refunds, amounts in fen never go negative, always add up to the fen, and respect the caps.

Pure functions only, no server and no database: journal records are built in memory the way the checkout
(`Checkout._sale_entry`) and the refunds (`Refunds.refund`) write them.
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from agent.benefits import (
    MAX_QTY,
    MAX_UNIT_PRICE_FEN,
    BasketLine,
    CouponNotUsable,
    Pricing,
    Redemption,
    RedemptionRefused,
    Tier,
    max_redeemable,
    percent_of,
    price,
    share_out,
)
from agent.errors import RefundRefused
from agent.journal import JournalRecord
from agent.member_cache import CachedCoupon
from agent.refunds import REFUND_ORDER, RefundLine, _plan
from agent.sale import PricingView, Sale, TenderRefused, new_tender
from agent.settings import PointsSettings

NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
CATEGORIES = ("", "", "food", "tobacco", "gift_card")


def properties(examples: int) -> settings:
    # deadline=None: a slow CI runner must not turn a passing property into a flaky failure.
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- strategies ----------------------------------------------------------------------------------------------

# Small amounts are where rounding bites; the largest ones are where a sum could overflow a careless bound.
fen = st.one_of(st.integers(0, 2_000), st.integers(0, MAX_UNIT_PRICE_FEN))

rules_st = st.builds(
    PointsSettings,
    earn_per_yuan=st.integers(0, 100),
    fen_per_point=st.one_of(st.sampled_from([1, 10, 100]), st.integers(1, 10_000)),
    max_redeem_percent=st.integers(0, 100),
    excluded_categories=st.sampled_from([(), ("tobacco",), ("tobacco", "gift_card")]),
)

line_st = st.builds(
    BasketLine,
    sku=st.just("6901234567892"),
    name=st.just("商品"),
    qty=st.one_of(st.integers(1, 5), st.integers(1, MAX_QTY)),
    unit_price_fen=fen,
    category=st.sampled_from(CATEGORIES),
)
basket_st = st.lists(line_st, min_size=1, max_size=8)

tier_st = st.none() | st.builds(
    Tier, name=st.just("gold"), discount_percent=st.integers(0, 90), earn_multiplier_percent=st.integers(0, 1000)
)


@st.composite
def coupons_st(draw: st.DrawFn) -> list[CachedCoupon]:
    """Amount-off coupons with a threshold (often none) and percent-off coupons with an optional cap."""
    coupons = []
    for i in range(draw(st.integers(0, 3))):
        valid = (NOW - timedelta(days=1), NOW + timedelta(days=30), True)
        if draw(st.booleans()):
            threshold = draw(st.just(0) | fen)
            coupons.append(CachedCoupon(f"CP{i}", "满减", "amount_off", draw(fen), 0, threshold, None, *valid))
        else:
            cap = draw(st.none() | fen)
            coupons.append(CachedCoupon(f"CP{i}", "折扣", "percent_off", 0, draw(st.integers(1, 100)), 0, cap, *valid))
    return coupons


def eligible(line: BasketLine, rules: PointsSettings) -> bool:
    return line.category not in rules.excluded_categories


def price_or_refusal(lines, rules, tier, coupons) -> Pricing | None:
    """Price without points; None when a coupon's threshold is not met, after checking that refusal was due."""
    try:
        return price(lines, rules, tier, coupons)
    except CouponNotUsable:
        pass
    # The first coupon that fails must be an amount-off one whose threshold exceeds the eligible goods left.
    eligible_total = sum(line.amount_fen for line in lines if eligible(line, rules))
    for k, coupon in enumerate(coupons):
        try:
            price(lines, rules, tier, coupons[: k + 1])
        except CouponNotUsable:
            before = price(lines, rules, tier, coupons[:k])
            assert coupon.kind == "amount_off"
            assert eligible_total - before.discount_fen < coupon.threshold_fen
            return None
    raise AssertionError("price() refused a coupon but every prefix of the coupons was accepted")


# --- percent_of and share_out --------------------------------------------------------------------------------


@properties(500)
@given(amount=st.one_of(st.integers(0, 10_000), st.integers(0, 10**12)), percent=st.integers(0, 1000))
def test_percent_of_rounds_half_up_to_the_fen(amount, percent):
    exact = Decimal(amount * percent) / 100
    assert percent_of(amount, percent) == int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@properties(300)
@given(
    total=st.one_of(st.integers(0, 100), st.integers(0, 10**10)),
    weights=st.lists(st.one_of(st.integers(0, 3), st.integers(0, 10**7)), min_size=1, max_size=20).filter(any),
)
def test_share_out_adds_up_and_stays_within_a_fen_of_the_exact_share(total, weights):
    parts = share_out(total, weights)
    assert len(parts) == len(weights)
    assert sum(parts) == total
    whole = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        assert abs(part - Fraction(total * weight, whole)) < 1
        if weight == 0:
            assert part == 0


# --- price ---------------------------------------------------------------------------------------------------


@properties(400)
@given(lines=basket_st, rules=rules_st, tier=tier_st, coupons=coupons_st())
def test_discounts_add_up_and_never_exceed_the_eligible_goods(lines, rules, tier, coupons):
    pricing = price_or_refusal(lines, rules, tier, coupons)
    if pricing is None:
        return
    subtotal = sum(line.amount_fen for line in lines)
    eligible_total = sum(line.amount_fen for line in lines if eligible(line, rules))

    assert pricing.subtotal_fen == subtotal
    assert pricing.tier_discount_fen >= 0
    assert all(off >= 0 for _, off in pricing.coupon_discounts)
    assert [code for code, _ in pricing.coupon_discounts] == [c.code for c in coupons]
    assert pricing.discount_fen <= eligible_total
    for coupon, (_, off) in zip(coupons, pricing.coupon_discounts, strict=True):
        if coupon.kind == "amount_off":
            assert off <= coupon.amount_off_fen
        elif coupon.cap_fen is not None:
            assert off <= coupon.cap_fen

    assert all(amount >= 0 for amount in pricing.line_amounts_fen)
    assert sum(pricing.line_amounts_fen) == subtotal - pricing.tier_discount_fen - sum(
        off for _, off in pricing.coupon_discounts
    )
    for line, amount in zip(lines, pricing.line_amounts_fen, strict=True):
        assert amount <= line.amount_fen
        if not eligible(line, rules):
            assert amount == line.amount_fen

    assert (pricing.points_redeemed, pricing.points_value_fen) == (0, 0)
    assert pricing.amount_due_fen == subtotal - pricing.discount_fen >= 0
    assert pricing.points_earned >= 0
    multiplier = tier.earn_multiplier_percent if tier else 100
    assert (
        pricing.points_earned
        <= (eligible_total - pricing.discount_fen) // 100 * rules.earn_per_yuan * multiplier // 100
    )


@properties(300)
@given(
    data=st.data(),
    lines=basket_st,
    rules=rules_st,
    tier=tier_st,
    coupons=coupons_st(),
    balance=st.one_of(st.integers(0, 1_000), st.integers(-100, 10**8)),
    offline_left=st.none() | st.integers(0, 5_000),
    may_redeem=st.booleans(),
)
def test_points_redeem_only_within_the_caps(data, lines, rules, tier, coupons, balance, offline_left, may_redeem):
    base = price_or_refusal(lines, rules, tier, coupons)
    if base is None:
        return
    basket = base.subtotal_fen - base.discount_fen
    most = max_redeemable(rules, basket, Redemption(0, balance, may_redeem, offline_left))
    assert 0 <= most <= max(balance, 0)
    if offline_left is not None:
        assert most <= offline_left

    points = data.draw(
        st.one_of(st.integers(0, most), st.integers(most + 1, most + 10**6), st.just(most), st.just(most + 1)),
        label="points",
    )
    redemption = Redemption(points, balance, may_redeem, offline_left)
    try:
        pricing = price(lines, rules, tier, coupons, redemption)
    except RedemptionRefused:
        assert points > most or (points and not may_redeem)
        return
    assert points <= most and (may_redeem or points == 0)

    assert pricing.points_redeemed == points
    assert pricing.points_value_fen == points * rules.fen_per_point
    # The cap is max_redeem_percent of the basket after discounts, rounded half up to the fen: never more
    # than half a fen above the exact share, and never more than the basket itself.
    assert pricing.points_value_fen <= percent_of(basket, rules.max_redeem_percent)
    assert pricing.points_value_fen * 100 * 2 <= basket * rules.max_redeem_percent * 2 + 100
    assert pricing.points_value_fen <= basket
    assert pricing.amount_due_fen == basket - pricing.points_value_fen >= 0
    # Points change what is paid, not the discounts nor the lines' amounts.
    assert pricing.line_amounts_fen == base.line_amounts_fen
    assert pricing.coupon_discounts == base.coupon_discounts
    # Spending points never earns more points.
    assert 0 <= pricing.points_earned <= base.points_earned


@properties(150)
@given(
    lines=st.lists(line_st.map(lambda line: dataclasses.replace(line, category="tobacco")), min_size=1, max_size=5),
    rules=rules_st.map(lambda rules: rules.model_copy(update={"excluded_categories": ("tobacco",)})),
    tier=tier_st,
    balance=st.integers(0, 10**8),
)
def test_excluded_goods_earn_no_points_and_take_no_discount(lines, rules, tier, balance):
    coupons = [
        CachedCoupon(
            "CP0", "9折", "percent_off", 0, 10, 0, None, NOW - timedelta(days=1), NOW + timedelta(days=1), True
        )
    ]
    basket = sum(line.amount_fen for line in lines)
    most = max_redeemable(rules, basket, Redemption(0, balance, True))
    pricing = price(lines, rules, tier, coupons, Redemption(most, balance, True))
    assert pricing.points_earned == 0
    assert pricing.discount_fen == 0
    assert pricing.line_amounts_fen == tuple(line.amount_fen for line in lines)
    assert pricing.amount_due_fen == basket - most * rules.fen_per_point >= 0  # points may pay for them


@properties(200)
@given(lines=basket_st, rules=rules_st, points=st.integers(1, 10**6), balance=st.integers(0, 10**8))
def test_a_member_not_identified_by_code_or_phone_cannot_redeem(lines, rules, points, balance):
    with pytest.raises(RedemptionRefused, match="member code or confirmed phone"):
        price(lines, rules, None, (), Redemption(points, balance, may_redeem=False))


# --- tenders -------------------------------------------------------------------------------------------------


@st.composite
def tender_attempt(draw: st.DrawFn, remaining: int) -> tuple[str, int | None, int | None, str | None]:
    """A cashier's tender: mostly sensible, sometimes zero, negative, above what is left, short cash, no reference."""
    kind = draw(st.sampled_from(["cash", "cash", "card", "other", "wechat", "voucher"]))
    amount = draw(
        st.one_of(
            st.none(),
            st.just(remaining),
            st.integers(1, max(remaining, 1)),
            st.integers(1, max(remaining // 10, 1)),
            st.just(0),
            st.integers(-(10**6), -1),
            st.integers(remaining + 1, remaining + 10**6),
        )
    )
    paying = remaining if amount is None else amount
    tendered = draw(
        st.one_of(
            st.none(),
            st.just(paying),
            st.integers(paying, paying + 10_000),  # change to give
            st.integers(paying - 10_000, paying - 1),  # short
        )
    )
    reference = draw(st.sampled_from([None, "", "TRACE000123", "X" * 80]))
    return kind, amount, tendered, reference


@properties(200)
@given(data=st.data(), due=st.one_of(st.integers(0, 1_000), st.integers(0, 10**9)))
def test_tenders_never_pay_more_than_due_and_only_cash_gives_change(data, due):
    sale = Sale(
        id="S1",
        station_id="T01",
        created_at=NOW,
        pricing=PricingView(
            subtotal_fen=due,
            tier_discount_fen=0,
            coupon_discount_fen=0,
            discount_fen=0,
            points_redeemed=0,
            points_value_fen=0,
            amount_due_fen=due,
            points_earned=0,
        ),
    )
    for _ in range(data.draw(st.integers(0, 12), label="attempts")):
        remaining = sale.remaining_fen
        kind, amount, tendered, reference = data.draw(tender_attempt(remaining), label="attempt")
        paying = remaining if amount is None else amount
        acceptable = (
            kind in ("cash", "card", "other")
            and 0 < paying <= remaining
            and ((tendered is None or tendered >= paying) if kind == "cash" else bool(reference))
        )
        try:
            tender = new_tender(remaining, kind, amount, tendered, reference)
        except TenderRefused:
            assert not acceptable, (kind, amount, tendered, reference, remaining)
            continue
        assert acceptable, (kind, amount, tendered, reference, remaining)
        assert tender.kind == kind and tender.amount_fen == paying
        if kind != "cash":
            assert tender.reference == reference[:64]
        sale.tenders.append(tender)
        assert_tenders_fit(sale, due)

    if sale.remaining_fen:  # the rest in cash, exactly
        sale.tenders.append(new_tender(sale.remaining_fen, "cash", None, None, None))
    assert_tenders_fit(sale, due)
    assert sale.paid_fen == due


def assert_tenders_fit(sale: Sale, due: int) -> None:
    assert 0 <= sale.paid_fen <= due
    assert sale.remaining_fen == due - sale.paid_fen
    for tender in sale.tenders:
        assert tender.amount_fen > 0
        assert tender.change_fen == tender.tendered_fen - tender.amount_fen >= 0
        if tender.kind != "cash":
            assert tender.change_fen == 0
    assert sale.change_fen == sum(t.tendered_fen - t.amount_fen for t in sale.tenders if t.kind == "cash")


# --- refunds -------------------------------------------------------------------------------------------------


def journal_record(
    kind: str, seq: int, total_fen: int, points_earned: int, points_redeemed: int, body: dict
) -> JournalRecord:
    return JournalRecord(
        seq=seq,
        id=f"{kind}-{seq}",
        station_id="T01",
        kind=kind,
        business_day=date(2026, 11, 23),
        created_at=NOW,
        member_id="M1",
        total_fen=total_fen,
        points_earned=points_earned,
        points_redeemed=points_redeemed,
        body=body,
        prev_hash="0" * 64,
        hash="0" * 64,
    )


@st.composite
def journaled_sale(draw: st.DrawFn, rules: st.SearchStrategy[PointsSettings] = rules_st) -> JournalRecord:
    """A sale priced by `price()` and paid in full by up to four tenders, journaled like `Checkout._sale_entry`."""
    rules = draw(rules)
    lines = draw(st.lists(line_st, min_size=1, max_size=6))
    tier = draw(tier_st)
    coupons = draw(coupons_st())
    base = price_or_refusal(lines, rules, tier, coupons)
    if base is None:
        coupons = []
        base = price(lines, rules, tier)
    most = max_redeemable(rules, base.subtotal_fen - base.discount_fen, Redemption(0, 10**9, True))
    points = draw(st.sampled_from([0, most, most // 2]) | st.integers(0, most))
    pricing = price(lines, rules, tier, coupons, Redemption(points, 10**9, True))

    due = pricing.amount_due_fen
    cuts = sorted(draw(st.lists(st.integers(0, due), max_size=3)))
    amounts = [b - a for a, b in zip([0, *cuts], [*cuts, due], strict=True) if b > a]
    tenders = []
    for i, amount in enumerate(amounts):
        kind = draw(st.sampled_from(["cash", "wechat", "alipay", "card", "other"]))
        if kind == "cash":
            tendered = amount + draw(st.just(0) | st.integers(0, 10_000))
            tenders.append(
                {"kind": "cash", "amount_fen": amount, "tendered_fen": tendered, "change_fen": tendered - amount}
            )
        else:
            tender = {
                "kind": kind,
                "amount_fen": amount,
                "tendered_fen": amount,
                "change_fen": 0,
                "reference": f"REF{i}",
            }
            if kind in ("wechat", "alipay"):
                tender["out_trade_no"] = f"{i:032x}"
            tenders.append(tender)
    return sale_record(lines, pricing, tenders, rules.excluded_categories)


def sale_record(
    lines: list[BasketLine], pricing: Pricing, tenders: list[dict], excluded: tuple[str, ...] = ()
) -> JournalRecord:
    assert sum(t["amount_fen"] for t in tenders) == pricing.amount_due_fen
    body = {
        "receipt_no": "T012611230001",
        "online": True,
        "guide_id": None,
        "lines": [
            {
                "sku": line.sku,
                "name": line.name,
                "qty": line.qty,
                "unit_price_fen": line.unit_price_fen,
                "amount_fen": amount,
                "category": line.category,
                "earns_points": line.category not in excluded,
            }
            for line, amount in zip(lines, pricing.line_amounts_fen, strict=True)
        ],
        "tenders": tenders,
        "coupons": [{"code": code, "title": "", "amount_off_fen": off} for code, off in pricing.coupon_discounts],
        "subtotal_fen": pricing.subtotal_fen,
        "tier_discount_fen": pricing.tier_discount_fen,
        "discount_fen": pricing.discount_fen,
        "points_value_fen": pricing.points_value_fen,
        "member": {"display_name": "王*明", "tier": "gold", "phone_masked": None, "via": "member_code"},
        "points_balance": 1000,
    }
    return journal_record("sale", 1, pricing.amount_due_fen, pricing.points_earned, pricing.points_redeemed, body)


def refund_record(sale: JournalRecord, seq: int, plan) -> JournalRecord:
    """The refund row as `Refunds.refund` writes it (without the code payments' out_refund_no and state)."""
    body = {
        "original_id": sale.id,
        "original_receipt_no": sale.body["receipt_no"],
        "receipt_no": f"R{sale.body['receipt_no']}-{seq - 1}",
        "reason": None,
        "online": True,
        "lines": plan.lines,
        "tenders": [dict(t) for t in plan.tenders],
        "coupons": [],
        "subtotal_fen": sum(line["amount_fen"] for line in plan.lines),
        "member": sale.body["member"],
        "points_balance": 1000,
    }
    return journal_record("refund", seq, plan.money_fen, plan.points_taken_back, plan.points_returned, body)


@properties(150)
@given(data=st.data(), sale=journaled_sale())
def test_partial_refunds_give_back_exactly_what_was_paid(data, sale):
    sold = sale.body["lines"]
    paid = [t["amount_fen"] for t in sale.body["tenders"]]
    earlier: list[JournalRecord] = []
    left = [line["qty"] for line in sold]

    while any(left):
        # Sometimes the cashier asks for more than is left: refused, and nothing changes.
        if data.draw(st.integers(0, 4), label="overask") == 0:
            i = data.draw(st.integers(0, len(sold) - 1), label="line")
            too_many = [RefundLine(i, left[i] + data.draw(st.integers(1, 5), label="extra"))]
            if left[i] and data.draw(st.booleans(), label="split"):  # the same line asked twice, together too many
                too_many = [RefundLine(i, left[i]), RefundLine(i, too_many[0].qty - left[i])]
            before = (copy.deepcopy(sale.body), [copy.deepcopy(r.body) for r in earlier])
            with pytest.raises(RefundRefused):
                _plan(sale, earlier, too_many)
            assert (sale.body, [r.body for r in earlier]) == before

        if data.draw(st.integers(0, 9), label="whole") == 0:
            asked, wanted = None, list(left)
        else:
            open_lines = [i for i, n in enumerate(left) if n]
            chosen = data.draw(st.lists(st.sampled_from(open_lines), min_size=1, unique=True), label="lines")
            asked = [RefundLine(i, data.draw(st.integers(1, left[i]), label="qty")) for i in chosen]
            wanted = [0] * len(sold)
            for item in asked:
                wanted[item.line] = item.qty

        plan = _plan(sale, earlier, asked)
        assert plan.money_fen >= 0 and plan.points_taken_back >= 0 and plan.points_returned >= 0
        assert sum(t["amount_fen"] for t in plan.tenders) == plan.money_fen
        assert all(t["amount_fen"] > 0 for t in plan.tenders)
        assert {line["line"]: line["qty"] for line in plan.lines} == {i: n for i, n in enumerate(wanted) if n}
        assert all(line["amount_fen"] >= 0 for line in plan.lines)
        earlier.append(refund_record(sale, len(earlier) + 2, plan))
        left = [n - w for n, w in zip(left, wanted, strict=True)]

        given_back = [0] * len(paid)
        for refund in earlier:
            for tender in refund.body["tenders"]:
                assert tender["kind"] == sale.body["tenders"][tender["tender"]]["kind"]
                given_back[tender["tender"]] += tender["amount_fen"]
        assert all(back <= p for back, p in zip(given_back, paid, strict=True))
        # Money goes back the way it came, code payments first, cash last: a tender later in that order is
        # used only once every tender before it has given back all it took.
        used = [t["tender"] for t in plan.tenders]
        for i in used:
            rank = REFUND_ORDER.index(sale.body["tenders"][i]["kind"])
            for j, tender in enumerate(sale.body["tenders"]):
                if REFUND_ORDER.index(tender["kind"]) < rank:
                    assert given_back[j] == paid[j]

    assert sum(r.total_fen for r in earlier) == sale.total_fen
    assert sum(r.points_earned for r in earlier) == sale.points_earned
    assert sum(r.points_redeemed for r in earlier) == sale.points_redeemed
    assert given_back == paid
    for i, line in enumerate(sold):
        refunded = [item for r in earlier for item in r.body["lines"] if item["line"] == i]
        assert sum(item["qty"] for item in refunded) == line["qty"]
        assert sum(item["amount_fen"] for item in refunded) == line["amount_fen"]
    with pytest.raises(RefundRefused, match="nothing is left"):
        _plan(sale, earlier, None)


@properties(100)
@given(sale=journaled_sale(), line=st.integers(-3, 10), qty=st.integers(-3, 0))
def test_a_refund_of_no_line_or_no_quantity_is_refused(sale, line, qty):
    before = copy.deepcopy(sale.body)
    with pytest.raises(RefundRefused, match="at least 1"):
        _plan(sale, [], [RefundLine(0, qty)])
    if not 0 <= line < len(sale.body["lines"]):
        with pytest.raises(RefundRefused, match="the sale has lines"):
            _plan(sale, [], [RefundLine(line, 1)])
    assert sale.body == before


# --- found by these properties and fixed: kept so they stay fixed ------------------------------------------------

TOBACCO_EXCLUDED = PointsSettings(
    earn_per_yuan=1, fen_per_point=1, max_redeem_percent=50, excluded_categories=("tobacco",)
)


def milk_and_cigarettes() -> JournalRecord:
    lines = [BasketLine("6901", "纯牛奶", 1, 10000), BasketLine("6902", "香烟", 1, 10000, "tobacco")]
    pricing = price(lines, TOBACCO_EXCLUDED)  # 100 points, earned on the milk alone
    return sale_record(
        lines,
        pricing,
        [{"kind": "cash", "amount_fen": 20000, "tendered_fen": 20000, "change_fen": 0}],
        TOBACCO_EXCLUDED.excluded_categories,
    )


@properties(100)
@given(sale=journaled_sale(rules=st.just(TOBACCO_EXCLUDED)))
@example(sale=milk_and_cigarettes())
def test_refunding_every_good_that_earned_points_takes_them_all_back(sale):
    earning = [RefundLine(i, line["qty"]) for i, line in enumerate(sale.body["lines"]) if line["category"] != "tobacco"]
    assume(earning)
    assert _plan(sale, [], earning).points_taken_back == sale.points_earned


@properties(50)
@given(kind=st.sampled_from(["card", "other"]), blank=st.text(" \t\u3000", min_size=1, max_size=4))
@example(kind="card", blank=" ")
def test_a_card_or_other_tender_needs_a_reference_with_something_in_it(kind, blank):
    with pytest.raises(TenderRefused):
        new_tender(100, kind, None, None, blank)
