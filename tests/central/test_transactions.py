"""Batch ingestion: every transaction counted once, points booked once, whatever the network does."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa

from central import card, contract, feed, identity
from central.models import Coupon, LedgerEntry, Transaction
from tests.central.rows import journal_row

BATCH = "/v1/transactions:batch"


@pytest.fixture
def store(central):
    return central.add_store("S1")


def post(client: httpx.Client, *rows: dict) -> contract.BatchResult:
    answer = client.post(BATCH, json={"transactions": list(rows)})
    assert answer.status_code == 200, answer.text
    return contract.BatchResult.model_validate(answer.json())


def ledger_sum(central, member_id: str) -> int:
    with central.session() as session:
        return int(
            session.execute(
                sa.select(sa.func.coalesce(sa.func.sum(LedgerEntry.points), 0)).where(
                    LedgerEntry.member_id == member_id
                )
            ).scalar_one()
        )


def test_rows_are_accepted_then_duplicate_and_points_booked_once(central, store):
    member = central.add_member(points=100)
    sale = journal_row(2590, member_id=member, points_earned=25, points_redeemed=10)
    with central.client(store) as client:
        first = post(client, sale)
        assert [(r.id, r.status, r.reason) for r in first.results] == [(sale["id"], "accepted", None)]
        assert first.balances == [contract.Balance(member_id=member, points=115)]
        again = post(client, sale)
    assert [(r.status, r.reason) for r in again.results] == [("duplicate", None)]
    assert again.balances == [contract.Balance(member_id=member, points=115)]  # a retry still learns the balance
    assert ledger_sum(central, member) == 115
    with central.session() as session:
        assert session.execute(sa.select(sa.func.count()).select_from(Transaction)).scalar_one() == 1


def test_each_rejection_has_its_reason_and_does_not_fail_the_batch(central, store):
    member = central.add_member()
    good = journal_row(500, member_id=member, points_earned=5)
    no_id = journal_row(100)
    del no_id["id"]
    float_money = {**journal_row(100), "total_fen": 99.5}
    bad_tender = journal_row(100, tenders=[{"kind": "bitcoin", "amount_fen": 100}])
    naive_time = journal_row(100, created_at="2026-11-23T03:30:00")
    negative = journal_row(-100)
    negative_points = journal_row(100, member_id=member, points_redeemed=-50)
    negative_tender = journal_row(100, tenders=[{"kind": "cash", "amount_fen": -100}])
    stranger = journal_row(100, member_id="MNOSUCHMEMBER")
    rows = [
        good,
        no_id,
        float_money,
        bad_tender,
        naive_time,
        negative,
        negative_points,
        negative_tender,
        stranger,
        "not an object",
    ]
    with central.client(store) as client:
        result = post(client, *rows)
        conflict = post(client, {**good, "total_fen": 600})
    verdicts = [(r.status, r.reason) for r in result.results]
    assert verdicts == [
        ("accepted", None),
        ("rejected", "malformed"),
        ("rejected", "malformed"),
        ("rejected", "malformed"),
        ("rejected", "malformed"),
        ("rejected", "negative_amount"),
        ("rejected", "negative_amount"),
        ("rejected", "negative_amount"),
        ("rejected", "unknown_member"),
        ("rejected", "malformed"),
    ]
    assert result.results[1].id is None and result.results[2].id == float_money["id"]
    assert "total_fen" in result.results[2].message and "created_at" in result.results[4].message
    assert all(r.message for r in result.results if r.status == "rejected")
    assert [(r.status, r.reason) for r in conflict.results] == [("rejected", "id_conflict")]
    assert ledger_sum(central, member) == 5
    with central.session() as session:
        assert session.execute(sa.select(Transaction.id)).scalars().all() == [good["id"]]


def test_a_rejected_row_can_be_sent_again_once_fixed(central, store):
    row = journal_row(100, member_id="MLATER")
    with central.client(store) as client:
        assert post(client, row).results[0].reason == "unknown_member"
        central.add_member("MLATER")
        assert post(client, row).results[0].status == "accepted"


def test_a_refund_gives_points_back_the_other_way(central, store):
    member = central.add_member(points=1000)
    with central.client(store) as client:
        post(client, journal_row(10000, member_id=member, points_earned=100, points_redeemed=200))
        refund = post(
            client, journal_row(10000, kind="refund", member_id=member, points_earned=100, points_redeemed=200)
        )
    assert refund.balances[0].points == 1000 and ledger_sum(central, member) == 1000


def test_a_refund_row_may_carry_negative_amounts(central, store):
    member = central.add_member(points=50)
    with central.client(store) as client:
        result = post(client, journal_row(-300, kind="refund", member_id=member, points_earned=-3))
    assert result.results[0].status == "accepted" and result.balances[0].points == 47


def test_too_large_a_batch_is_refused_whole_with_413(central, store):
    rows = [journal_row(1) for _ in range(contract.MAX_BATCH_SIZE + 1)]
    with central.client(store) as client:
        answer = client.post(BATCH, json={"transactions": rows})
        assert answer.status_code == 413
        assert answer.json()["error"] == "batch_too_large" and str(contract.MAX_BATCH_SIZE) in answer.json()["message"]
        assert post(client, *rows[: contract.MAX_BATCH_SIZE]).results[-1].status == "accepted"
        assert post(client).results == []


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"rows": []}', b'{"transactions": {}}'])
def test_a_body_that_is_not_a_batch_is_422(central, store, body):
    with central.client(store) as client:
        answer = client.post(BATCH, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422 and answer.json()["error"] == "invalid"


def test_a_committed_batch_whose_answer_was_lost_is_duplicate_on_retry(central, store):
    member = central.add_member(points=0)
    rows = [journal_row(1000, member_id=member, points_earned=10) for _ in range(3)]
    central.faults.drop_response(BATCH)
    with central.client(store) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(BATCH, json={"transactions": rows})
        retry = post(client, *rows)
    assert [r.status for r in retry.results] == ["duplicate"] * 3
    assert retry.balances == [contract.Balance(member_id=member, points=30)]
    assert ledger_sum(central, member) == 30


def test_the_ledger_key_refuses_a_second_booking_even_past_the_id_check(central, store):
    member = central.add_member()
    row = journal_row(100, member_id=member, points_earned=1)
    with central.client(store) as client:
        post(client, row)
    entry = dict(
        member_id=member, kind="earn", points=1, transaction_id=row["id"], store_id="S1", created_at=datetime.now(UTC)
    )
    with central.session() as session, pytest.raises(sa.exc.IntegrityError):
        session.execute(sa.insert(LedgerEntry.__table__).values(**entry))


def test_the_same_batch_sent_twice_at_once_counts_once(central, store):
    member = central.add_member()
    rows = [journal_row(100, member_id=member, points_earned=1) for _ in range(50)]
    answers: list[contract.BatchResult] = []

    def send() -> None:
        with central.client(store) as client:
            answers.append(post(client, *rows))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(r.status for answer in answers for r in answer.results)
    assert statuses.count("accepted") == 50 and statuses.count("duplicate") == 150
    assert ledger_sum(central, member) == 50
    assert {answer.balances[0].points for answer in answers} == {50}


def test_points_of_a_merged_member_go_to_the_survivor(central, store):
    survivor = central.add_member(points=10, identifiers={"unionid": "oUNION"})
    other = central.add_member(points=5, identifiers={"openid:wxapp": "oOPEN"})
    with central.session() as session:
        feed.lock(session)
        identity.merge(session, survivor, other, datetime.now(UTC))
        session.commit()
    with central.client(store) as client:
        result = post(client, journal_row(100, member_id=other, points_earned=7))
    assert result.results[0].status == "accepted"
    assert result.balances == [contract.Balance(member_id=survivor, points=22)]
    assert ledger_sum(central, other) == 0


def test_coupons_used_in_a_sale_are_marked_used(central, store):
    member = central.add_member()
    issue_coupon(central, member, "CP0000000001")
    row = journal_row(9000, member_id=member, coupons=[{"code": "CP0000000001", "amount_off_fen": 1000}])
    with central.client(store) as client:
        assert post(client, row).results[0].status == "accepted"
    with central.session() as session:
        coupon = session.get(Coupon, "CP0000000001")
        assert coupon.used_at is not None and coupon.used_in_transaction == row["id"]


def issue_coupon(central, member_id: str, code: str) -> None:
    now = datetime.now(UTC)
    coupon = Coupon(
        code=code,
        title="满100减10",
        kind="amount_off",
        amount_off_fen=1000,
        threshold_fen=10000,
        valid_from=now - timedelta(days=1),
        valid_until=now + timedelta(days=30),
    )
    with central.session() as session:
        feed.lock(session)
        card.issue_coupon(session, member_id, coupon)
        session.commit()
