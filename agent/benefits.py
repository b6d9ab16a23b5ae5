"""Member benefits on a basket: tier discount, coupons, points redemption, and the points a sale earns.

Money is integer fen throughout. The rounding rules live here and nowhere else:

- A percentage of an amount is rounded half up to the fen (四舍五入): `percent_of`.
- Points earned are whole points, rounded down: whole yuan paid (rounded down) × points per yuan × the tier's
  multiplier in percent (rounded down).
- A discount shared out over the lines it applies to goes by largest remainder, so the lines' amounts add up to
  the total exactly and a refund of some lines gives back exactly what they cost.

Lines in an excluded category (tobacco, gift cards, ...) take no discount and earn no points; points may pay
for them. Redeeming points needs a member identified by member code or confirmed phone: a payer id obtained from
a payment code alone may not spend points (the payment provider requires it), so `may_redeem` comes from how the
member was identified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations

from agent.member_records import CachedCoupon
from agent.settings import PointsSettings

MAX_QTY = 999
MAX_UNIT_PRICE_FEN = 10_000_000  # ¥100,000: anything above is a typo, not a price


class BenefitError(ValueError):
    """The basket or a benefit cannot be applied as asked; the message says why, for the cashier."""


class BadBasket(BenefitError):
    pass


class CouponNotUsable(BenefitError):
    pass


class RedemptionRefused(BenefitError):
    pass


def percent_of(amount_fen: int, percent: int) -> int:
    """`percent` % of `amount_fen`, rounded half up to the fen."""
    return (amount_fen * percent * 2 + 100) // 200


def share_out(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` over `weights` in proportion, by largest remainder: the parts add up to `total` exactly."""
    whole = sum(weights)
    if whole == 0 or total == 0:
        return [0] * len(weights)
    parts = [total * w // whole for w in weights]
    remainders = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in remainders[: total - sum(parts)]:
        parts[i] += 1
    return parts


@dataclass(frozen=True)
class BasketLine:
    sku: str
    name: str
    qty: int
    unit_price_fen: int
    category: str = ""

    def __post_init__(self) -> None:
        if type(self.qty) is not int or not 1 <= self.qty <= MAX_QTY:
            raise BadBasket(
                f"{self.name or self.sku}: quantity must be a whole number from 1 to {MAX_QTY}, not {self.qty!r}"
            )
        if type(self.unit_price_fen) is not int or not 0 <= self.unit_price_fen <= MAX_UNIT_PRICE_FEN:
            raise BadBasket(
                f"{self.name or self.sku}: unit price must be 0 to {MAX_UNIT_PRICE_FEN} fen, not {self.unit_price_fen!r}"
            )

    @property
    def amount_fen(self) -> int:
        return self.qty * self.unit_price_fen


@dataclass(frozen=True)
class Tier:
    name: str
    discount_percent: int = 0
    earn_multiplier_percent: int = 100


@dataclass(frozen=True)
class Redemption:
    """What the member asks to redeem and what the agent knows of their points."""

    points: int
    balance: int
    may_redeem: bool
    left_today_offline: int | None = None  # the offline cap still open today; None when online


@dataclass(frozen=True)
class Pricing:
    subtotal_fen: int
    tier_discount_fen: int
    coupon_discounts: tuple[tuple[str, int], ...]  # (coupon code, fen off), in the order applied
    points_redeemed: int
    points_value_fen: int
    amount_due_fen: int  # what tenders must cover
    points_earned: int  # provisional until central confirms
    line_amounts_fen: tuple[int, ...]  # each line after tier and coupon discounts (before points)

    @property
    def discount_fen(self) -> int:
        return self.tier_discount_fen + sum(fen for _, fen in self.coupon_discounts)


def check_coupon(
    coupon: CachedCoupon, owner_id: str | None, member_id: str | None, now: datetime, online: bool
) -> None:
    """Refuse a coupon that is not this member's, not valid now, used, or not usable offline while offline."""
    if owner_id is not None and owner_id != member_id:
        raise CouponNotUsable(f"coupon {coupon.code} belongs to another member")
    if coupon.used_at is not None:
        raise CouponNotUsable(f"coupon {coupon.code} was already used")
    if not coupon.valid_from <= now < coupon.valid_until:
        raise CouponNotUsable(
            f"coupon {coupon.code} is not valid now (valid {coupon.valid_from:%Y-%m-%d} to {coupon.valid_until:%Y-%m-%d})"
        )
    if not online and not coupon.usable_offline:
        raise CouponNotUsable(f"coupon {coupon.code} can only be used while the till is online")


def price(
    lines: Sequence[BasketLine],
    rules: PointsSettings,
    tier: Tier | None = None,
    coupons: Sequence[CachedCoupon] = (),
    redemption: Redemption | None = None,
) -> Pricing:
    """Apply the member's benefits to a basket. Coupons must already have passed `check_coupon`."""
    if not lines:
        raise BadBasket("the basket is empty")
    amounts = [line.amount_fen for line in lines]
    subtotal = sum(amounts)
    eligible = [i for i, line in enumerate(lines) if line.category not in rules.excluded_categories]
    eligible_total = sum(amounts[i] for i in eligible)

    tier_discount = percent_of(eligible_total, tier.discount_percent) if tier else 0
    remaining = eligible_total - tier_discount
    applied: list[tuple[str, int]] = []
    for coupon in coupons:
        # A threshold holds for either kind: 满100减10 and 满50打95折 alike.
        if remaining < coupon.threshold_fen:
            raise CouponNotUsable(f"coupon {coupon.code} needs ¥{coupon.threshold_fen / 100:.2f} of eligible goods")
        if coupon.kind == "amount_off":
            off = min(coupon.amount_off_fen, remaining)
        else:
            off = percent_of(remaining, coupon.percent_off)
            if coupon.cap_fen is not None:
                off = min(off, coupon.cap_fen)
        applied.append((coupon.code, off))
        remaining -= off

    discount = eligible_total - remaining
    line_amounts = list(amounts)
    for i, part in zip(eligible, share_out(discount, [amounts[i] for i in eligible]), strict=True):
        line_amounts[i] -= part
    after_discounts = subtotal - discount

    points, value = 0, 0
    if redemption is not None and redemption.points:
        points, value = _redeem(redemption, rules, after_discounts)

    # Points are earned on money paid for eligible goods; points spent count against eligible goods first.
    paid_eligible = max(0, remaining - value)
    multiplier = tier.earn_multiplier_percent if tier else 100
    earned = (paid_eligible // 100) * rules.earn_per_yuan * multiplier // 100
    return Pricing(
        subtotal_fen=subtotal,
        tier_discount_fen=tier_discount,
        coupon_discounts=tuple(applied),
        points_redeemed=points,
        points_value_fen=value,
        amount_due_fen=after_discounts - value,
        points_earned=earned,
        line_amounts_fen=tuple(line_amounts),
    )


def usable_now(coupon: CachedCoupon, now: datetime, online: bool) -> bool:
    """A member's own coupon the till may apply now: unused, within its dates, offline-usable while offline."""
    try:
        check_coupon(coupon, None, None, now, online)
    except CouponNotUsable:
        return False
    return True


def best_coupons(
    lines: Sequence[BasketLine],
    rules: PointsSettings,
    tier: Tier | None,
    chosen: Sequence[CachedCoupon],
    held: Sequence[CachedCoupon],
    room: int,
) -> tuple[CachedCoupon, ...]:
    """The coupons the member holds to apply by themselves, next to the ones already `chosen` (scanned): the
    combination of at most `room` whose discount is largest, thresholds met. Ties go to the coupon that lapses
    first (used before it is lost), then by code. `held` must already be usable (`usable_now`)."""
    best: tuple[CachedCoupon, ...] = ()
    best_key: tuple[int, tuple[datetime, ...], tuple[str, ...]] | None = None
    for size in range(1, max(0, room) + 1):
        for combination in combinations(held, size):
            # Percentages first: a percentage of the larger amount, then the fixed amounts, is the better deal.
            ordered = sorted(combination, key=lambda c: (c.kind != "percent_off", c.code))
            try:
                off = sum(fen for _, fen in price(lines, rules, tier, [*chosen, *ordered]).coupon_discounts)
            except CouponNotUsable:
                continue
            if off <= 0:  # a coupon that takes nothing off this basket is kept for another
                continue
            key = (-off, tuple(sorted(c.valid_until for c in ordered)), tuple(c.code for c in ordered))
            if best_key is None or key < best_key:
                best, best_key = tuple(ordered), key
    return best


def max_redeemable(rules: PointsSettings, basket_fen: int, redemption: Redemption) -> int:
    """The most points this basket may take: the member's balance, the share cap, and the offline day cap."""
    by_share = percent_of(basket_fen, rules.max_redeem_percent) // rules.fen_per_point
    limits = [redemption.balance, by_share]
    if redemption.left_today_offline is not None:
        limits.append(redemption.left_today_offline)
    return max(0, min(limits))


def _redeem(redemption: Redemption, rules: PointsSettings, basket_fen: int) -> tuple[int, int]:
    if not redemption.may_redeem:
        raise RedemptionRefused("points can be spent only by a member identified by member code or confirmed phone")
    if redemption.points < 0:
        raise RedemptionRefused("points to redeem cannot be negative")
    most = max_redeemable(rules, basket_fen, redemption)
    if redemption.points > most:
        raise RedemptionRefused(f"at most {most} points can be redeemed on this basket")
    return redemption.points, redemption.points * rules.fen_per_point
