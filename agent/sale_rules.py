"""The sale's rules: pure functions of the sale, an event and the facts it needs, returning the new sale and what to
do next (a `Step`). They read no clock, database, device or network; the checkout (agent/checkout.py) gathers the
facts, keeps the step, carries out its actions and tells the screens.

Each function works on a copy: a refused step raises an `AgentError` and leaves the caller's sale as it was.
Pricing (agent/benefits.py) and the code payment's transition table (agent/code_payment.py) are called, not
repeated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

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
    price,
)
from agent.code_payment import (
    FAILED,
    REVERSED,
    SENDING,
    SUCCESS,
    USERPAYING,
    WAITING,
    PaymentEvent,
    target,
)
from agent.errors import (
    AgentError,
    ApprovalRequired,
    BasketMissing,
    BasketRefused,
    CouponRefused,
    NoPaymentInProgress,
    NotFound,
    NothingLeftToPay,
    Offline,
    PaymentFailed,
    PaymentInProgress,
    PaymentStarted,
    ProductNotInCatalogue,
    RedemptionNotAllowed,
    SaleClosed,
    TenderNotTaken,
    UnknownCode,
)
from agent.member_records import CachedCoupon, CachedMember
from agent.sale import (
    CodePayment,
    HeldCoupon,
    PricingView,
    Sale,
    SaleCoupon,
    SaleLine,
    SaleMember,
    Tender,
    TenderRefused,
    new_tender,
)
from agent.settings import CatalogItem, PointsSettings
from central.contract import Payment, PaymentProvider

OFFLINE_ZH = "网络中断，暂时无法使用微信或支付宝付款，请使用现金或银行卡"
OFFLINE_EN = "the network is down: code payment is not possible now; please pay in cash or by card"
# Prefixes 20-29: numbers a store gives its own goods, mostly weighed, with the price or weight inside; sold at a
# kiosk only when its catalogue lists the number (and not as weighed).
IN_STORE_PREFIXES = frozenset(f"2{d}" for d in range(10))
NOT_PAID_ZH = "支付失败，请重试或换一种方式付款"
VIA = {"member_code": "member code", "card": "card", "phone": "phone number", "payment_code": "payment code"}


@dataclass(frozen=True)
class Step:
    """A decided step: the new sale and what the checkout does with it."""

    sale: Sale
    event: str | None = None  # what the screens hear; None: nothing
    save: bool = True  # keep the sale on disk (an open sale, or one whose payments are not settled)
    voids: tuple[str, ...] = ()  # code payments to give up at central now, by out_trade_no
    complete: bool = False  # paid in full: journal it, queue its receipt, close it
    refusal: AgentError | None = None  # raised to the caller once the step is kept (a failed payment is recorded)


@dataclass(frozen=True)
class PricingFacts:
    """What pricing needs beyond the sale, read by the checkout just before the step."""

    points: PointsSettings
    online: bool
    coupons: Mapping[str, CachedCoupon] = field(default_factory=dict)  # the sale's coupons the cache knows, by code
    redeem_left_today: int | None = None  # offline: points the member may still spend today; None online
    held: tuple[CachedCoupon, ...] = ()  # the member's own coupons usable now (online or offline as it is)
    coupons_per_sale: int = 1


@dataclass(frozen=True)
class Found:
    """A member as identification found them (agent/identify.py), and whether points may be spent on it."""

    member: CachedMember | None
    via: str
    may_redeem: bool
    held: tuple[CachedCoupon, ...] = ()  # the member's coupons usable now, shown with the member
    tier_name: str = ""  # the member's tier as customers read it


# --- guards ---------------------------------------------------------------------------------------------------


def open_or_refuse(sale: Sale) -> None:
    if not sale.is_open:
        raise SaleClosed(f"session {sale.id} is {sale.state}: nothing more can be done in it")


def no_money_yet(sale: Sale, what: str) -> None:
    if sale.money_taken or sale.unsettled_payments:
        raise PaymentStarted(f"cannot {what} after payment has started: cancel the sale to start again")


def ready_to_pay(sale: Sale) -> None:
    if sale.pricing is None:
        raise BasketMissing("set the basket before taking payment", "请先结算商品")
    if sale.unsettled_payments:
        raise PaymentInProgress(
            "a code payment is still in progress: wait for it, or cancel it first", "正在支付中，请稍候"
        )
    if sale.remaining_fen <= 0:
        raise NothingLeftToPay("this sale is paid in full: nothing is left to pay")


def unknown_code(display: str) -> UnknownCode:
    return UnknownCode(f"unknown code {display!r}: not a member, payment, card, coupon or product code", "无法识别的码")


# --- the basket, the member, coupons and points ------------------------------------------------------------


def opened(sale_id: str, station_id: str, now: datetime, online: bool) -> Step:
    sale = Sale(id=sale_id, station_id=station_id, created_at=now, online=online)
    sale.message = "sale opened" + ("" if online else " (offline: cash and card only)")
    return Step(sale, "opened")


def set_basket(
    sale: Sale,
    lines: Sequence[SaleLine],
    facts: PricingFacts | None,
    approved_by: str | None = None,
    approval_needed: bool = False,
) -> Step:
    """The POS's basket, whole. A line at another price than its `list_price_fen` is a price override: one not
    already on the sale needs a supervisor when `approval_needed` (the basket is sent whole at every change, so an
    override approved once is not asked again)."""
    open_or_refuse(sale)
    no_money_yet(sale, "change the basket")
    try:
        for line in lines:
            line.basket_line()  # validates quantity and price
            if line.list_price_fen is not None and line.list_price_fen < 0:
                raise BadBasket(f"line {line.sku}: the list price cannot be negative")
    except BadBasket as exc:
        raise BasketRefused(str(exc)) from None
    if not lines:
        raise BasketRefused("the basket is empty")
    approved = {_override(line) for line in sale.lines if line.overridden}
    new_overrides = [line for line in lines if line.overridden and _override(line) not in approved]
    if new_overrides and approval_needed and approved_by is None:
        raise ApprovalRequired.of("price_override")
    sale = sale.model_copy(deep=True)
    sale.lines = [line.model_copy() for line in lines]
    if new_overrides and approved_by is not None:
        sale.price_approved_by = approved_by
    if not any(line.overridden for line in sale.lines):
        sale.price_approved_by = None
    reprice(sale, facts)
    sale.state = "basket"
    sale.message = f"{len(lines)} line(s), amount due ¥{sale.amount_due_fen / 100:.2f}"
    return changed(sale, "basket")


def _override(line: SaleLine) -> tuple[str, int, int | None]:
    return line.sku, line.unit_price_fen, line.list_price_fen


def add_product(sale: Sale, gtin: str, item: CatalogItem | None, facts: PricingFacts | None) -> Step:
    if (item is None and gtin[:2] in IN_STORE_PREFIXES) or (item is not None and item.weighed):
        raise ProductNotInCatalogue(
            f"product {gtin} is weighed or priced in store: the customer takes it to a cashier",
            "称重或店内标价商品请到人工收银台结算",
        )
    if item is None:
        raise ProductNotInCatalogue(
            f"product {gtin} is not in this station's catalogue: the POS adds items", "该商品无法在此结算"
        )
    no_money_yet(sale, "change the basket")
    sale = sale.model_copy(deep=True)
    for line in sale.lines:
        if line.sku == gtin:
            line.qty += 1
            break
    else:
        sale.lines.append(
            SaleLine(sku=gtin, name=item.name, qty=1, unit_price_fen=item.price_fen, category=item.category)
        )
    reprice(sale, facts)
    sale.state = "basket"
    sale.message = f"{item.name} added"
    return changed(sale, "basket")


def set_quantity(sale: Sale, index: int, qty: int, facts: PricingFacts | None) -> Step:
    """The customer changes a line's quantity at the kiosk, or takes it off (0). Prices stay the catalogue's."""
    open_or_refuse(sale)
    no_money_yet(sale, "change the basket")
    if not 0 <= index < len(sale.lines):
        raise NotFound(f"the sale has no line {index}")
    sale = sale.model_copy(deep=True)
    if qty == 0:
        removed = sale.lines.pop(index)
        sale.message = f"{removed.name} removed"
    else:
        sale.lines[index].qty = qty
        try:
            sale.lines[index].basket_line()  # validates the quantity
        except BadBasket as exc:
            raise BasketRefused(str(exc)) from None
        sale.message = f"{sale.lines[index].name} × {qty}"
    if sale.lines:
        reprice(sale, facts)
        sale.state = "basket"
    else:
        sale.pricing = None
        sale.state = "member" if sale.member is not None else "idle"
    return changed(sale, "basket")


def identified(
    sale: Sale, found: Found, owners: Mapping[str, str | None], facts: PricingFacts | None, save: bool = True
) -> Step:
    """The customer is `found` (or found not to be a member). `owners`: who holds each of the sale's coupons."""
    sale = sale.model_copy(deep=True)
    member = found.member
    if member is None:
        sale.message = "the payer is not a member yet"
        return changed(sale, "member")
    again = sale.member if sale.member is not None and sale.member.id == member.id else None
    may_redeem = found.may_redeem or (again is not None and again.may_redeem)
    if not (again is not None and may_redeem):
        sale.redeem_points = 0
    sale.member = SaleMember(
        id=member.id,
        display_name=member.display_name,
        tier=member.tier,
        tier_name=found.tier_name or member.tier,
        points=member.points,
        phone_masked=member.phone_masked,
        via=found.via,  # type: ignore[arg-type]  # one of identify.Via, checked by SaleMember
        may_redeem=may_redeem,
        coupons=[HeldCoupon.of(c) for c in found.held],
    )
    # Coupons of another member leave with the member they belonged to.
    sale.coupons = [c for c in sale.coupons if owners.get(c.code) in (None, member.id)]
    if sale.state == "idle":
        sale.state = "member"
    if sale.lines:
        reprice(sale, facts)
    sale.message = f"member {member.display_name} ({member.tier or 'no tier'}) identified by {VIA[found.via]}"
    return changed(sale, "member", save)


def add_coupon(
    sale: Sale,
    code: str,
    found: tuple[str | None, CachedCoupon] | None,
    now: datetime,
    online: bool,
    facts: PricingFacts | None,
    limit: int = 1,
) -> Step:
    """A coupon scanned: `found` is its owner and the cache's coupon; `facts` prices the sale with it on. A scanned
    coupon takes the place of one the till applied by itself; at most `limit` are scanned into one sale."""
    no_money_yet(sale, "add a coupon")
    if any(c.code == code and not c.auto for c in sale.coupons):
        raise CouponRefused(f"coupon {code} is already on this sale")
    if sum(not c.auto for c in sale.coupons) >= limit:
        raise CouponRefused(
            f"this store takes {limit} coupon(s) per sale: take one off first", "每单限用优惠券数量已满"
        )
    if found is None:
        raise CouponRefused(f"coupon {code} is not known at this till", "优惠券无效")
    owner, coupon = found
    try:
        check_coupon(coupon, owner, sale.member.id if sale.member else None, now, online)
    except CouponNotUsable as exc:
        raise CouponRefused(str(exc), "优惠券不可用") from None
    sale = sale.model_copy(deep=True)
    sale.coupons = [c for c in sale.coupons if c.code != code]
    sale.coupons.append(SaleCoupon(code=coupon.code, title=coupon.title))
    sale.declined_coupons = [c for c in sale.declined_coupons if c != code]
    if sale.lines:
        reprice(sale, facts)
    sale.message = f"coupon {coupon.title} added"
    return changed(sale, "basket")


def remove_coupon(sale: Sale, code: str, facts: PricingFacts | None) -> Step:
    open_or_refuse(sale)
    no_money_yet(sale, "take a coupon off")
    if not any(c.code == code for c in sale.coupons):
        raise NotFound(f"coupon {code} is not on this sale")
    sale = sale.model_copy(deep=True)
    sale.coupons = [c for c in sale.coupons if c.code != code]
    sale.declined_coupons.append(code)  # not applied by itself again in this sale
    reprice(sale, facts)
    sale.message = f"coupon {code} taken off"
    return changed(sale, "basket")


def set_redemption(sale: Sale, points: int, facts: PricingFacts | None) -> Step:
    open_or_refuse(sale)
    no_money_yet(sale, "change the points to spend")
    if points and sale.member is None:
        raise RedemptionNotAllowed("identify the member before spending points")
    if points and sale.member is not None and not sale.member.may_redeem:
        raise RedemptionNotAllowed(
            "points can be spent only by a member identified by member code or confirmed phone: ask for the member code",
            "使用积分请出示会员码",
        )
    sale = sale.model_copy(deep=True)
    sale.redeem_points = points
    reprice(sale, facts)
    sale.message = f"{points} points to spend" if points else "no points spent"
    return changed(sale, "basket")


def attribute_guide(sale: Sale, guide_id: str) -> Step:
    sale = sale.model_copy(deep=True)
    sale.guide_id = guide_id
    sale.message = f"sale attributed to guide {guide_id}"
    return changed(sale, "message")


def reprice(sale: Sale, facts: PricingFacts | None) -> None:
    """Price the sale's basket in place (on the step's own copy). `facts` is None only for an empty basket."""
    if not sale.lines:
        sale.pricing = None
        return
    assert facts is not None, "a basket is priced with the facts read for it"
    sale.online = facts.online
    rules = facts.points
    tier, redemption, coupons = None, None, []
    try:
        basket = [line.basket_line() for line in sale.lines]
        if sale.member is not None:
            tier_settings = rules.tiers.get(sale.member.tier)
            if tier_settings is not None:
                tier = Tier(sale.member.tier, tier_settings.discount_percent, tier_settings.earn_multiplier_percent)
            coupons = _with_best_held(sale, basket, tier, facts)
            redemption = Redemption(
                sale.redeem_points, sale.member.points, sale.member.may_redeem, facts.redeem_left_today
            )
        pricing = price(basket, rules, tier, coupons, redemption)
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


def _with_best_held(sale: Sale, basket: list[BasketLine], tier: Tier | None, facts: PricingFacts) -> list[CachedCoupon]:
    """The coupons to price with: those scanned, then the member's own best ones the till applies by itself —
    until the cashier takes a coupon off: then the customer keeps their coupons unless one is scanned. Sets them
    on the sale, the till's own marked `auto`."""
    scanned = [c for c in sale.coupons if not c.auto]
    chosen = [facts.coupons[c.code] for c in scanned if c.code in facts.coupons]
    taken = {c.code for c in scanned}
    held = [] if sale.declined_coupons else [c for c in facts.held if c.code not in taken]
    auto = best_coupons(basket, facts.points, tier, chosen, held, facts.coupons_per_sale - len(chosen))
    sale.coupons = scanned + [SaleCoupon(code=c.code, title=c.title, auto=True) for c in auto]
    return [*chosen, *auto]


# --- tenders ---------------------------------------------------------------------------------------------------


def take_tender(sale: Sale, kind: str, amount_fen: int | None, tendered_fen: int | None, reference: str | None) -> Step:
    """Cash, card or another tender: taken at once, and the sale completes when nothing is left to pay."""
    open_or_refuse(sale)
    ready_to_pay(sale)
    try:
        tender = new_tender(sale.remaining_fen, kind, amount_fen, tendered_fen, reference)
    except TenderRefused as exc:
        raise TenderNotTaken(str(exc)) from None
    sale = sale.model_copy(deep=True)
    sale.tenders.append(tender)
    sale.state = "tender"
    sale.message = f"{kind} ¥{tender.amount_fen / 100:.2f}" + (
        f", change ¥{tender.change_fen / 100:.2f}" if tender.change_fen else ""
    )
    return after_tender(sale)


def after_tender(sale: Sale) -> Step:
    if sale.remaining_fen > 0 or sale.unsettled_payments:
        return changed(sale, "payment")
    return Step(sale, complete=True)


def paid(sale: Sale, transaction_id: str, receipt_job_id: str | None) -> Sale:
    """Journaled: the sale is paid (`sale` is the copy that was journaled)."""
    sale.state = "paid"
    sale.transaction_id, sale.receipt_job_id = transaction_id, receipt_job_id
    sale.message = f"paid ¥{sale.amount_due_fen / 100:.2f}" + (
        f", change ¥{sale.change_fen / 100:.2f}" if sale.change_fen else ""
    )
    return sale


def closed(sale: Sale, printer: bool) -> Sale:
    """Paid and its receipt queued (or not: then the cashier is told to reprint it)."""
    sale = sale.model_copy(deep=True)
    if printer and sale.receipt_job_id is None:
        sale.message = f"{sale.message}; the receipt could not be printed: reprint it from the transactions list"
    sale.state = "closed"
    return sale


def charge_started(sale: Sale, out_trade_no: str, provider: PaymentProvider, now: datetime) -> Step:
    """A code payment for what is left: kept on disk as `sending` before its charge leaves the store."""
    ready_to_pay(sale)
    sale = sale.model_copy(deep=True)
    sale.payments.append(
        CodePayment(
            out_trade_no=out_trade_no, provider=provider, state=SENDING, amount_fen=sale.remaining_fen, created_at=now
        )
    )
    sale.state = "tender"
    return Step(sale)


def charge_not_sent(sale: Sale, out_trade_no: str, why: str) -> Step:
    """Central was not reached: the request never left the store, so the customer was not charged."""
    sale, payment = _with_payment(sale, out_trade_no, PaymentEvent.NOT_SENT)
    payment.message, payment.message_zh = f"{OFFLINE_EN} ({why})", OFFLINE_ZH
    step = settle(sale, payment)
    return Step(step.sale, step.event, refusal=Offline(payment.message, OFFLINE_ZH))


def charge_refused(sale: Sale, out_trade_no: str, why: str) -> Step:
    """Central refused the request itself: it created no payment under this number."""
    sale, payment = _with_payment(sale, out_trade_no, PaymentEvent.REFUSED)
    payment.message, payment.message_zh = why, NOT_PAID_ZH
    step = settle(sale, payment)
    return Step(step.sale, step.event, refusal=PaymentFailed(f"central refused the payment: {why}", NOT_PAID_ZH))


def charge_unanswered(sale: Sale, out_trade_no: str, why: str) -> Step:
    """No answer to the charge: it may or may not have been taken. Follow it; never charge under another number."""
    sale, payment = _with_payment(sale, out_trade_no, PaymentEvent.NO_ANSWER)
    payment.message = f"no answer from central ({why}); checking how the payment ended — do not take it again"
    payment.message_zh = "正在确认支付结果，请稍候"
    return changed(sale, "payment")


def answered(sale: Sale, out_trade_no: str, answer: Payment) -> Step:
    """Central's word on a payment (the charge's answer, a long-poll's, or the request's sent again)."""
    sale, payment = _with_payment(sale, out_trade_no, PaymentEvent.ANSWERED, answer)
    payment.provider_trade_no = answer.provider_trade_no
    payment.message_zh = answer.reason_zh
    payment.message = answer.reason_en
    return settle(sale, payment)


def settle(sale: Sale, payment: CodePayment) -> Step:
    """Act on the payment's new state: a tender when paid, waiting while open, back to the basket when not paid."""
    if payment.state == SUCCESS and not payment.cancel_requested:
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
        return after_tender(sale)
    if payment.state == SUCCESS:  # paid after the till gave it up: central takes it back
        return given_up(sale, payment.out_trade_no, already=True)
    if payment.state == USERPAYING:
        payment.message, payment.message_zh = "waiting for the customer to confirm on the phone", "请在手机上确认支付"
    elif payment.state in WAITING:
        payment.message, payment.message_zh = (
            "the provider has not answered yet: checking — do not take payment again",
            "正在确认支付结果，请稍候",
        )
    else:  # FAILED, REVERSING, REVERSED: not paid
        payment.message = payment.message or f"payment {payment.state.lower()}: the customer was not charged"
        payment.message_zh = payment.message_zh or "支付未成功，请重试或换一种方式付款"
        sale.message = payment.message
        _back_to_basket(sale)
    return changed(sale, "payment")


# --- giving a code payment up ----------------------------------------------------------------------------------


def cancel_payment(sale: Sale) -> Step:
    """The cashier gives up the code payments in progress: central is asked to void each."""
    open_or_refuse(sale)
    waiting = [p.out_trade_no for p in sale.unsettled_payments if not p.cancel_requested]
    if not waiting:
        raise NoPaymentInProgress("no code payment is in progress")
    for out_trade_no in waiting:
        sale = given_up(sale, out_trade_no).sale
    sale.message = "code payment cancelled: being reversed"
    return Step(sale, "payment", voids=tuple(waiting))


def given_up(sale: Sale, out_trade_no: str, why: str | None = None, already: bool = False) -> Step:
    """The till gives a payment up: it counts as not paid from now, and central is asked to void it (reversed if
    central holds it, refused for good if its request has not arrived). `already`: `sale` is the step's own copy."""
    sale, payment = (sale, _payment(sale, out_trade_no)) if already else _copy_with(sale, out_trade_no)
    target(payment.state, PaymentEvent.GIVEN_UP)
    payment.cancel_requested, payment.void_answered = True, False
    if why is not None:
        payment.message = why
    if payment.state == SUCCESS:
        sale.tenders = [t for t in sale.tenders if t.out_trade_no != out_trade_no]
    return Step(sale, "payment", voids=(out_trade_no,))


def not_seen(sale: Sale, out_trade_no: str) -> Step:
    """Central does not know the number and the till will not send it again: void it (its follower does)."""
    sale, payment = _with_payment(sale, out_trade_no, PaymentEvent.NOT_SEEN)
    payment.cancel_requested = True
    return Step(sale)


def void_answered(sale: Sale, out_trade_no: str, answer: Payment) -> Step:
    """Central recorded the give-up: the payment is reversed or refused for good (a SUCCESS is being reversed)."""
    sale, payment = _with_payment(sale, out_trade_no, PaymentEvent.VOID_ANSWERED, answer)
    payment.void_answered = True
    payment.message, payment.message_zh = "payment cancelled: the customer is not charged", "支付已撤销"
    if payment.final:
        _back_to_basket(sale)
    return changed(sale, "payment")


def void_unanswered(sale: Sale, out_trade_no: str, why: str) -> Step:
    sale, payment = _copy_with(sale, out_trade_no)
    payment.message = f"cancel requested; central not reached yet ({why}), retrying"
    return changed(sale, "payment")


def cancelled(sale: Sale, approved_by: str | None = None, approval_needed: bool = False) -> Step:
    """The sale is cancelled: every code payment not yet given up or refused is voided. The checkout journals a
    void of what was taken first, if anything was; that void needs a supervisor when `approval_needed`."""
    open_or_refuse(sale)
    taken = bool(sale.tenders)  # what the void journals
    if taken and approval_needed and approved_by is None:
        raise ApprovalRequired.of("void")
    voids = tuple(p.out_trade_no for p in sale.payments if p.state not in (REVERSED, FAILED) and not p.cancel_requested)
    for out_trade_no in voids:
        sale = given_up(sale, out_trade_no).sale
    sale = sale.model_copy(deep=True) if not voids else sale
    sale.state = "cancelled"
    sale.message = "sale cancelled" + (": money taken is given back" if taken else "")
    on_terminal = [t for t in sale.tenders if t.kind in ("card", "other")]
    if on_terminal:  # the till cannot give these back itself
        sale.message += "; void on the card terminal: " + ", ".join(
            f"{t.kind} ¥{t.amount_fen / 100:.2f} (ref {t.reference})" for t in on_terminal
        )
    return Step(sale, "cancelled", voids=voids)


def restored(sale: Sale, voided: bool) -> Step:
    """The sale found on disk at start: every unsettled payment is asked about again; a sale paid in full but not
    journaled completes. `voided`: its void is journaled (cancelled just before the stop, a payment still being
    given up)."""
    sale = sale.model_copy(deep=True)
    if voided:
        sale.state = "cancelled"
    if sale.is_open:
        sale.message = "sale restored after a restart"
    for payment in sale.unsettled_payments:
        payment.state = target(payment.state, PaymentEvent.RESTARTED)
        payment.message = "checking how this payment ended"
    paid = sale.is_open and sale.tenders and not sale.unsettled_payments and sale.remaining_fen == 0
    return Step(sale, "opened" if sale.is_open else None, complete=bool(paid))


# --- helpers ---------------------------------------------------------------------------------------------------


def changed(sale: Sale, event: str, save: bool = True) -> Step:
    sale.version += 1
    return Step(sale, event, save=save)


def _payment(sale: Sale, out_trade_no: str) -> CodePayment:
    for payment in sale.payments:
        if payment.out_trade_no == out_trade_no:
            return payment
    raise LookupError(f"no code payment {out_trade_no} in sale {sale.id}")


def _copy_with(sale: Sale, out_trade_no: str) -> tuple[Sale, CodePayment]:
    sale = sale.model_copy(deep=True)
    return sale, _payment(sale, out_trade_no)


def _with_payment(
    sale: Sale, out_trade_no: str, event: PaymentEvent, answer: Payment | None = None
) -> tuple[Sale, CodePayment]:
    """A copy of the sale with the payment moved by `event` through the table."""
    sale, payment = _copy_with(sale, out_trade_no)
    payment.state = target(payment.state, event, None if answer is None else answer.state)
    return sale, payment


def _back_to_basket(sale: Sale) -> None:
    if sale.is_open and not sale.tenders and not sale.unsettled_payments:
        sale.state = "basket"
