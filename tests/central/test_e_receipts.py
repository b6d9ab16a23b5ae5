"""The e-receipt page, `GET /e/{token}`, over central's real HTTP server: a pushed sale and its refunds, a sale not
pushed yet, and forged tokens that learn nothing."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from agent.clock import to_storage
from agent.ids import new_transaction_id
from agent.journal import GENESIS, canonical_json, row_hash
from central import contract
from central.e_receipt_token import mint_token
from tests.central.plugin import central_settings
from tests.central.rows import DAY, journal_row
from tests.support.credentials import PHONE_KEY_BYTES

AT = datetime(2026, 11, 23, 3, 30, tzinfo=UTC)  # 11:30 in Shanghai
NOT_FOUND = "未找到小票"
NOT_YET = "尚未收到"


def sale_body(member: bool = True, online: bool = True) -> dict[str, Any]:
    """A sale's body as the till journals it: two waters and a milk for a gold member, a coupon, paid by WeChat."""
    body = {
        "receipt_no": "T012611230042",
        "online": online,
        "guide_id": None,
        "lines": [
            {
                "sku": "6901234567892",
                "name": "矿泉水 550ml",
                "qty": 2,
                "unit_price_fen": 200,
                "category": "",
                "amount_fen": 342,
                "earns_points": True,
            },
            {
                "sku": "6920000000001",
                "name": "牛奶 1L",
                "qty": 1,
                "unit_price_fen": 1290,
                "category": "",
                "amount_fen": 1103,
                "earns_points": True,
            },
        ],
        "tenders": [
            {
                "kind": "wechat",
                "amount_fen": 1445,
                "tendered_fen": 1445,
                "change_fen": 0,
                "out_trade_no": "0196f0c2a1b27c3d8e9f0a1b2c3d4e5f",
            }
        ],
        "coupons": [{"code": "CP0A1B2C3D4E", "amount_off_fen": 160, "title": "满10减1.6"}],
        "subtotal_fen": 1690,
        "tier_discount_fen": 85,
        "discount_fen": 245,
        "points_value_fen": 0,
        "member": {"display_name": "李*华", "tier": "gold", "phone_masked": "138****5678", "via": "card"}
        if member
        else None,
        "points_balance": 1021 if member else None,
    }
    contract.SaleBody.model_validate(body)  # the shape the till writes
    return body


def row(kind: str, body: dict[str, Any], total_fen: int, *, at: datetime = AT, **fields: Any) -> dict[str, Any]:
    """A journal row in its wire form with this body, hashed as the journal does."""
    wire = {
        "id": new_transaction_id(),
        "station_id": "T01",
        "kind": kind,
        "business_day": DAY.isoformat(),
        "created_at": to_storage(at),
        "member_id": None,
        "total_fen": total_fen,
        "points_earned": 0,
        "points_redeemed": 0,
        "body": canonical_json(body),
    } | fields
    wire["prev_hash"] = GENESIS
    wire["hash"] = row_hash(GENESIS, wire)
    wire["body"] = json.loads(wire["body"])
    return wire


def push(central, store, *rows: dict[str, Any]) -> None:
    with central.client(store) as client:
        answer = client.post("/v1/transactions:batch", json={"transactions": list(rows)})
    assert answer.status_code == 200 and {r["status"] for r in answer.json()["results"]} == {"accepted"}, answer.text


def page(central, token: str) -> httpx.Response:
    with httpx.Client(base_url=central.url, timeout=10) as client:  # a phone: no credentials
        return client.get(f"/e/{token}")


def visible_text(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", re.sub(r"<(style|svg)\b.*?</\1>", " ", html, flags=re.S))


@pytest.fixture
def store(central):
    return central.add_store("S1")


def test_a_pushed_sale_shows_its_receipt_with_lines_discounts_tenders_points_and_barcode(central, store):
    member = central.add_member(points=1000, display_name="李*华", phone="13812345678")
    sale = row("sale", sale_body(), 1445, member_id=member, points_earned=21)
    push(central, store, sale)

    answer = page(central, mint_token(PHONE_KEY_BYTES, sale["id"]))
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    text = visible_text(answer.text)
    for shown in (
        "S1",  # the store's name at central (none given: its id)
        "2026-11-23 11:30:00",  # in the store's time zone
        "T012611230042",
        "矿泉水 550ml",
        "2 × ¥2.00",
        "牛奶 1L",
        "¥16.90",  # at list price
        "会员折扣",
        "-¥0.85",
        "满10减1.6",
        "-¥1.60",
        "实付 Paid",
        "¥14.45",
        "微信支付",
        "李*华",
        "本次积分",
        "+21",
        "1021",
    ):
        assert shown in text, shown
    assert "138****5678" not in answer.text and "13812345678" not in answer.text  # no personal data but the name
    assert sale["id"] not in answer.text  # the receipt number identifies it; the id stays unsaid
    assert "离线" not in text  # paid online: the points were central's
    assert re.search(r'<svg [^>]*aria-label="T012611230042"[^>]*>.*<path d="M10 0h', answer.text, re.S)
    assert "加入会员" not in text  # a member already


def test_the_page_fetches_nothing_and_passes_no_token_on(central, store):
    sale = row("sale", sale_body(member=False), 1445)
    push(central, store, sale)
    answer = page(central, mint_token(PHONE_KEY_BYTES, sale["id"]))
    assert answer.status_code == 200
    assert not re.search(r"<script|<link|src=|url\(|@import|https?://", answer.text)
    csp = answer.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "style-src 'sha256-" in csp
    assert answer.headers["referrer-policy"] == "no-referrer" and answer.headers["cache-control"] == "no-store"


def test_refunds_of_the_sale_show_under_it(central, store):
    member = central.add_member(points=1000, display_name="李*华")
    sale = row("sale", sale_body(), 1445, member_id=member, points_earned=21)
    refund_body = {
        "original_id": sale["id"],
        "original_receipt_no": "T012611230042",
        "receipt_no": "RT012611230042-1",
        "reason": "顾客退货",
        "online": True,
        "lines": [
            {"line": 1, "sku": "6920000000001", "name": "牛奶 1L", "qty": 1, "unit_price_fen": 1290, "amount_fen": 1103}
        ],
        "tenders": [
            {"kind": "wechat", "amount_fen": 1103, "tender": 0, "out_refund_no": "R" + "0" * 31, "state": "SUCCESS"}
        ],
        "coupons": [],
        "subtotal_fen": 1103,
        "member": sale["body"]["member"],
        "points_balance": 1005,
    }
    contract.RefundBody.model_validate(refund_body)
    later = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    refund = row("refund", refund_body, 1103, at=later, member_id=member, points_earned=16)
    other = row("sale", sale_body(), 1445, member_id=member, points_earned=21)  # someone else's sale, not refunded
    push(central, store, sale, other, refund)

    text = visible_text(page(central, mint_token(PHONE_KEY_BYTES, sale["id"])).text)
    assert "已部分退款" in text and "退款 Refunds" in text
    assert "RT012611230042-1" in text and "2026-11-24 10:00:00" in text
    assert (
        "牛奶 1L × 1" in text and "-¥11.03" in text and "退回微信支付" in text and "扣回积分" in text and "-16" in text
    )
    assert "退款" not in visible_text(page(central, mint_token(PHONE_KEY_BYTES, other["id"])).text)


def test_a_genuine_token_of_a_sale_not_pushed_yet_says_not_yet_received_then_the_sale(central, store):
    sale = row("sale", sale_body(member=False, online=False), 1445)
    token = mint_token(PHONE_KEY_BYTES, sale["id"])

    before = page(central, token)
    assert before.status_code == 200 and NOT_YET in before.text and "Not yet received" in before.text
    assert '<meta http-equiv="refresh"' in before.text  # the phone looks again by itself
    assert "T012611230042" not in before.text

    push(central, store, sale)
    after = page(central, token)
    assert after.status_code == 200 and "T012611230042" in after.text and NOT_YET not in after.text


@pytest.mark.parametrize("central_database_url", ["sqlite"], indirect=True)
def test_a_forged_token_gets_a_404_page_that_says_nothing_else(central, store):
    sale = row("sale", sale_body(), 1445)
    push(central, store, sale)
    genuine = mint_token(PHONE_KEY_BYTES, sale["id"])
    forged = [
        genuine[:-1] + ("A" if genuine[-1] != "A" else "B"),  # one character changed
        mint_token(b"not-this-central-s-key-0123", sale["id"]),  # another key
        mint_token(b"not-this-central-s-key-0123", new_transaction_id()),
        "A" * 32,
        "short",
        "A" * 2000,
        sale["id"],  # the id itself is no token
        "%E4%B8%AD%E6%96%87",
    ]
    answers = [page(central, token) for token in forged]
    assert {answer.status_code for answer in answers} == {404}
    assert {answer.text for answer in answers} == {answers[0].text}  # one page, whatever was sent
    assert NOT_FOUND in answers[0].text and answers[0].headers["content-type"].startswith("text/html")
    for leak in ("T012611230042", sale["id"], "S1", "mac", "token", "invalid", "Traceback"):
        assert leak not in answers[0].text, leak


def test_a_sale_without_a_member_offers_the_join_link_when_one_is_set(central_factory):
    central = central_factory(e_receipt_join_url="https://m.example.com/join?from=receipt")
    store = central.add_store("S1")
    member = central.add_member(points=0)
    anonymous = row("sale", sale_body(member=False), 1445)
    members = row("sale", sale_body(), 1445, member_id=member, points_earned=21)
    push(central, store, anonymous, members)

    offered = page(central, mint_token(PHONE_KEY_BYTES, anonymous["id"])).text
    assert '<a class="join" href="https://m.example.com/join?from=receipt" rel="noreferrer noopener">' in offered
    assert "加入会员" not in page(central, mint_token(PHONE_KEY_BYTES, members["id"])).text


@pytest.mark.parametrize("central_database_url", ["sqlite"], indirect=True)
def test_a_body_with_only_what_central_requires_still_shows_and_the_store_s_zone_is_a_setting(central_factory):
    central = central_factory(e_receipt_timezone="Asia/Tokyo")
    store = central.add_store("S1")
    sale = journal_row(250)  # lines, tenders: no receipt number, no totals, no member
    push(central, store, sale)
    answer = page(central, mint_token(PHONE_KEY_BYTES, sale["id"]))
    text = visible_text(answer.text)
    assert answer.status_code == 200 and "矿泉水 550ml" in text and "¥2.50" in text and "现金" in text
    assert "2026-11-23 12:30:00" in text  # Tokyo
    assert "× 1" in text and "¥0.00" not in text  # no unit price in the body: none made up
    assert "加入会员" not in text  # no join link set


@pytest.mark.parametrize("central_database_url", ["sqlite"], indirect=True)
def test_the_page_is_outside_the_api_document(central):
    with central.client() as client:
        assert not any(path.startswith("/e/") for path in client.get("/openapi.json").json()["paths"])


def test_the_page_s_settings_are_checked_at_start():
    with pytest.raises(ValidationError, match="unknown time zone"):
        central_settings("sqlite://", e_receipt_timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="must be an http"):
        central_settings("sqlite://", e_receipt_join_url="m.example.com/join")
    assert central_settings("sqlite://", e_receipt_join_url="").e_receipt_join_url is None
