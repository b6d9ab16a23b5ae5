"""Typed journal bodies write exactly what the till wrote before they were typed, so every row keeps verifying and
central keeps receiving the bytes the chain hashed; the receipt number and a refund's sale are indexed columns.

Two kinds of evidence: the body builders of before (kept below, frozen, as they were in agent/checkout.py and
agent/refunds.py) against the typed ones on the same sale; and rows the till journaled before, through the real
checkout (tests/agent/data/journal_before_0008.json), upgraded in place by migration 0008.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from agent.db import create_engine, migrate, open_database
from agent.journal import (
    BODY_TYPES,
    Journal,
    JournalEntry,
    JournalError,
    JournalRecord,
    body_json,
    canonical_json,
    verify,
)
from agent.journal_bodies import refund_body, sale_body, void_body
from agent.refunds import RefundLine, Refunds, _pending, _plan
from agent.sale import (
    CodePayment,
    PricingView,
    Sale,
    SaleCoupon,
    SaleLine,
    SaleMember,
    Tender,
)
from central.contract import SaleBody, TransactionBody, VoidBody

SHANGHAI = ZoneInfo("Asia/Shanghai")
EXCLUDED = ("tobacco",)
BEFORE = json.loads((Path(__file__).parent / "data" / "journal_before_0008.json").read_text(encoding="utf-8"))


# --- the body builders before bodies were typed (frozen copies: do not "fix" them) ----------------------------


# Fields a line gained after the dict writer was retired; absent (not null) in the body while unused.
NEWER = {"list_price_fen"}


def dict_sale_body(sale: Sale, excluded_categories) -> dict:
    pricing = sale.pricing
    points = sale.points()
    return {
        "receipt_no": sale.receipt_no,
        "online": sale.online,
        "guide_id": sale.guide_id,
        "lines": [
            line.model_dump(exclude=NEWER) | {"earns_points": line.category not in excluded_categories}
            for line in sale.lines
        ],
        "tenders": [tender.model_dump(exclude_none=True) for tender in sale.tenders],
        "coupons": [coupon.model_dump(include={"code", "title", "amount_off_fen"}) for coupon in sale.coupons],
        "subtotal_fen": pricing.subtotal_fen,
        "tier_discount_fen": pricing.tier_discount_fen,
        "discount_fen": pricing.discount_fen,
        "points_value_fen": pricing.points_value_fen,
        "member": None
        if sale.member is None
        else {
            "display_name": sale.member.display_name,
            "tier": sale.member.tier,
            "phone_masked": sale.member.phone_masked,
            "via": sale.member.via,
        },
        "points_balance": None if points is None else points.balance,
    }


def dict_void_body(sale: Sale) -> dict:
    return {
        "lines": [line.model_dump(exclude=NEWER) for line in sale.lines],
        "tenders": [tender.model_dump(exclude_none=True) for tender in sale.tenders],
        "coupons": [],
        "reason": "sale cancelled at the till",
        "online": sale.online,
    }


def dict_refund_body(sale: JournalRecord, pending, member_points: int | None, online: bool) -> dict:
    tenders = [{k: v for k, v in t.items() if k != "sent"} for t in pending.tenders]
    return {
        "original_id": sale.id,
        "original_receipt_no": sale.body.get("receipt_no"),
        "receipt_no": f"R{sale.body.get('receipt_no') or sale.id[:8]}-{pending.ordinal}",
        "reason": pending.reason,
        "online": online,
        "lines": pending.lines,
        "tenders": tenders,
        "coupons": [],
        "subtotal_fen": sum(line["amount_fen"] for line in pending.lines),
        "member": sale.body.get("member"),
        "points_balance": None
        if member_points is None
        else member_points - pending.points_taken_back + pending.points_returned,
    }


# --- a sale with everything a body can hold ------------------------------------------------------------------


def member_sale() -> Sale:
    """Gold member by member code, a guide, two coupons (one took nothing), 300 points redeemed, a line that earns
    no points, and four tenders: card, cash with change, WeChat (paid, with its trade number) and Alipay (paid,
    no trade number known)."""
    lines = [
        SaleLine(sku="6901234567892", name="矿泉水 550ml", qty=3, unit_price_fen=200, amount_fen=476),
        SaleLine(sku="6920000000001", name="牛奶 1L", qty=2, unit_price_fen=1290, amount_fen=2045),
        SaleLine(sku="6930000000002", name="香烟", qty=1, unit_price_fen=2500, category="tobacco", amount_fen=2500),
    ]
    return Sale(
        id="01a22a37-e87a-752a-9573-63fe81541a02",
        station_id="T01",
        state="tender",
        created_at=datetime(2026, 11, 30, 2, 10, tzinfo=UTC),
        member=SaleMember(
            id="M0X9YVFE5FZ3",
            display_name="李*华",
            tier="gold",
            points=1500,
            phone_masked="138****5678",
            via="member_code",
            may_redeem=True,
        ),
        guide_id="G007",
        lines=lines,
        coupons=[
            SaleCoupon(code="CP6JSJPM16NP", title="满30减5", amount_off_fen=500),
            SaleCoupon(code="CP0000000002", title="满100减20", amount_off_fen=0),
        ],
        redeem_points=300,
        pricing=PricingView(
            subtotal_fen=5680,
            tier_discount_fen=159,
            coupon_discount_fen=500,
            discount_fen=959,
            points_redeemed=300,
            points_value_fen=300,
            amount_due_fen=4721,
            points_earned=33,
            max_redeemable_points=1500,
        ),
        tenders=[
            Tender(kind="card", amount_fen=1000, tendered_fen=1000, reference="T8812"),
            Tender(kind="cash", amount_fen=1500, tendered_fen=2000, change_fen=500),
            Tender(
                kind="wechat",
                amount_fen=1221,
                tendered_fen=1221,
                reference="42002026113000000000000001",
                out_trade_no="01a22a37e8b17c6eb0327e02c558fa4b",
            ),
            Tender(kind="alipay", amount_fen=1000, tendered_fen=1000, out_trade_no="01a22a37e8b17c6eb0327e02c558fa4c"),
        ],
        payments=[
            CodePayment(
                out_trade_no="01a22a37e8b17c6eb0327e02c558fa4b",
                provider="wechat",
                state="SUCCESS",
                amount_fen=1221,
                created_at=datetime(2026, 11, 30, 2, 10, tzinfo=UTC),
            )
        ],
        receipt_no="T012611300001",
    )


def record_of(kind: str, total_fen: int, body: dict, *, points_earned: int = 0, points_redeemed: int = 0):
    return JournalRecord(
        seq=1,
        id="01a22a37-e87a-752a-9573-63fe81541a02",
        station_id="T01",
        kind=kind,
        business_day=date(2026, 11, 30),
        created_at=datetime(2026, 11, 30, 2, 10, tzinfo=UTC),
        member_id="M0X9YVFE5FZ3",
        total_fen=total_fen,
        points_earned=points_earned,
        points_redeemed=points_redeemed,
        body=json.loads(canonical_json(body)),  # as the journal stores it and reads it back
        prev_hash="0" * 64,
        hash="0" * 64,
    )


@pytest.fixture
def journal(engine) -> Journal:
    return Journal(engine, "T01", SHANGHAI, cutoff_hour=4)


def test_a_sale_body_is_the_json_the_dict_wrote(journal):
    sale = member_sale()
    typed = sale_body(sale, EXCLUDED)
    assert canonical_json(body_json(typed)) == canonical_json(dict_sale_body(sale, EXCLUDED))
    record = journal.append(JournalEntry(kind="sale", total_fen=4721, body=typed, member_id="M0X9YVFE5FZ3"))
    assert record.body == dict_sale_body(sale, EXCLUDED) and record.receipt_no == "T012611300001"
    # The omission rules, spelled out: a tender's missing reference is left out, a missing guide or member is null.
    assert "reference" not in record.body["tenders"][3] and record.body["lines"][2]["earns_points"] is False
    sale.member, sale.guide_id, sale.pricing.points_earned = None, None, 0
    assert canonical_json(body_json(sale_body(sale, EXCLUDED))) == canonical_json(dict_sale_body(sale, EXCLUDED))
    assert verify(journal.engine).ok


def test_a_void_body_is_the_json_the_dict_wrote(journal):
    sale = member_sale()
    sale.lines.append(SaleLine(sku="6940000000003", name="面包", qty=1, unit_price_fen=800))  # added, never priced
    sale.online = False
    typed = void_body(sale)
    assert canonical_json(body_json(typed)) == canonical_json(dict_void_body(sale))
    record = journal.append(JournalEntry(kind="void", total_fen=sale.paid_fen, body=typed))
    assert record.body["lines"][3]["amount_fen"] is None and "earns_points" not in record.body["lines"][0]
    assert record.receipt_no is None and record.original_id is None


def test_a_partial_refund_body_is_the_json_the_dict_wrote(journal):
    sold = member_sale()
    sale = record_of("sale", 4721, dict_sale_body(sold, EXCLUDED), points_earned=33, points_redeemed=300)
    earlier = []
    for ordinal, asked, reason in ((1, [RefundLine(1, 1)], "破损"), (2, [RefundLine(0, 2), RefundLine(2, 1)], None)):
        plan = _plan(sale, earlier, asked)
        pending = _pending(sale, ordinal, sorted((a.line, a.qty) for a in asked), reason, plan)
        codes = [part for part in pending.tenders if part["kind"] in ("wechat", "alipay")]
        assert codes, "each refund gives back through a code payment"
        for part in codes:  # as Refunds._finish leaves them: central's answer on each part
            part["sent"], part["state"] = True, "SUCCESS"
        if len(codes) > 1:  # the second code part refused: it goes back in cash instead
            codes[1]["state"], codes[1]["refused"] = "FAILED", "ACCOUNT_FROZEN"
            codes[1]["instead_of"], codes[1]["kind"] = codes[1]["kind"], "cash"
        tenders = [{k: v for k, v in t.items() if k != "sent"} for t in pending.tenders]
        balance = 1233 - pending.points_taken_back + pending.points_returned
        typed = refund_body(sale.id, sale.sale_body(), ordinal, reason, True, pending.lines, tenders, balance)
        assert canonical_json(body_json(typed)) == canonical_json(dict_refund_body(sale, pending, 1233, True))
        record = journal.append(
            JournalEntry(
                kind="refund", id=pending.id, total_fen=pending.money_fen, body=typed, member_id="M0X9YVFE5FZ3"
            )
        )
        assert (record.receipt_no, record.original_id) == (f"RT012611300001-{ordinal}", sale.id)
        earlier.append(record)
    assert any("instead_of" in t for t in earlier[1].body["tenders"]), "the refused-then-cash case was covered"
    assert verify(journal.engine).ok


def test_a_body_of_another_kind_is_refused_before_it_is_journaled(journal):
    with pytest.raises(JournalError, match="SaleBody, not a VoidBody"):
        journal.append(JournalEntry(kind="sale", total_fen=1000, body=void_body(member_sale())))
    record = journal.append(JournalEntry(kind="void", total_fen=1000, body=void_body(member_sale())))
    with pytest.raises(JournalError, match="is a void, not a sale"):
        record.sale_body()


# --- rows journaled before bodies were typed ------------------------------------------------------------------


def database_before_0008(db_path: Path) -> sa.Engine:
    """The journal as the till left it before migration 0008: its rows exactly as written then."""
    assert BEFORE["schema_revision"] == "0007"
    engine = create_engine(db_path)
    migrate(engine, "0007")
    columns = list(BEFORE["rows"][0])
    with engine.begin() as connection:
        connection.exec_driver_sql(
            f"INSERT INTO journal ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [tuple(row[c] for c in columns) for row in BEFORE["rows"]],
        )
    return engine


def test_rows_written_before_keep_verifying_after_the_upgrade_and_the_chain_goes_on(db_path):
    database_before_0008(db_path).dispose()
    engine = open_database(db_path)  # upgrades to head
    report = verify(engine)
    assert report.ok and report.rows == len(BEFORE["rows"]) == 5
    with engine.connect() as connection:
        columns = connection.exec_driver_sql("SELECT kind, receipt_no, original_id FROM journal ORDER BY seq").all()
    sale_id = BEFORE["rows"][0]["id"]
    assert [tuple(c) for c in columns] == [
        ("sale", "T012611300001", None),
        ("refund", "RT012611300001-1", sale_id),
        ("refund", "RT012611300001-2", sale_id),
        ("void", None, None),
        ("sale", "T012611300005", None),
    ]
    journal = Journal(engine, "T01", SHANGHAI, cutoff_hour=4)
    record = journal.append(JournalEntry(kind="sale", total_fen=4721, body=sale_body(member_sale(), EXCLUDED)))
    assert record.prev_hash == BEFORE["rows"][-1]["hash"] and verify(engine).ok
    engine.dispose()


@pytest.mark.parametrize("row", BEFORE["rows"], ids=lambda row: f"{row['seq']}-{row['kind']}")
def test_a_body_written_before_reads_through_its_type_and_writes_the_same_bytes(row):
    typed = BODY_TYPES[row["kind"]].model_validate_json(row["body"])
    assert canonical_json(body_json(typed)) == row["body"]
    # What the outbox sends (the wire view of the body) and central stores as sent: the bytes the chain hashed.
    sent = TransactionBody.model_validate(json.loads(row["body"])).model_dump(mode="json")
    assert canonical_json(sent) == row["body"]


def test_the_sale_body_and_void_body_of_before_hold_what_the_types_declare():
    sale = SaleBody.model_validate_json(BEFORE["rows"][0]["body"])
    assert sale.tenders[2].out_trade_no and sale.member is not None and sale.member.via == "member_code"
    assert not sale.model_extra and not any(line.model_extra for line in sale.lines)  # nothing left undeclared
    void = VoidBody.model_validate_json(BEFORE["rows"][3]["body"])
    assert void.reason == "sale cancelled at the till" and not void.model_extra


def test_a_transaction_is_found_by_receipt_number_and_a_sale_s_refunds_by_index(db_path):
    database_before_0008(db_path).dispose()
    engine = open_database(db_path)
    journal = Journal(engine, "T01", SHANGHAI, cutoff_hour=4)
    refunds = Refunds(None, engine, journal, None, None, None)  # lookups only: no central, no members
    statements: list[tuple[str, tuple]] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append((args[2], args[3])))

    found = refunds.find("RT012611300001-2")
    earlier = refunds.refunds_of(BEFORE["rows"][0]["id"])
    assert found.id == BEFORE["rows"][2]["id"] and [r.id for r in earlier] == [r["id"] for r in BEFORE["rows"][1:3]]

    lookups = [(sql, params) for sql, params in statements if "receipt_no = ?" in sql or "original_id = ?" in sql]
    assert len(lookups) == 2
    with engine.connect() as connection:
        for sql, params in lookups:
            plan = " | ".join(row[3] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))
            index = "ix_journal_receipt_no" if "receipt_no = ?" in sql else "ix_journal_original_id"
            assert f"USING INDEX {index}" in plan and "SCAN journal" not in plan, plan
    engine.dispose()
