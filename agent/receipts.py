"""Receipts: what the paper says, laid out once for the paper's width, whatever the printer (step 8 of the
checkout in docs/ARCHITECTURE.md).

A `Receipt` is the printer-agnostic model of one sale or refund; `layout` turns it into a `drivers.document.Document`
of already-broken lines for a paper of 32 (58 mm) or 48 (80 mm) columns, which a driver renders to its bytes.

Column rule: a character of East Asian width Wide, Fullwidth or Ambiguous takes two columns, everything else one.
Ambiguous counts as wide because on a Chinese receipt printer those characters (“ ” … · — × é) come from the
double-byte font and print two columns wide; drivers/escpos_printer.py follows the same rule when it encodes text,
so what the layout counts is what the paper shows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo

from central.e_receipt_token import mint_token
from drivers.document import (
    Align,
    Barcode,
    Block,
    Cut,
    Document,
    DrawerKick,
    Feed,
    Qr,
    Rule,
    Text,
    char_width,
    display_width,
)

ReceiptKind = Literal["sale", "refund"]

_MASKED_PHONE = re.compile(r"1[0-9]{2}\*{4}[0-9]{4}")
_PHONE_IN_TEXT = re.compile(r"(?<![0-9])(?:\+?86)?(1[3-9][0-9])([0-9]{4})([0-9]{4})(?![0-9])")
PROVISIONAL_MARK = "积分以会员中心为准 (provisional)"


# --- column arithmetic -------------------------------------------------------------------------------------------


def truncate(text: str, width: int) -> str:
    """The longest prefix of `text` that fits `width` columns; a wide character that would straddle the edge is dropped."""
    used = 0
    for i, ch in enumerate(text):
        used += char_width(ch)
        if used > width:
            return text[:i]
    return text


# Chinese line-breaking rule (禁则): these never start a line; the character before them moves down with them.
_NO_LINE_START = frozenset("，。、；：？！）》」』】〕…%,.;:?!)]}")


def _tokens(text: str) -> list[str]:
    # A wide character may break anywhere; a run of narrow non-space characters is a word kept whole when it can
    # be, and a word may break after a hyphen (a transaction id on 58 mm paper).
    tokens: list[str] = []
    for ch in text:
        prev = tokens[-1][-1] if tokens else " "
        if ch != " " and char_width(ch) == 1 and prev != " " and prev != "-" and char_width(prev) == 1:
            tokens[-1] += ch
        else:
            tokens.append(ch)
    return tokens


def wrap(text: str, width: int) -> list[str]:
    """Break `text` into lines of at most `width` columns, never splitting a wide character across the edge.

    Latin words move to the next line whole unless a word alone is wider than a line; closing punctuation never
    starts a line. Always at least one line.
    """
    if width < 4:
        raise ValueError("wrap needs at least 4 columns: a wide character takes two")
    lines: list[str] = []
    line = ""
    for token in _tokens(text):
        if display_width(line + token) <= width:
            line += token
            continue
        if token == " ":  # a space at a line break is dropped, not carried over
            lines.append(line)
            line = ""
            continue
        while token[0] in _NO_LINE_START and len(line) > 1 and char_width(line[-1]) == 2:
            line, token = line[:-1], line[-1] + token
        if line:
            lines.append(line.rstrip(" "))
        while display_width(token) > width:  # a word longer than a line: cut it
            head = truncate(token, width)
            lines.append(head)
            token = token[len(head) :]
        line = token
    lines.append(line.rstrip(" "))
    return lines


def pad_between(left: str, right: str, width: int) -> str:
    """`left` and `right` on one line of exactly `width` columns (the caller checks that they fit)."""
    gap = width - display_width(left) - display_width(right)
    if gap < 1:
        raise ValueError(f"{left!r} and {right!r} do not fit in {width} columns")
    return left + " " * gap + right


# --- money, links, people ----------------------------------------------------------------------------------------


def format_fen(fen: int) -> str:
    """Integer fen as yuan for the paper: 1234 -> "¥12.34", -100 -> "-¥1.00". The one place money becomes text."""
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise TypeError(f"money is integer fen, got {fen!r}")
    yuan, rest = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}¥{yuan}.{rest:02d}"


def e_receipt_url(template: str, transaction_id: str, key: bytes | None = None) -> str | None:
    """The e-receipt link of a sale, from the settings' template: "https://central.example.com/e/{token}" gets
    the sale's unguessable token, minted here from the shared key (`central/e_receipt_token.py`); without the key
    there is no token, so no link (None). A template of an older settings file, "…/{transaction_id}", still gets
    the id itself (guessable: the settings loader warns)."""
    if "{token}" in template:
        return None if key is None else template.replace("{token}", mint_token(key, transaction_id))
    if "{transaction_id}" in template:
        return template.replace("{transaction_id}", quote(transaction_id, safe=""))
    raise ValueError(f"e-receipt URL template {template!r} has no {{token}} placeholder")


def _mask_phones_in(text: str) -> str:
    # WeChat nicknames are sometimes the member's phone number: a receipt never shows one whole.
    return _PHONE_IN_TEXT.sub(lambda m: f"{m[1]}****{m[3]}", text)


def _format_qty(qty: int | Decimal) -> str:
    if isinstance(qty, Decimal):
        return format(qty.normalize(), "f")
    return str(qty)


# --- the model ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreHeader:
    name: str
    station: str
    address: str | None = None


@dataclass(frozen=True)
class ReceiptLine:
    """One item. `amount_fen` is what the line costs after its own discount; `qty` may be a Decimal (weighed goods)."""

    name: str
    qty: int | Decimal
    unit_price_fen: int
    amount_fen: int
    discount_fen: int = 0


@dataclass(frozen=True)
class Totals:
    subtotal_fen: int
    discount_fen: int
    total_fen: int  # due (sale) or refunded (refund)


@dataclass(frozen=True)
class Tender:
    """How it was paid, e.g. 微信支付 / 支付宝 / 现金 / 银行卡. For cash, `amount_fen` is what was handed over."""

    kind: str
    amount_fen: int
    change_fen: int = 0


@dataclass(frozen=True)
class MemberInfo:
    """Only masked data reaches paper: `masked_phone` must already be `agent.pii.mask_phone`'s form (138****5678)."""

    display_name: str
    masked_phone: str | None = None
    tier: str | None = None

    def __post_init__(self) -> None:
        if self.masked_phone is not None and not _MASKED_PHONE.fullmatch(self.masked_phone):
            raise ValueError(
                "MemberInfo.masked_phone must be masked like 138****5678: pass agent.pii.mask_phone(phone)"
            )


@dataclass(frozen=True)
class Points:
    earned: int
    redeemed: int
    balance: int
    provisional: bool = True  # computed at the edge, not yet confirmed by the central service


@dataclass(frozen=True)
class CouponUse:
    title: str
    amount_fen: int


@dataclass(frozen=True)
class Receipt:
    """One receipt. Amounts are integer fen as in the sale; for `kind="refund"` the paper shows them negative."""

    kind: ReceiptKind
    store: StoreHeader
    transaction_id: str
    created_at: datetime  # aware; printed in the store's time zone
    lines: tuple[ReceiptLine, ...]
    totals: Totals
    tenders: tuple[Tender, ...] = ()
    member: MemberInfo | None = None
    points: Points | None = None
    coupons: tuple[CouponUse, ...] = ()
    e_receipt_url: str | None = None
    footer: tuple[str, ...] = ()
    original_transaction_id: str | None = None  # the sale a refund refers to
    original_receipt_no: str | None = None  # that sale's receipt number, printed instead of its id when known
    reason: str | None = None  # why a refund was made
    approved_by: str | None = None  # the supervisor who approved a refund, a void or a price override
    receipt_no: str | None = None  # short number for the barcode (refunds, reprints); the id when absent
    reprint: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("sale", "refund"):
            raise ValueError(f"receipt kind must be sale or refund, not {self.kind!r}")
        if self.created_at.tzinfo is None:
            raise ValueError("Receipt.created_at must be an aware datetime (UTC in storage)")


# --- layout ------------------------------------------------------------------------------------------------------


class _Lines:
    """Collects blocks for one paper width; every Text it makes fits the width."""

    def __init__(self, columns: int):
        if columns < 16:
            raise ValueError(f"a receipt needs at least 16 columns, not {columns}")
        self.columns = columns
        self.blocks: list[Block] = []

    def add(self, block: Block) -> None:
        self.blocks.append(block)

    def text(self, text: str, align: Align = "left", bold: bool = False, double: bool = False) -> None:
        budget = self.columns // 2 if double else self.columns
        for line in wrap(text, budget):
            self.blocks.append(Text(line, align, bold, double))

    def pair(self, left: str, right: str, bold: bool = False) -> None:
        """`left` at the left edge and `right` ending at the last column; a long `left` wraps in its own column."""
        room = self.columns - display_width(right) - 1
        if display_width(left) <= room or room >= max(8, self.columns // 3):
            parts = wrap(left, room)
            self.blocks.append(Text(pad_between(parts[0], right, self.columns), "left", bold))
            for part in parts[1:]:
                self.blocks.append(Text(part, "left", bold))
            return
        # `right` is too long to share a line (a transaction id on 58 mm): each on its own, right still flush right.
        self.text(left, bold=bold)
        for part in wrap(right, self.columns):
            self.blocks.append(Text(" " * (self.columns - display_width(part)) + part, "left", bold))

    def rule(self) -> None:
        self.blocks.append(Rule("-"))


def _signed(fen: int, refund: bool) -> int:
    return -abs(fen) if refund else fen


def layout(receipt: Receipt, columns: int, zone: ZoneInfo, *, open_drawer: bool = False) -> Document:
    """The receipt as printed lines for `columns` (32 on 58 mm, 48 on 80 mm), times in the store's `zone`.

    `open_drawer` kicks the cash drawer as the receipt starts printing (a cash sale or refund; never a reprint).
    """
    refund = receipt.kind == "refund"
    out = _Lines(columns)
    if open_drawer:
        out.add(DrawerKick())

    store = receipt.store
    out.text(store.name, "center", bold=True, double=True)
    if store.address:
        out.text(store.address, "center")
    if refund:
        out.text("退货 REFUND", "center", bold=True, double=True)
    if receipt.reprint:
        out.text("重打印 REPRINT", "center", bold=True)
    out.rule()
    if receipt.receipt_no:
        out.pair("小票号", receipt.receipt_no)
    out.pair("单号", receipt.transaction_id)
    if receipt.original_receipt_no or receipt.original_transaction_id:
        out.pair("原小票号", receipt.original_receipt_no or receipt.original_transaction_id or "")
    if receipt.reason:
        out.pair("退款原因", receipt.reason)
    if receipt.approved_by:
        out.pair("主管授权", receipt.approved_by)
    out.pair("时间", receipt.created_at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"))
    out.pair("收银台", store.station)
    out.rule()

    for line in receipt.lines:
        out.pair(line.name, format_fen(_signed(line.amount_fen, refund)))
        out.text(f"  {_format_qty(line.qty)} x {format_fen(line.unit_price_fen)}")
        if line.discount_fen:
            out.pair("  优惠", format_fen(-abs(line.discount_fen)))
    out.rule()

    totals = receipt.totals
    out.pair("商品合计", format_fen(_signed(totals.subtotal_fen, refund)))
    if totals.discount_fen:
        out.pair("优惠合计", format_fen(-abs(totals.discount_fen)))
    for coupon in receipt.coupons:
        out.pair(f"券 {coupon.title}", format_fen(-abs(coupon.amount_fen)))
    out.pair("退款金额" if refund else "应付", format_fen(_signed(totals.total_fen, refund)), bold=True)
    for tender in receipt.tenders:
        out.pair(tender.kind, format_fen(_signed(tender.amount_fen, refund)))
        if tender.change_fen and not refund:
            out.pair("找零", format_fen(tender.change_fen))

    if receipt.member or receipt.points:
        out.rule()
    if receipt.member:
        member = receipt.member
        out.pair("会员", _mask_phones_in(member.display_name))
        if member.masked_phone:
            out.pair("手机", member.masked_phone)
        if member.tier:
            out.pair("等级", member.tier)
    if receipt.points:
        points = receipt.points
        if points.earned:
            # A refund takes back what the sale earned and gives back what it spent.
            out.pair("扣回积分" if refund else "本次积分", f"{-abs(points.earned) if refund else points.earned:+d}")
        if points.redeemed:
            out.pair(
                "退回积分" if refund else "使用积分", f"{abs(points.redeemed) if refund else -abs(points.redeemed):+d}"
            )
        out.pair("积分余额", str(points.balance))
        if points.provisional:
            out.text(PROVISIONAL_MARK)

    out.rule()
    if receipt.e_receipt_url:
        out.text("扫码查看电子小票", "center")
        out.add(Qr(receipt.e_receipt_url, size=5 if columns < 40 else 6))
    out.add(Barcode(receipt.receipt_no or receipt.transaction_id, height=48))
    for footer_line in receipt.footer:
        out.text(footer_line, "center")
    out.add(Feed(1))
    out.add(Cut())
    return Document(tuple(out.blocks), columns)


def test_page(store_name: str, columns: int) -> Document:
    """What `pos-edge print-test` prints: Chinese with fullwidth punctuation, the column ruler, a QR and a barcode."""
    out = _Lines(columns)
    out.text("打印测试 PRINT TEST", "center", bold=True, double=True)
    out.text(store_name, "center")
    out.rule()
    out.text("中文：你好，世界。价格￥12.34（含税）")
    out.text("繁體：歡迎光臨，謝謝惠顧。")
    out.pair("左对齐 left", "右对齐 right")
    out.pair("金额", format_fen(123456))
    out.text("".join(str(i % 10) for i in range(columns)))
    out.text("粗体 bold", bold=True)
    out.text("居中 center", "center")
    out.text("右 right", "right")
    out.rule()
    out.text("二维码 QR", "center")
    out.add(Qr("https://example.com/print-test", size=5 if columns < 40 else 6))
    out.add(Barcode("20240101000123", height=48))
    out.add(Feed(1))
    out.add(Cut())
    return Document(tuple(out.blocks), columns)


def document_text(document: Document) -> Iterable[str]:
    """The text lines of a laid-out document, for logs and the till's on-screen copy of a receipt."""
    for block in document.blocks:
        if isinstance(block, Text):
            yield block.text
        elif isinstance(block, Rule):
            yield block.char * (document.columns // char_width(block.char))


test_page.__test__ = False  # type: ignore[attr-defined]  # a test *page*, not a pytest test, wherever it is imported
