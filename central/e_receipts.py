"""The e-receipt page a receipt's QR code opens (`GET /e/{token}`, central/routes/e_receipts.py): one sale as the
customer's phone shows it, with its refunds, read from the journal rows the stores pushed.

A token names a sale without showing its id (central/e_receipt_token.py). Three answers:

- a forged, altered or malformed token: a 404 page that says only "not found";
- a genuine token whose sale central has not received yet (sold offline, pushed later): "尚未收到", 200, and the
  page looks again every 30 s;
- a genuine token of a sale central holds: the receipt.

Every request does the same work up to that point, so the time taken does not tell a forged token from a genuine
one: the token is decoded (a malformed one replaced by a dummy of the right length), its tag checked in constant
time and its block decrypted, and the candidate id is looked up in the database whatever the check said; only then
does the verdict pick the page. (A genuine token's sale then costs its own reads, the refunds and the rendering,
but that page says more than its timing could.)

The page is server-rendered HTML with its CSS inline: no script, no font, nothing fetched from elsewhere (a
Content-Security-Policy allows only that one stylesheet), no referrer sent on with the token (`no-referrer`), never
cached. It shows no personal data but the member's masked name the receipt already printed.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from barcode import Code128
from sqlmodel import Session

from central.e_receipt_token import read_token
from central.models import Store, Transaction

TENDER_NAMES = {
    "cash": "现金",
    "wechat": "微信支付",
    "alipay": "支付宝",
    "unionpay": "云闪付",
    "card": "银行卡",
    "other": "其他",
}
RETRY_SECONDS = 30  # how often the "not yet received" page looks again


# --- what the page shows --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    name: str
    qty: int
    unit_price_fen: int | None  # None: the body does not say
    amount_fen: int
    discount_fen: int  # off the list price (tier, coupons, points shared over the lines)


@dataclass(frozen=True)
class Paid:
    name: str
    amount_fen: int
    change_fen: int = 0


@dataclass(frozen=True)
class Refund:
    receipt_no: str
    at: datetime  # local
    lines: tuple[Line, ...]
    total_fen: int
    tenders: tuple[Paid, ...]
    points_taken_back: int
    points_given_back: int


@dataclass(frozen=True)
class SaleView:
    store_name: str
    receipt_no: str
    station_id: str
    at: datetime  # local
    lines: tuple[Line, ...]
    subtotal_fen: int
    tier_discount_fen: int
    coupons: tuple[tuple[str, int], ...]  # (title, amount off)
    points_value_fen: int
    discount_fen: int
    total_fen: int
    tenders: tuple[Paid, ...]
    member_name: str | None  # masked, as the receipt printed it
    points_earned: int
    points_redeemed: int
    points_balance: int | None  # after this sale, as the till knew it
    provisional: bool  # sold offline: the till's balance was its own reckoning
    refunds: tuple[Refund, ...]


@dataclass(frozen=True)
class Page:
    status: int
    html: str


def e_receipt_page(session: Session, secret: bytes, token: str, zone: ZoneInfo, join_url: str | None = None) -> Page:
    """The page for a token; see the module's docstring for why every token costs the same up to the verdict."""
    candidate, genuine = read_token(secret, token)
    row = _sale_row(session, candidate)  # looked up whether genuine or not: the same work either way
    if not genuine:
        return Page(404, not_found_html())
    if row is None:
        return Page(200, not_yet_html())
    return Page(200, receipt_html(_view(session, row, zone), join_url))


def _sale_row(session: Session, transaction_id: str) -> sa.Row | None:
    table = Transaction.__table__
    store = Store.__table__
    return session.execute(
        sa.select(
            table.c.id,
            table.c.store_id,
            table.c.station_id,
            table.c.business_day,
            table.c.created_at,
            table.c.total_fen,
            table.c.points_earned,
            table.c.points_redeemed,
            table.c.body,
            store.c.name.label("store_name"),
        )
        .join(store, store.c.id == table.c.store_id)
        .where(table.c.id == transaction_id, table.c.kind == "sale")
    ).first()


def _refund_rows(session: Session, sale: sa.Row) -> list[sa.Row]:
    """The refunds of a sale: refund rows of its store, from its business day on, whose body names it."""
    table = Transaction.__table__
    rows = session.execute(
        sa.select(
            table.c.id,
            table.c.created_at,
            table.c.total_fen,
            table.c.points_earned,
            table.c.points_redeemed,
            table.c.body,
        ).where(
            table.c.store_id == sale.store_id,
            table.c.business_day >= sale.business_day,
            table.c.kind == "refund",
            table.c.body["original_id"].as_string() == sale.id,
        )
    ).all()
    return sorted(rows, key=lambda row: (row.created_at, row.id))


def _view(session: Session, row: sa.Row, zone: ZoneInfo) -> SaleView:
    """The sale as the page shows it. Central requires only lines, tenders and coupons of a body (a merchant's own
    till may send no more), so every other field is read as optional."""
    body: Mapping[str, Any] = row.body
    member = body.get("member")
    return SaleView(
        store_name=row.store_name or row.store_id,
        receipt_no=_text(body, "receipt_no") or row.id,
        station_id=row.station_id,
        at=row.created_at.astimezone(zone),
        lines=tuple(_line(line, sold=True) for line in _dicts(body.get("lines"))),
        subtotal_fen=_int(body, "subtotal_fen", sum(_int(line, "amount_fen") for line in _dicts(body.get("lines")))),
        tier_discount_fen=_int(body, "tier_discount_fen"),
        coupons=tuple(
            (_text(c, "title") or "优惠券", _int(c, "amount_off_fen"))
            for c in _dicts(body.get("coupons"))
            if _int(c, "amount_off_fen")
        ),
        points_value_fen=_int(body, "points_value_fen"),
        discount_fen=_int(body, "discount_fen"),
        total_fen=row.total_fen,
        tenders=tuple(_paid(tender) for tender in _dicts(body.get("tenders"))),
        member_name=(_text(member, "display_name") or "会员") if isinstance(member, Mapping) else None,
        points_earned=row.points_earned,
        points_redeemed=row.points_redeemed,
        points_balance=body.get("points_balance") if _is_int(body.get("points_balance")) else None,
        provisional=body.get("online") is False,
        refunds=tuple(
            Refund(
                receipt_no=_text(refund.body, "receipt_no") or refund.id,
                at=refund.created_at.astimezone(zone),
                lines=tuple(_line(line, sold=False) for line in _dicts(refund.body.get("lines"))),
                total_fen=refund.total_fen,
                tenders=tuple(_paid(tender) for tender in _dicts(refund.body.get("tenders"))),
                points_taken_back=refund.points_earned,
                points_given_back=refund.points_redeemed,
            )
            for refund in _refund_rows(session, row)
        ),
    )


def _line(line: Mapping[str, Any], sold: bool) -> Line:
    qty = _int(line, "qty", 1)
    unit = line.get("unit_price_fen") if _is_int(line.get("unit_price_fen")) else None
    amount = _int(line, "amount_fen", qty * (unit or 0))
    discount = max(qty * unit - amount, 0) if sold and unit is not None else 0
    return Line(_text(line, "name") or "商品", qty, unit, amount, discount)


def _paid(tender: Mapping[str, Any]) -> Paid:
    kind = _text(tender, "kind")
    name = TENDER_NAMES.get(kind, kind or "其他")
    if kind == "cash" and _int(tender, "change_fen"):
        return Paid(name, _int(tender, "tendered_fen", _int(tender, "amount_fen")), _int(tender, "change_fen"))
    return Paid(name, _int(tender, "amount_fen"))


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(mapping: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = mapping.get(key)
    return value if _is_int(value) else default


def _text(mapping: Any, key: str) -> str:
    value = mapping.get(key) if isinstance(mapping, Mapping) else None
    return value if isinstance(value, str) else ""


# --- HTML ------------------------------------------------------------------------------------------------------

CSS = """
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:#eef0f3;color:#1d2129;
font:15px/1.5 system-ui,-apple-system,"PingFang SC","Hiragino Sans GB","Noto Sans CJK SC","Microsoft YaHei",sans-serif}
main{max-width:480px;margin:0 auto;padding:12px}
.card{background:#fff;border-radius:12px;padding:16px;margin-bottom:12px;box-shadow:0 1px 3px rgba(0,0,0,.06)}
h1{font-size:20px;margin:0 0 2px;text-align:center;overflow-wrap:anywhere}
h2{font-size:15px;margin:0 0 8px;color:#4e5969}
.sub{margin:0 0 12px;text-align:center;color:#86909c;font-size:13px}
.row{display:flex;justify-content:space-between;gap:12px;padding:3px 0}
.row>span:first-child{min-width:0;overflow-wrap:anywhere}
.row>span:last-child{flex:none;text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#86909c;font-size:13px}
.line{padding:6px 0;border-bottom:1px dashed #e5e6eb}
.line:last-child{border-bottom:0}
.off{color:#f53f3f}
.total{font-size:18px;font-weight:600;border-top:1px solid #e5e6eb;margin-top:6px;padding-top:8px}
.refund{border-top:1px dashed #e5e6eb;padding-top:8px;margin-top:8px}
.refund:first-of-type{border-top:0;margin-top:0;padding-top:0}
.tag{display:inline-block;background:#fff1f0;color:#f53f3f;border-radius:4px;padding:0 6px;font-size:12px}
.barcode{text-align:center;margin:0}
.barcode svg{display:block;width:100%;max-width:340px;height:64px;margin:0 auto}
.barcode figcaption{font-family:ui-monospace,Menlo,Consolas,monospace;letter-spacing:1px;overflow-wrap:anywhere}
.join{display:block;text-align:center;background:#07c160;color:#fff;text-decoration:none;border-radius:8px;padding:10px;font-weight:600}
.notice{text-align:center;padding:32px 16px}
.notice h1{margin-bottom:8px}
.notice p{color:#4e5969;margin:4px 0}
"""
_CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode("ascii")
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",  # the token is in the URL: never pass it on
    "Cache-Control": "no-store",  # refunds come later; a shared phone's cache keeps nothing
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
}


def _document(title: str, content: str, refresh: int | None = None) -> str:
    meta_refresh = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="robots" content="noindex, nofollow">{meta_refresh}<title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body><main>{content}</main></body></html>"
    )


def not_found_html() -> str:
    return _document(
        "未找到小票 Receipt not found",
        '<section class="card notice"><h1>未找到小票</h1><p>Receipt not found</p>'
        "<p>请确认扫描的是小票上的二维码。</p></section>",
    )


def not_yet_html() -> str:
    return _document(
        "尚未收到 Not yet received",
        '<section class="card notice"><h1>尚未收到</h1><p>Not yet received</p>'
        "<p>门店还没有把这笔交易传到会员中心（门店可能暂时离线），稍后会自动刷新。</p>"
        "<p>The store has not sent this sale yet; this page looks again shortly.</p></section>",
        refresh=RETRY_SECONDS,
    )


def receipt_html(sale: SaleView, join_url: str | None = None) -> str:
    parts = [
        '<section class="card">',
        f"<h1>{escape(sale.store_name)}</h1>",
        '<p class="sub">电子小票 E-receipt</p>',
        _row("时间", sale.at.strftime("%Y-%m-%d %H:%M:%S")),
        _row("小票号", sale.receipt_no),
        _row("收银台", sale.station_id),
    ]
    if sale.refunds:
        refunded = sum(refund.total_fen for refund in sale.refunds)
        label = "已全额退款" if refunded >= sale.total_fen else "已部分退款"
        parts.append(f'<p><span class="tag">{label}</span></p>')
    parts.append("</section>")

    parts.append('<section class="card"><h2>商品 Items</h2>')
    for line in sale.lines:
        detail = f"{line.qty} × {money(line.unit_price_fen)}" if line.unit_price_fen is not None else f"× {line.qty}"
        if line.discount_fen:
            detail += f'，<span class="off">优惠 -{money(line.discount_fen)}</span>'
        parts.append(
            f'<div class="line">{_row(line.name, money(line.amount_fen))}<div class="muted">{detail}</div></div>'
        )
    parts.append("</section>")

    parts.append('<section class="card">')
    parts.append(_row("商品原价", money(sale.subtotal_fen)))
    if sale.tier_discount_fen:
        parts.append(_row("会员折扣", "-" + money(sale.tier_discount_fen), "off"))
    for title, amount in sale.coupons:
        parts.append(_row(f"优惠券 {title}", "-" + money(amount), "off"))
    if sale.points_value_fen:
        parts.append(_row("积分抵扣", "-" + money(sale.points_value_fen), "off"))
    if sale.discount_fen:
        parts.append(_row("优惠合计", "-" + money(sale.discount_fen), "off"))
    parts.append(f'<div class="row total"><span>实付 Paid</span><span>{money(sale.total_fen)}</span></div>')
    for tender in sale.tenders:
        parts.append(_row(tender.name, money(tender.amount_fen)))
        if tender.change_fen:
            parts.append(_row("找零", money(tender.change_fen)))
    parts.append("</section>")

    if sale.member_name is not None:
        parts.append('<section class="card"><h2>会员 Member</h2>')
        parts.append(_row("会员", sale.member_name))
        if sale.points_earned:
            parts.append(_row("本次积分", f"{sale.points_earned:+d}"))
        if sale.points_redeemed:
            parts.append(_row("使用积分", f"{-sale.points_redeemed:+d}"))
        if sale.points_balance is not None:
            parts.append(_row("交易后积分余额", str(sale.points_balance)))
        if sale.provisional:
            parts.append('<p class="muted">离线交易：积分以会员中心为准</p>')
        parts.append("</section>")

    if sale.refunds:
        parts.append('<section class="card"><h2>退款 Refunds</h2>')
        for refund in sale.refunds:
            parts.append('<div class="refund">')
            parts.append(_row("退款单号", refund.receipt_no))
            parts.append(_row("时间", refund.at.strftime("%Y-%m-%d %H:%M:%S")))
            for line in refund.lines:
                parts.append(_row(f"{line.name} × {line.qty}", "-" + money(line.amount_fen)))
            for tender in refund.tenders:
                parts.append(_row(f"退回{tender.name}", money(tender.amount_fen)))
            parts.append(f'<div class="row total"><span>退款合计</span><span>{money(refund.total_fen)}</span></div>')
            if refund.points_taken_back:
                parts.append(_row("扣回积分", f"{-refund.points_taken_back:+d}"))
            if refund.points_given_back:
                parts.append(_row("退回积分", f"{refund.points_given_back:+d}"))
            parts.append("</div>")
        parts.append("</section>")

    if sale.member_name is None and join_url:
        parts.append(
            f'<section class="card"><a class="join" href="{escape(join_url)}" rel="noreferrer noopener">'
            "加入会员，下次积分 Join</a></section>"
        )

    parts.append('<section class="card"><figure class="barcode">')
    parts.append(code128_svg(sale.receipt_no))
    parts.append(f"<figcaption>{escape(sale.receipt_no)}</figcaption></figure></section>")
    return _document(f"电子小票 · {sale.store_name}", "".join(parts))


def _row(label: str, value: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f'<div class="row"><span>{escape(label)}</span><span{cls}>{escape(value)}</span></div>'


def money(fen: int) -> str:
    """Integer fen as yuan: 1234 -> "¥12.34" (as the paper receipt writes it)."""
    yuan, rest = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}¥{yuan}.{rest:02d}"


def code128_svg(data: str, quiet_modules: int = 10) -> str:
    """`data` as a Code 128 barcode in inline SVG: one path of bars that scales to the width it is given (the
    encoding is python-barcode's, the drawing ours). Empty when `data` cannot be encoded."""
    try:
        modules = Code128(data).build()[0]
    except Exception:  # python-barcode raises its own errors, and others, for characters Code 128 lacks
        return ""
    bars = _runs(modules)
    width = len(modules) + 2 * quiet_modules
    path = "".join(f"M{quiet_modules + start} 0h{length}v1h-{length}z" for start, length in bars)
    return (
        f'<svg viewBox="0 0 {width} 1" preserveAspectRatio="none" role="img" '
        f'aria-label="{escape(data)}"><rect width="{width}" height="1" fill="#fff"/><path d="{path}" fill="#000"/></svg>'
    )


def _runs(modules: str) -> Sequence[tuple[int, int]]:
    """(start, length) of each run of dark modules ("1") in a module string."""
    runs: list[tuple[int, int]] = []
    start = None
    for i, module in enumerate(modules + "0"):
        if module == "1" and start is None:
            start = i
        elif module != "1" and start is not None:
            runs.append((start, i - start))
            start = None
    return runs
