"""One sale in progress at a till or kiosk, as data: what the customer buys, who they are, what they paid.

The checkout (agent.checkout) moves a sale through its states and saves it as JSON after every step; nothing
here talks to a database, a device or the network. Amounts are integer fen.

States: idle → member (optional) → basket → tender → paid → closed, or cancelled before paid. `paid` lasts only
within the step that journals the sale (its event); a client that polls sees `closed`, with `paid` true.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from agent.benefits import BasketLine, Pricing
from agent.code_payment import NOT_PAID, SENDING, TillPaymentState, is_final, is_settled
from agent.member_records import CachedCoupon

SaleState = Literal["idle", "member", "basket", "tender", "paid", "closed", "cancelled"]
OPEN_STATES = frozenset({"idle", "member", "basket", "tender"})
TenderKind = Literal["cash", "wechat", "alipay", "card", "other"]

TENDER_NAMES_ZH = {"cash": "现金", "wechat": "微信支付", "alipay": "支付宝", "card": "银行卡", "other": "其他"}


class TenderRefused(ValueError):
    """A tender that does not fit the sale; the message says why, for the cashier."""


def new_tender(
    remaining_fen: int, kind: str, amount_fen: int | None, tendered_fen: int | None, reference: str | None
) -> Tender:
    """A cash, card or other tender for a sale with `remaining_fen` left to pay. It pays at most what is left (by
    default all of it); only cash may be handed over in excess, and the excess is the change."""
    match kind:  # a match, not `in`: it narrows `kind` to the tender kinds for Tender below
        case "cash" | "card" | "other":
            pass
        case _:
            raise TenderRefused(f"unknown tender kind {kind!r}; one of code, cash, card, other")
    amount = remaining_fen if amount_fen is None else amount_fen
    if type(amount) is not int or not 0 < amount <= remaining_fen:
        raise TenderRefused(
            f"a {kind} tender pays ¥0.01 to ¥{remaining_fen / 100:.2f} of this sale, not {amount!r} fen"
        )
    if kind == "cash":
        tendered = amount if tendered_fen is None else tendered_fen
        if type(tendered) is not int or tendered < amount:
            raise TenderRefused(f"{tendered!r} fen handed over is less than the ¥{amount / 100:.2f} it should pay")
        return Tender(kind="cash", amount_fen=amount, tendered_fen=tendered, change_fen=tendered - amount)
    reference = (reference or "").strip()
    if not reference:
        raise TenderRefused(
            f"a {kind} tender needs the terminal's reference (trace number) for refunds and reconciliation"
        )
    return Tender(kind=kind, amount_fen=amount, tendered_fen=amount, reference=reference[:64])


class HeldCoupon(BaseModel):
    """A coupon the member holds and may use now, for the screens (valid dates, and whether it works offline)."""

    code: str
    title: str
    kind: str
    amount_off_fen: int
    percent_off: int
    threshold_fen: int
    valid_until: datetime
    usable_offline: bool

    @classmethod
    def of(cls, coupon: CachedCoupon) -> HeldCoupon:
        return cls.model_validate(coupon, from_attributes=True)  # the cache's record, by its field names


class SaleMember(BaseModel):
    id: str
    display_name: str
    tier: str
    tier_name: str = Field("", description="the tier as customers read it, e.g. 银卡会员 (points.tiers.<tier>.name)")
    points: int = Field(description="balance as last confirmed by central")
    phone_masked: str | None = None
    via: Literal["member_code", "card", "phone", "payment_code"]
    may_redeem: bool
    coupons: list[HeldCoupon] = Field(default_factory=list, description="coupons the member holds, usable now")


class SaleLine(BaseModel):
    sku: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1, max_length=40)
    qty: int
    unit_price_fen: int
    category: str = Field("", max_length=32)
    amount_fen: int | None = Field(None, description="after tier and coupon discounts; set by pricing")
    list_price_fen: int | None = Field(None, description="sold at another price than this one: a price override")

    @property
    def overridden(self) -> bool:
        return self.list_price_fen is not None and self.list_price_fen != self.unit_price_fen

    def basket_line(self) -> BasketLine:
        return BasketLine(self.sku, self.name, self.qty, self.unit_price_fen, self.category)


class SaleCoupon(BaseModel):
    code: str
    title: str
    amount_off_fen: int = 0
    auto: bool = Field(False, description="applied by the till from the member's coupons (not scanned)")


class PricingView(BaseModel):
    subtotal_fen: int
    tier_discount_fen: int
    coupon_discount_fen: int
    discount_fen: int
    points_redeemed: int
    points_value_fen: int
    amount_due_fen: int
    points_earned: int
    max_redeemable_points: int = Field(0, description="the most points this basket takes from this member now")

    @classmethod
    def of(cls, pricing: Pricing, max_redeemable_points: int = 0) -> PricingView:
        coupons = sum(fen for _, fen in pricing.coupon_discounts)
        return cls(
            subtotal_fen=pricing.subtotal_fen,
            tier_discount_fen=pricing.tier_discount_fen,
            coupon_discount_fen=coupons,
            discount_fen=pricing.discount_fen,
            points_redeemed=pricing.points_redeemed,
            points_value_fen=pricing.points_value_fen,
            amount_due_fen=pricing.amount_due_fen,
            points_earned=pricing.points_earned,
            max_redeemable_points=max_redeemable_points,
        )


class Tender(BaseModel):
    """Money taken. For cash `tendered_fen` is what was handed over and `change_fen` what went back."""

    kind: TenderKind
    amount_fen: int
    tendered_fen: int
    change_fen: int = 0
    reference: str | None = Field(None, description="card terminal trace no., provider trade no., ...")
    out_trade_no: str | None = None


class CodePayment(BaseModel):
    """One code payment attempt. The auth code itself is never kept: it is a bearer secret, used once."""

    out_trade_no: str
    provider: Literal["wechat", "alipay"]
    state: TillPaymentState
    amount_fen: int
    created_at: datetime
    provider_trade_no: str | None = None
    cancel_requested: bool = False  # the till gave it up: central is asked to void it
    void_answered: bool = False  # central has recorded the give-up (it answered the void)
    message: str | None = None
    message_zh: str | None = None

    @property
    def final(self) -> bool:
        return is_final(self.state)

    @property
    def settled(self) -> bool:
        """Nothing more to ask central (agent/code_payment.py)."""
        return is_settled(self.state, self.cancel_requested)

    @property
    def counted(self) -> bool:
        """Taken into account as possibly paid: anything but a definite no (sending/unknown count until known)."""
        return self.state not in NOT_PAID


class SalePoints(BaseModel):
    earned: int
    redeemed: int
    balance: int
    provisional: bool


class Sale(BaseModel):
    id: str = Field(description="the transaction id the sale is journaled under")
    station_id: str
    state: SaleState = "idle"
    version: int = 0
    created_at: datetime
    member: SaleMember | None = None
    guide_id: str | None = None
    lines: list[SaleLine] = Field(default_factory=list)
    coupons: list[SaleCoupon] = Field(default_factory=list)
    redeem_points: int = 0
    declined_coupons: list[str] = Field(default_factory=list, description="taken off by the cashier: not re-applied")
    pricing: PricingView | None = None
    tenders: list[Tender] = Field(default_factory=list)
    payments: list[CodePayment] = Field(default_factory=list)
    online: bool = True
    message: str | None = None
    transaction_id: str | None = None
    receipt_no: str | None = None
    receipt_job_id: str | None = None
    price_approved_by: str | None = Field(None, description="the supervisor who approved the basket's price overrides")

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def amount_due_fen(self) -> int:
        return self.pricing.amount_due_fen if self.pricing else 0

    @property
    def paid_fen(self) -> int:
        return sum(tender.amount_fen for tender in self.tenders)

    @property
    def remaining_fen(self) -> int:
        return max(0, self.amount_due_fen - self.paid_fen)

    @property
    def change_fen(self) -> int:
        return sum(tender.change_fen for tender in self.tenders)

    @property
    def payment(self) -> CodePayment | None:
        """The code payment in progress (or the last one), for the screen."""
        return self.payments[-1] if self.payments else None

    @property
    def unsettled_payments(self) -> list[CodePayment]:
        return [payment for payment in self.payments if not payment.settled]

    @property
    def money_taken(self) -> bool:
        return bool(self.tenders) or any(payment.counted and payment.state != SENDING for payment in self.payments)

    def points(self) -> SalePoints | None:
        if self.member is None or self.pricing is None:
            return None
        earned, redeemed = self.pricing.points_earned, self.pricing.points_redeemed
        return SalePoints(
            earned=earned,
            redeemed=redeemed,
            balance=self.member.points - redeemed + earned,
            provisional=not self.online,
        )

    def view(self, e_receipt_url: str | None = None, e_receipt_qr_svg: str | None = None) -> dict[str, Any]:
        """The session as the API and the screens see it (docs/checkout.md). The API's answer gives a paid sale its
        e-receipt link and that link's QR (made from the settings); an event's view leaves them null."""
        payment = self.payment
        return {
            **self.model_dump(mode="json", exclude={"payments", "redeem_points", "created_at", "declined_coupons"}),
            "created_at": self.created_at.isoformat(),
            "redeem_points": self.redeem_points,
            "paid_fen": self.paid_fen,
            "remaining_fen": self.remaining_fen,
            "paid": self.transaction_id is not None,
            "change_fen": self.change_fen,
            "payment": None if payment is None else payment.model_dump(mode="json"),
            "points": None if (points := self.points()) is None else points.model_dump(),
            "e_receipt_url": e_receipt_url,
            "e_receipt_qr_svg": e_receipt_qr_svg,
        }
