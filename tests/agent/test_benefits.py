"""Member benefits in integer fen: the amounts a cashier and a customer see, and the rules no basket can break."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.benefits import (
    BadBasket,
    BasketLine,
    CouponNotUsable,
    Redemption,
    RedemptionRefused,
    Tier,
    best_coupons,
    check_coupon,
    max_redeemable,
    percent_of,
    price,
    share_out,
    usable_now,
)
from agent.member_cache import CachedCoupon
from agent.settings import PointsSettings

NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
RULES = PointsSettings(earn_per_yuan=1, fen_per_point=1, max_redeem_percent=50, excluded_categories=("tobacco",))
GOLD = Tier("gold", discount_percent=5, earn_multiplier_percent=150)


def coupon(
    code="CP1",
    kind="amount_off",
    amount=1000,
    percent=0,
    threshold=10000,
    cap=None,
    offline=False,
    used=None,
    days=(-1, 30),
):
    return CachedCoupon(
        code,
        "满100减10",
        kind,
        amount,
        percent,
        threshold,
        cap,
        NOW + timedelta(days=days[0]),
        NOW + timedelta(days=days[1]),
        offline,
        used,
    )


def milk(qty=2):
    return BasketLine("6901", "纯牛奶 250ml", qty, 650)


def test_rounding_is_half_up_to_the_fen():
    assert percent_of(1990, 5) == 100  # 99.5 fen → 100
    assert percent_of(1989, 5) == 99  # 99.45 → 99
    assert share_out(100, [1, 1, 1]) == [34, 33, 33]
    assert share_out(0, [5, 5]) == [0, 0]


def test_gold_member_with_a_coupon_and_points():
    lines = [
        BasketLine("6902", "大米 5kg", 1, 5990),
        BasketLine("6903", "食用油 5L", 1, 7990),
        BasketLine("6904", "香烟", 1, 2500, "tobacco"),
    ]
    pricing = price(lines, RULES, GOLD, [coupon()], Redemption(points=500, balance=1200, may_redeem=True))
    assert pricing.subtotal_fen == 16480
    assert pricing.tier_discount_fen == 699  # 5 % of the 13,980 fen of eligible goods, half up
    assert pricing.coupon_discounts == (("CP1", 1000),)
    assert pricing.line_amounts_fen[2] == 2500  # tobacco takes no discount
    assert sum(pricing.line_amounts_fen) == 16480 - 1699
    assert (pricing.points_redeemed, pricing.points_value_fen) == (500, 500)
    assert pricing.amount_due_fen == 16480 - 1699 - 500
    # Earned on eligible money paid: (13980 - 1699 - 500) fen → 117 whole yuan × 1 × 150 % = 175 points.
    assert pricing.points_earned == 175


def test_percent_coupon_is_capped():
    pricing = price([milk(10)], RULES, None, [coupon(kind="percent_off", amount=0, percent=20, threshold=0, cap=500)])
    assert pricing.coupon_discounts == (("CP1", 500),)


def test_coupon_threshold_counts_eligible_goods_only():
    with pytest.raises(CouponNotUsable, match="needs ¥100.00"):
        price([milk(), BasketLine("6904", "香烟", 4, 2500, "tobacco")], RULES, None, [coupon()])


@pytest.mark.parametrize(
    "kwargs, owner, online, message",
    [
        ({}, "m2", True, "belongs to another member"),
        ({"used": NOW}, "m1", True, "already used"),
        ({"days": (-30, -1)}, "m1", True, "not valid now"),
        ({"days": (1, 30)}, "m1", True, "not valid now"),
        ({}, "m1", False, "only be used while the till is online"),
    ],
)
def test_coupons_that_cannot_be_used_are_refused_with_the_reason(kwargs, owner, online, message):
    with pytest.raises(CouponNotUsable, match=message):
        check_coupon(coupon(**kwargs), owner, "m1", NOW, online)
    check_coupon(coupon(offline=True), "m1", "m1", NOW, online=False)  # marked usable offline


def test_points_need_a_member_code_or_confirmed_phone():
    with pytest.raises(RedemptionRefused, match="member code or confirmed phone"):
        price([milk()], RULES, None, redemption=Redemption(points=10, balance=100, may_redeem=False))


def test_redemption_caps():
    basket = [milk(10)]  # 6,500 fen; 50 % cap = 3,250 points
    assert max_redeemable(RULES, 6500, Redemption(0, balance=10_000, may_redeem=True)) == 3250
    assert max_redeemable(RULES, 6500, Redemption(0, balance=800, may_redeem=True)) == 800
    assert max_redeemable(RULES, 6500, Redemption(0, balance=10_000, may_redeem=True, left_today_offline=300)) == 300
    with pytest.raises(RedemptionRefused, match="at most 3250 points"):
        price(basket, RULES, None, redemption=Redemption(points=3251, balance=10_000, may_redeem=True))


@pytest.mark.parametrize("qty, price_fen", [(0, 100), (-1, 100), (1000, 100), (1, -5), (1, 10**9), (1.5, 100)])
def test_absurd_baskets_are_refused(qty, price_fen):
    with pytest.raises(BadBasket):
        BasketLine("1", "x", qty, price_fen)
    with pytest.raises(BadBasket, match="empty"):
        price([], RULES)


lines_strategy = st.lists(
    st.builds(
        BasketLine,
        sku=st.just("1"),
        name=st.just("item"),
        qty=st.integers(1, 20),
        unit_price_fen=st.integers(0, 200_000),
        category=st.sampled_from(["", "", "tobacco"]),
    ),
    min_size=1,
    max_size=8,
)


@given(
    lines=lines_strategy,
    discount=st.integers(0, 90),
    multiplier=st.integers(0, 300),
    coupon_off=st.integers(0, 50_000),
    percent=st.integers(0, 100),
    balance=st.integers(0, 1_000_000),
    ask=st.floats(0, 1),
    offline_left=st.none() | st.integers(0, 5000),
)
def test_no_basket_breaks_the_money_rules(lines, discount, multiplier, coupon_off, percent, balance, ask, offline_left):
    tier = Tier("t", discount, multiplier)
    coupons = [
        coupon("A", amount=coupon_off, threshold=0),
        coupon("B", kind="percent_off", amount=0, percent=percent, threshold=0, cap=None),
    ]
    base = price(lines, RULES, tier, coupons)
    redemption = Redemption(0, balance, True, offline_left)
    most = max_redeemable(RULES, base.subtotal_fen - base.discount_fen, redemption)
    wanted = int(most * ask)
    pricing = price(lines, RULES, tier, coupons, Redemption(wanted, balance, True, offline_left))

    assert pricing.amount_due_fen >= 0 and pricing.points_earned >= 0
    assert all(amount >= 0 for amount in pricing.line_amounts_fen)
    assert sum(pricing.line_amounts_fen) == pricing.subtotal_fen - pricing.discount_fen
    assert pricing.amount_due_fen == sum(pricing.line_amounts_fen) - pricing.points_value_fen
    assert pricing.points_redeemed <= min(balance, most)
    assert pricing.points_value_fen <= percent_of(pricing.subtotal_fen - pricing.discount_fen, RULES.max_redeem_percent)
    for line, amount in zip(lines, pricing.line_amounts_fen, strict=True):
        if line.category == "tobacco":
            assert amount == line.amount_fen


# --- the member's coupons, applied by the till -----------------------------------------------------------------

BASKET_139_80 = [BasketLine("6901", "礼盒", 1, 13980)]

# held coupons (code, kind, amount or percent, threshold, days left) -> the ones applied, with room for one or two
BEST = [
    ("the larger discount wins", [("A", "amount_off", 1000, 10000, 30), ("B", "amount_off", 800, 5000, 30)], 1, ["A"]),
    (
        "a threshold not met is skipped",
        [("A", "amount_off", 3000, 20000, 30), ("B", "amount_off", 800, 5000, 30)],
        1,
        ["B"],
    ),
    (
        "a tie goes to the one lapsing first",
        [("A", "amount_off", 1000, 0, 30), ("B", "amount_off", 1000, 0, 3)],
        1,
        ["B"],
    ),
    ("9折 beats 减10 on ¥139.80", [("A", "amount_off", 1000, 0, 30), ("P", "percent_off", 10, 0, 30)], 1, ["P"]),
    (
        "two when the store allows two, percent first",
        [("A", "amount_off", 1000, 0, 30), ("P", "percent_off", 10, 0, 30)],
        2,
        ["P", "A"],
    ),
    ("nothing when nothing is held", [], 1, []),
]


@pytest.mark.parametrize(("name", "held", "room", "applied"), BEST, ids=[row[0] for row in BEST])
def test_the_member_s_best_coupons_are_applied(name, held, room, applied):
    coupons = [
        coupon(
            code,
            kind,
            amount if kind == "amount_off" else 0,
            amount if kind == "percent_off" else 0,
            threshold,
            days=(-1, days),
        )
        for code, kind, amount, threshold, days in held
    ]
    assert [c.code for c in best_coupons(BASKET_139_80, RULES, None, [], coupons, room)] == applied


def test_a_coupon_that_takes_nothing_off_is_kept_and_a_scanned_one_leaves_no_room():
    tobacco = [BasketLine("6930", "香烟", 1, 2500, "tobacco")]  # excluded: no coupon takes anything off it
    assert best_coupons(tobacco, RULES, None, [], [coupon(threshold=0)], 1) == ()
    scanned = coupon("S", threshold=0)
    assert best_coupons(BASKET_139_80, RULES, None, [scanned], [coupon("A", threshold=0)], 0) == ()


def test_usable_now_leaves_out_used_expired_and_online_only_coupons_while_offline():
    assert usable_now(coupon(), NOW, online=True)
    assert not usable_now(coupon(used=NOW), NOW, online=True)
    assert not usable_now(coupon(days=(-30, -1)), NOW, online=True)
    assert not usable_now(coupon(offline=False), NOW, online=False)
    assert usable_now(coupon(offline=True), NOW, online=False)
