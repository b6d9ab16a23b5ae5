"""The wire contract between store agents and the central service, as pure pydantic models (docs/ARCHITECTURE.md,
"The central API").

Both sides import this module: `central` to serve it, the agent's client to call it. It holds no logic, no
database and no web framework, so a merchant's own central service can speak it too (the same contract is
published as OpenAPI in `docs/openapi.json`).

Conventions on the wire:

- Every path starts with `API_PREFIX` (`/v1`). Every request carries `Authorization: Bearer <store token>` and
  `X-Store-Id: <store id>`; the store is the token's store (a mismatch is 403).
- Money is integer fen, points are integers; JSON floats are refused where an integer is expected.
- Times are ISO 8601 with an offset (central answers in UTC); a business day is `YYYY-MM-DD`.
- Errors answer with `ErrorBody` and an HTTP status: 400 bad request, 401 no/bad token, 403 another store's
  data, 404 not found, 409 conflict (an idempotency key reused for a different request, an identifier held
  by another member), 413 batch too large, 422 invalid fields, 500/503 central's own trouble (nothing was
  committed; 503 carries Retry-After).
- Models ignore fields they do not know, so either side can add an optional field without breaking the other.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, StrictInt

API_PREFIX = "/v1"

# Most rows one `POST /v1/transactions:batch` may carry; a bigger batch is refused whole with 413.
MAX_BATCH_SIZE = 1000
# The largest amount (fen) or number of points a request may carry: the largest integer every JSON reader holds
# exactly (2^53 - 1), well inside the 64-bit integers the databases store. More is refused, never a 500.
MAX_AMOUNT = 2**53 - 1

IDENTIFIER_KIND_PATTERN = r"^(unionid|card_no|phone_hash|openid:[A-Za-z0-9_-]{1,64})$"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,16}$"  # store, station and member ids (a member id goes into member codes)
TRANSACTION_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"  # UUID, lowercase
HASH_PATTERN = r"^[0-9a-f]{64}$"

TransactionKind = Literal["sale", "refund", "void"]
TenderKind = Literal["cash", "wechat", "alipay", "unionpay", "card", "other"]
CouponKind = Literal["amount_off", "percent_off"]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- members -------------------------------------------------------------------------------------------------


class Identifier(WireModel):
    """One way to find a member. Kinds: `unionid`, `openid:<appid>`, `card_no`, `phone_hash` (HMAC-SHA256 hex of
    the E.164 number under the deployment's phone hash key)."""

    kind: str = Field(pattern=IDENTIFIER_KIND_PATTERN, examples=["card_no"])
    value: str = Field(min_length=1, max_length=128, examples=["8800000000001"])


class Coupon(WireModel):
    """A coupon issued to one member: single use, valid from `valid_from` (inclusive) until `valid_until`
    (exclusive), once the eligible goods reach `threshold_fen` (0: any basket). `amount_off`: `amount_off_fen`
    off. `percent_off`: `percent_off` % off, at most `cap_fen` when set."""

    code: str = Field(min_length=1, max_length=32, examples=["CP0A1B2C3D4E"])
    title: str = Field(max_length=64, examples=["满100减10"])
    kind: CouponKind
    amount_off_fen: StrictInt = Field(0, ge=0)
    percent_off: StrictInt = Field(0, ge=0, le=100)
    threshold_fen: StrictInt = Field(0, ge=0)
    cap_fen: StrictInt | None = Field(None, ge=0)
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    usable_offline: bool = False
    used_at: AwareDatetime | None = None


class MemberChange(WireModel):
    """One entry of the change feed, and the shape of a member everywhere in this API.

    An upsert carries the member's complete state: every identifier and every coupon not yet expired (used ones
    with `used_at`), and `points`, the authoritative balance (the sum of the member's ledger entries). A
    tombstone has `deleted` true and only `member_id` and `version` are meaningful; after a merge
    `merged_into` names the surviving member, which appears in the feed with the identifiers it took over.
    """

    member_id: str = Field(pattern=ID_PATTERN, examples=["M3K7Q2Z9X1A4"])
    version: int = Field(ge=1, description="position in the global change feed; increases with every change")
    deleted: bool = False
    merged_into: str | None = Field(None, description="for a tombstone after a merge: the surviving member")
    tier: str = Field("", max_length=32, description="empty on a tombstone", examples=["gold"])
    points: int = 0
    display_name: str = Field("", max_length=32, description="already masked for display", examples=["王*明"])
    phone_masked: str | None = Field(None, examples=["138****5678"])
    identifiers: list[Identifier] = Field(default_factory=list)
    coupons: list[Coupon] = Field(default_factory=list)


class ChangesPage(WireModel):
    """`GET /v1/members/changes?cursor=&limit=`: members changed after `cursor`, in version order.

    Start with no cursor; keep `next_cursor` (opaque text) with the applied page and pass it back. `limit` is
    capped by the service (`max_page_size`); a smaller page than asked is not the end: `has_more` is.
    """

    changes: list[MemberChange]
    next_cursor: str
    has_more: bool


class MemberLookup(WireModel):
    """`GET /v1/members/lookup?card_no=|unionid=|phone_hash=|appid=&openid=`: the member holding that identifier
    (404 when none does). A merged member's identifiers belong to the survivor, so the survivor is found."""

    member: MemberChange


class OpenId(WireModel):
    appid: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", examples=["wx8f2a4c6e1b3d5f70"])
    openid: str = Field(min_length=1, max_length=128)


class EnrolRequest(WireModel):
    """`POST /v1/members` with an `Idempotency-Key` header: enrol a customer at a kiosk.

    Give exactly one of `phone` (clear; central hashes and masks it and never stores it) or `phone_hash` (with
    `phone_masked`). `consent` must be true: the customer agreed to membership terms. `name` is masked by
    central before it is stored. When the unionid, phone or openid (in that order) already belongs to a member,
    that member is answered (`created` false) and the new identifiers are linked to it; a phone member and a
    unionid member found to be one customer are merged. An identifier held by an unrelated member is 409.
    """

    phone: str | None = Field(None, examples=["13812345678"])
    phone_hash: str | None = Field(None, pattern=HASH_PATTERN)
    phone_masked: str | None = Field(None, max_length=16, examples=["138****5678"])
    consent: StrictBool
    name: str | None = Field(None, max_length=32, examples=["王小明"])
    unionid: str | None = Field(None, min_length=1, max_length=128)
    openid: OpenId | None = None
    notice_version: str | None = Field(
        None, max_length=32, examples=["2026-11"], description="the privacy notice the customer read and agreed to"
    )
    out_trade_no: str | None = Field(
        None,
        max_length=32,
        description="pay and join (支付即会员): this store's paid code payment whose payer joins; central links the "
        "payer's openid it recorded, never one a client sends",
    )


class EnrolResult(WireModel):
    """Answer to an enrolment (201 created, 200 an existing member). Repeating the request with the same
    `Idempotency-Key` answers the same again; the same key with a different request is 409."""

    member: MemberChange
    created: bool
    welcome_points: int = Field(0, description="points this enrolment gave (0 for a member who already was one)")


# --- transactions --------------------------------------------------------------------------------------------
#
# A journal row's `body` is the canonical JSON of one of three models: `SaleBody`, `RefundBody` or `VoidBody`
# (by the row's `kind`). The row's hash covers that JSON as written, so these models serialize exactly what they
# hold: a field marked "absent when null" is left out rather than written as null, every other field is always
# written, and fields a model does not know are kept as they came (`extra="allow"`). Central requires and reads
# only what `TransactionBody` declares: the lines, the tenders (kind, amount, code payment number) and the coupons.


def _is_none(value: object) -> bool:
    return value is None


class BodyModel(WireModel):
    model_config = ConfigDict(extra="allow")  # kept as written: a field this version does not know survives


class Tender(BodyModel):
    """Money taken (a sale, a void) or given back (a refund). Provider references etc. are kept as sent."""

    kind: TenderKind
    amount_fen: StrictInt = Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT)
    out_trade_no: str | None = Field(
        None, exclude_if=_is_none, description="a code payment's number at central; absent when null (other tenders)"
    )


class CouponUse(BodyModel):
    code: str = Field(min_length=1, max_length=32)
    amount_off_fen: StrictInt = Field(0, ge=-MAX_AMOUNT, le=MAX_AMOUNT)


class TransactionBody(BodyModel):
    """What central requires of every journal body and reads from it; the whole body is stored as sent."""

    lines: list[dict[str, Any]]
    tenders: list[Tender]
    coupons: list[CouponUse] = Field(default_factory=list)


class PaidTender(Tender):
    """A tender of a sale (and of a void: what was taken before the sale was cancelled)."""

    tendered_fen: StrictInt = Field(description="what was handed over: for cash at least `amount_fen`, else equal")
    change_fen: StrictInt = Field(description="cash handed back (`tendered_fen - amount_fen`); 0 for other tenders")
    reference: str | None = Field(
        None,
        exclude_if=_is_none,
        description="card terminal trace number, the provider's trade number of a code payment; absent when null",
    )


class UsedCoupon(CouponUse):
    """A coupon applied to a sale: `amount_off_fen` is what it took off this basket (0: applied, took nothing)."""

    title: str


class BodyMember(BodyModel):
    """The member of a sale as its receipt shows them (masked), and how the till identified them."""

    display_name: str
    tier: str
    phone_masked: str | None
    via: Literal["member_code", "card", "phone", "payment_code"]


class JournalLine(BodyModel):
    """A basket line as the sale had it (`amount_fen` after tier and coupon discounts, null if never priced)."""

    sku: str
    name: str
    qty: StrictInt
    unit_price_fen: StrictInt
    category: str
    amount_fen: StrictInt | None
    list_price_fen: StrictInt | None = Field(
        None, exclude_if=_is_none, description="a price override: the list price the cashier sold below or above"
    )


class SoldLine(JournalLine):
    amount_fen: StrictInt
    earns_points: bool = Field(
        True, description="false for categories that earn no points (rows written before this field: all earn)"
    )


class SaleBody(BodyModel):
    """The body of a `sale` row: everything the receipt shows and a refund needs, so neither reads anything else.

    Amounts are fen: `subtotal_fen` is the lines at list price, `discount_fen` all discounts (tier, coupons and the
    value of points redeemed, of which `tier_discount_fen` and `points_value_fen`); the row's `total_fen` is
    what was paid (the sum of the tenders' `amount_fen`)."""

    receipt_no: str = Field(description="short and scannable: station, business day (yymmdd), count of the day")
    online: bool = Field(description="central was reachable at payment: false means the points are provisional")
    guide_id: str | None = Field(description="the shop assistant credited with the sale, if one was scanned")
    lines: list[SoldLine]
    tenders: list[PaidTender]
    coupons: list[UsedCoupon]
    subtotal_fen: StrictInt
    tier_discount_fen: StrictInt
    discount_fen: StrictInt
    points_value_fen: StrictInt = Field(description="what the points redeemed took off, in fen")
    member: BodyMember | None
    points_balance: StrictInt | None = Field(description="the member's balance after this sale (null: no member)")
    approved_by: str | None = Field(
        None, exclude_if=_is_none, description="a price override: the supervisor who approved it (absent: none did)"
    )


class VoidBody(BodyModel):
    """The body of a `void` row: a sale cancelled after money moved; what was taken (and given back), no points."""

    lines: list[JournalLine]
    tenders: list[PaidTender]
    coupons: list[UsedCoupon] = Field(description="always empty: a cancelled sale used no coupon")
    reason: str
    online: bool
    approved_by: str | None = Field(
        None, exclude_if=_is_none, description="the void: the supervisor who approved it (absent: none did)"
    )


class RefundedLine(BodyModel):
    """Goods given back: `line` is the index of the line in the sale, `amount_fen` what this refund returns for
    it (cumulative shares: refunding a line in several goes returns exactly what it cost in total)."""

    line: StrictInt
    sku: str
    name: str
    qty: StrictInt
    unit_price_fen: StrictInt
    amount_fen: StrictInt


class RefundTender(Tender):
    """Money given back, against the sale's tender number `tender` (its index in the sale's tenders). A code part
    goes back through central under `out_refund_no`; one the provider refused goes back in cash (`kind` cash,
    `instead_of` the code kind, `refused` why)."""

    tender: StrictInt
    reference: str | None = Field(None, exclude_if=_is_none, description="the sale tender's; absent when null")
    out_refund_no: str | None = Field(None, exclude_if=_is_none, description="code parts; absent when null")
    state: RefundState | None = Field(None, exclude_if=_is_none, description="central's answer; absent when null")
    refused: str | None = Field(None, exclude_if=_is_none, description="why; absent when null")
    instead_of: TenderKind | None = Field(None, exclude_if=_is_none, description="absent when null")


class RefundBody(BodyModel):
    """The body of a `refund` row; the row's `total_fen` is the money given back (the sum of the tenders)."""

    original_id: str = Field(description="the transaction id of the sale refunded")
    original_receipt_no: str | None
    receipt_no: str = Field(description="R, the sale's receipt number (or the start of its id), -, the ordinal")
    reason: str | None
    online: bool
    lines: list[RefundedLine]
    tenders: list[RefundTender]
    coupons: list[UsedCoupon] = Field(description="always empty: coupons used are not given back")
    subtotal_fen: StrictInt = Field(description="the sum of the lines' amount_fen")
    member: BodyMember | None = Field(description="the sale's, as it was then")
    points_balance: StrictInt | None = Field(description="the member's balance after this refund (null: no member)")
    approved_by: str | None = Field(
        None, exclude_if=_is_none, description="the refund: the supervisor who approved it (absent: none did)"
    )


class TransactionIn(WireModel):
    """One journal row, exactly as the store journaled it (`agent/journal.py`).

    Amounts are as the receipt states them: for a `refund` (or `void`) `total_fen`, `points_earned` and
    `points_redeemed` are what is being given back, and central books the points in the reverse direction
    (earned points taken back, redeemed points returned). A `sale` with a negative amount or points is refused.
    """

    id: str = Field(pattern=TRANSACTION_ID_PATTERN, description="UUIDv7, lowercase")
    station_id: str = Field(pattern=ID_PATTERN)
    kind: TransactionKind
    business_day: date
    created_at: AwareDatetime
    member_id: str | None = Field(None, pattern=ID_PATTERN)
    total_fen: StrictInt = Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT)
    points_earned: StrictInt = Field(0, ge=-MAX_AMOUNT, le=MAX_AMOUNT)
    points_redeemed: StrictInt = Field(0, ge=-MAX_AMOUNT, le=MAX_AMOUNT)
    body: TransactionBody
    prev_hash: str = Field(pattern=HASH_PATTERN)
    hash: str = Field(pattern=HASH_PATTERN)


class BatchIn(WireModel):
    """`POST /v1/transactions:batch`: journal rows in journal order, at most `MAX_BATCH_SIZE` (else 413).

    The store is the token's store: a store writes only its own transactions. Each row is judged on its own:
    a malformed row is `rejected`, it does not fail the batch.
    """

    transactions: list[TransactionIn] = Field(max_length=MAX_BATCH_SIZE)


RowStatus = Literal["accepted", "duplicate", "rejected"]
RejectReason = Literal["malformed", "negative_amount", "unknown_member", "other_store", "id_conflict"]


class RowResult(WireModel):
    """The verdict on one row, in the order the rows were sent.

    - `accepted`: stored now, points booked.
    - `duplicate`: this store sent this row before (same id, amounts and hash); nothing booked again. Central
      has it, as with `accepted`.
    - `rejected`: not stored; do not resend as is. `reason`: `malformed` (fields invalid, `message` says
      which), `negative_amount` (a sale with a negative amount or points), `unknown_member`, `other_store`
      (the id belongs to another store's transaction), `id_conflict` (the id was stored with another hash).
    """

    id: str | None = Field(description="the row's id; null when a malformed row had no readable id")
    status: RowStatus
    reason: RejectReason | None = None
    message: str | None = None


class Balance(WireModel):
    member_id: str
    points: int


class BatchResult(WireModel):
    """Per-row verdicts plus the authoritative points balance of every member the batch's accepted and
    duplicate rows touch (a merged member's points are reported for the survivor, under the survivor's id)."""

    results: list[RowResult]
    balances: list[Balance]


# --- reconciliation ------------------------------------------------------------------------------------------


class TransactionAmount(WireModel):
    id: str
    station_id: str
    kind: TransactionKind
    total_fen: int
    points_earned: int
    points_redeemed: int


class DaySummary(WireModel):
    """`GET /v1/stores/{store_id}/days/{business_day}/summary[?station_id=]`: what central holds for one store
    (or one station of it) and business day. Every sum is a plain sum of the fields as sent, whatever the kind.

    `digest` is the lowercase hex SHA-256 of the UTF-8 text
    `"\\n".join(f"{id}:{total_fen}" for each transaction, sorted by id)` (plain code-point order of the id
    strings, no trailing newline; an empty day hashes the empty string). Equal digests mean the same set of
    transactions with the same amounts; otherwise compare `transactions`.
    """

    store_id: str
    business_day: date
    station_id: str | None = None
    count: int
    total_fen: int
    tenders: dict[str, int] = Field(description="sum of tender amount_fen per tender kind")
    points_earned: int
    points_redeemed: int
    digest: str
    transactions: list[TransactionAmount] = Field(description="sorted by id")
    payments: PaymentsCheck | None = Field(
        None,
        description="the day's code payments and those that match no sale (null from a central that does not check)",
    )


# --- member-code keys ----------------------------------------------------------------------------------------


class PublicKey(WireModel):
    kid: int = Field(ge=0, le=0xFFFF)
    public_key: str = Field(description="raw 32-byte Ed25519 public key, base64url without padding")
    not_after: AwareDatetime | None = Field(
        None, description="null for the current key; for a rotated key, the end of its grace period"
    )


class PublicKeys(WireModel):
    """`GET /v1/keys/member-code`: keys that verify member codes now (docs/member-code.md). The first is the
    current signing key; rotated keys stay listed until their `not_after`."""

    keys: list[PublicKey]


# --- errors --------------------------------------------------------------------------------------------------


class ErrorBody(WireModel):
    """Body of every error answer. `error` is a stable code for programs, `message` a sentence for people."""

    error: str = Field(examples=["unauthorized"])
    message: str
    details: list[dict[str, Any]] | None = Field(None, description="for 422: one entry per invalid field")


# --- payments ------------------------------------------------------------------------------------------------

OUT_TRADE_NO_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
PaymentProvider = Literal["wechat", "alipay"]
# PENDING: sent, no answer yet · USERPAYING: the customer confirms on the phone · UNKNOWN: the provider could not
# say, central is asking · SUCCESS: paid · FAILED: not paid (`reason_*` says why) · REVERSING: given up or
# cancelled, being reversed (treat as not paid) · REVERSED: reversed or closed, not paid (money taken goes back).


class PaymentState(StrEnum):
    """A code payment's state, the same at central and at the till (the till adds only `sending`, before its
    request leaves the store). Names equal values, so either spelling stores the same."""

    PENDING = "PENDING"
    USERPAYING = "USERPAYING"
    UNKNOWN = "UNKNOWN"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    REVERSING = "REVERSING"
    REVERSED = "REVERSED"

    @property
    def final(self) -> bool:
        """Will not change by itself (a SUCCESS can still be reversed on request)."""
        return self in FINAL_PAYMENT_STATES


FINAL_PAYMENT_STATES = frozenset({PaymentState.SUCCESS, PaymentState.FAILED, PaymentState.REVERSED})


class PaymentRequest(WireModel):
    """`POST /v1/payments`: charge a payment code (WeChat Pay: 18 digits starting 10–15; Alipay: 16–24 digits
    starting 25–30). A new auth code needs a new `out_trade_no`; sending the same request again answers the same
    payment and never charges twice. `member_id`: the member the till identified for this sale, if any; after a
    successful charge the payer's openid is linked to them when it is not linked yet. `provider`, when given, is
    the tender the cashier chose: a code of the other provider is refused (422 `wrong_provider`)."""

    out_trade_no: str = Field(pattern=OUT_TRADE_NO_PATTERN, examples=["DEMO01T0120261123000042"])
    auth_code: str = Field(min_length=1, max_length=64, examples=["134567890123456789"])
    amount_fen: StrictInt = Field(gt=0, le=MAX_AMOUNT, description="what the customer pays, in fen; more than 0")
    station_id: str = Field(pattern=ID_PATTERN, examples=["T01"])
    description: str | None = Field(None, max_length=64, description="shown to the payer", examples=["演示门店 消费"])
    member_id: str | None = Field(None, pattern=ID_PATTERN)
    provider: PaymentProvider | None = None


class Payment(WireModel):
    """A code payment as central knows it now. `paid` is true only in state SUCCESS; `final` says the state will
    not change by itself (SUCCESS, FAILED, REVERSED; a SUCCESS can still be reversed on request). While it is not
    final, ask again with `GET /v1/payments/{out_trade_no}?wait=S`."""

    out_trade_no: str
    provider: PaymentProvider
    state: PaymentState
    paid: bool
    final: bool
    amount_fen: int
    station_id: str
    member_id: str | None = None
    payer: OpenId | None = Field(
        None, description="the payer's id at the provider (WeChat openid of the merchant's appid)"
    )
    provider_trade_no: str | None = Field(None, description="WeChat transaction_id / Alipay trade_no")
    code: str | None = Field(
        None, description="the provider's code (e.g. AUTHCODEEXPIRE, NOTENOUGH) or central's cause"
    )
    reason_zh: str | None = Field(None, description="for the customer, in Chinese")
    reason_en: str | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    paid_at: AwareDatetime | None = None


class PaymentVoid(WireModel):
    """`POST /v1/payments/{out_trade_no}/void`: the till gives up this payment, whatever central knows of it.

    Idempotent, and final in one call: a payment central holds is reversed (as `.../reverse`); an `out_trade_no`
    central has never seen is recorded as given up (`FAILED`, code `VOIDED`), so a `POST /v1/payments` with it
    that arrives later — a request the till lost the answer to, still on its way — is refused (409
    `payment_voided`) and never charged. This is how a till that cannot tell whether its charge left the store
    makes sure it did not. The body describes the payment for the record."""

    provider: PaymentProvider
    amount_fen: StrictInt = Field(gt=0, le=MAX_AMOUNT)
    station_id: str = Field(pattern=ID_PATTERN, examples=["T01"])


RefundState = Literal["PROCESSING", "SUCCESS", "FAILED"]


class RefundRequest(WireModel):
    """`POST /v1/payments/{out_trade_no}/refunds`: give back part or all of a paid payment to the payer.

    `out_refund_no` is the idempotency key: the same request again answers the same refund and never refunds
    twice; the same key with another amount is 409. Refunds of one payment may not add up to more than was paid
    (409 `refund_exceeds_payment`); a payment that is not paid cannot be refunded (409 `not_paid`)."""

    out_refund_no: str = Field(pattern=OUT_TRADE_NO_PATTERN, examples=["R0196f0c2a1b27c3d8e9f0a1b2c3d4e5"])
    amount_fen: StrictInt = Field(gt=0, le=MAX_AMOUNT, description="what goes back to the payer, in fen")
    reason: str | None = Field(None, max_length=80, examples=["顾客退货"])


class Refund(WireModel):
    """A refund as central knows it now. PROCESSING: accepted by the provider, the money is on its way (WeChat
    can take a while; ask again with `GET .../refunds/{out_refund_no}`) · SUCCESS: returned · FAILED: not
    returned (`reason_*` says why; refund another way)."""

    out_refund_no: str
    out_trade_no: str
    provider: PaymentProvider
    state: RefundState
    final: bool
    amount_fen: int
    provider_refund_no: str | None = Field(None, description="WeChat refund_id / Alipay's refund reference")
    code: str | None = None
    reason_zh: str | None = None
    reason_en: str | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    refunded_at: AwareDatetime | None = None


class IdentifyRequest(WireModel):
    """`POST /v1/payments/identify`: who is about to pay with this code? Nothing is charged."""

    auth_code: str = Field(min_length=1, max_length=64, examples=["134567890123456789"])


class IdentifyResult(WireModel):
    """The payer behind a payment code, before charging, so tier prices and coupons apply to the amount charged.

    `member` is the member holding the payer's openid, or null. `may_redeem` is always false: WeChat Pay says an
    openid learnt from a payment code (authcodetoopenid) must not by itself authorise spending points or stored
    value; ask for the member code or another proof first. `payer` is null when the provider cannot tell before
    the charge (Alipay) or the code is expired or invalid."""

    provider: PaymentProvider
    payer: OpenId | None = None
    member: MemberChange | None = None
    may_redeem: Literal[False] = False
    message: str | None = None


BillIssueKind = Literal["charged_not_paid_at_store", "missing_from_bill", "amount_mismatch"]


class BillIssue(WireModel):
    """A difference between the provider's settlement bill and central's payments.

    - `charged_not_paid_at_store`: the bill shows money taken for an order central has as not paid (or does not
      know): the customer paid after the till gave up. Refund it or settle the sale.
    - `missing_from_bill`: central has the order as paid, the bill does not show it paid.
    - `amount_mismatch`: both have it paid, with different amounts."""

    provider: PaymentProvider
    day: date
    out_trade_no: str
    kind: BillIssueKind
    store_state: str | None = None
    store_amount_fen: int | None = None
    bill_amount_fen: int | None = None
    provider_trade_no: str | None = None
    detail: str = ""


class BillCheck(WireModel):
    provider: PaymentProvider
    day: date
    checked_at: AwareDatetime
    bill_rows: int
    matched: int
    issues: int


class PaymentDay(WireModel):
    """`GET /v1/stores/{store_id}/days/{business_day}/payments`, next to the day summary: the store's code
    payments of the day (by their creation time in China time) and what the latest bill checks found.
    `paid_fen` is the sum of SUCCESS payments per provider; `counts` the payments per state."""

    store_id: str
    business_day: date
    paid_fen: dict[str, int]
    counts: dict[str, int]
    bill_checks: list[BillCheck] = Field(description="one per provider whose bill for the day was checked")
    issues: list[BillIssue]
    check: PaymentsCheck | None = Field(
        None, description="which of the store's payments match no sale (all its stations)"
    )


# --- payments reconciliation: every code payment belongs to a sale or to a recorded void ------------------------

PaymentProblemKind = Literal["orphan_charge", "orphan_after_void", "tender_not_paid", "amount_mismatch"]


class PaymentProblem(WireModel):
    """A code payment and the store's sales that do not agree (docs/PAYMENTS.md, "Payments reconciliation").

    - `orphan_charge`: the customer was charged (SUCCESS at central, or on the provider's bill) and no sale the
      store pushed holds this `out_trade_no`: they paid for nothing.
    - `orphan_after_void`: only a void holds it (the sale was cancelled after payment) and it is still paid: the
      reversal never happened.
    - `tender_not_paid`: a sale counts it as paid; central has it not paid, or never saw it.
    - `amount_mismatch`: a sale's tender and the payment differ in amount.

    An orphan is declared only after the grace period and once the station has pushed later rows (so a store whose
    WAN was down is never taken for one). `out_refund_no`/`refund_state`: the refund that gives the money back (the
    automatic one, or any that covers it), when there is one; `refunded_fen`: what the payment's refunds that are
    not FAILED add up to."""

    kind: PaymentProblemKind
    out_trade_no: str
    provider: str = Field(description="wechat or alipay (the tender's kind for a payment central never saw)")
    station_id: str | None = Field(None, description="null when neither central nor a sale knows the station")
    amount_fen: int = Field(description="what the customer was charged, or the payment's amount")
    tender_fen: int | None = Field(None, description="what the sale's tenders count for it")
    payment_state: PaymentState | None = Field(None, description="central's state; null when central never saw it")
    source: Literal["central", "bill"] = Field(description="central's payment table, or the provider's bill")
    transaction_id: str | None = Field(None, description="the sale or void that holds it")
    out_refund_no: str | None = None
    refund_state: RefundState | None = None
    refunded_fen: int = 0
    reason: str = Field(description="for a person: what happened and what to do")


class ProviderPayments(WireModel):
    count: int = Field(description="code payments paid (SUCCESS)")
    paid_fen: int = Field(description="their sum")


class PaymentsCheck(WireModel):
    """The code payments of a day (China time, by creation, as `PaymentDay`) against the sales the store pushed.
    `paid`: payments in SUCCESS per provider. `matched`: paid payments a sale holds. `awaiting`: paid payments no
    sale holds yet, still within `grace_seconds` or not yet passed by the station's pushed rows: not orphans (yet).
    `problems`: orphans and mismatches. With `station_id` only that station's payments and sales (and orphans
    whose station nobody knows)."""

    day: date
    checked_at: AwareDatetime
    grace_seconds: int
    paid: dict[str, ProviderPayments]
    matched: int
    awaiting: int
    problems: list[PaymentProblem]
