"""The journal keeps every transaction, in order, provably unaltered, and always with its outbox row."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from agent.db import open_database
from agent.journal import GENESIS, Journal, JournalEntry, JournalError, verify

SHANGHAI = ZoneInfo("Asia/Shanghai")


def sale(total_fen: int = 1990, **overrides) -> JournalEntry:
    fields = dict(
        kind="sale",
        total_fen=total_fen,
        member_id="m1",
        points_earned=total_fen // 100,
        body={
            "lines": [{"sku": "6901234567892", "name": "矿泉水", "qty": 1, "price_fen": total_fen}],
            "tenders": [{"kind": "cash", "amount_fen": total_fen}],
        },
    )
    fields.update(overrides)
    return JournalEntry(**fields)


@pytest.fixture
def journal(engine) -> Journal:
    return Journal(engine, "T01", SHANGHAI, cutoff_hour=4)


def outbox_ids(engine) -> set[str]:
    with engine.connect() as connection:
        return {row[0] for row in connection.exec_driver_sql("SELECT journal_id FROM outbox")}


def test_append_chains_rows_and_queues_each_for_central(journal, engine):
    first = journal.append(sale(1990))
    second = journal.append(sale(500))
    assert first.prev_hash == GENESIS and second.prev_hash == first.hash
    assert outbox_ids(engine) == {first.id, second.id}
    assert journal.get(second.id).body["lines"][0]["name"] == "矿泉水"
    report = verify(engine)
    assert report.ok and report.rows == 2


def test_each_station_has_its_own_chain(engine):
    till = Journal(engine, "T01", SHANGHAI, 4)
    kiosk = Journal(engine, "K01", SHANGHAI, 4)
    a, b, c = till.append(sale()), kiosk.append(sale()), till.append(sale())
    assert b.prev_hash == GENESIS and c.prev_hash == a.hash
    assert verify(engine).stations == 2


def test_appending_the_same_id_twice_journals_once(journal, engine):
    first = journal.append(sale(id="01900000-0000-7000-8000-000000000001"))
    again = journal.append(sale(id="01900000-0000-7000-8000-000000000001"))
    assert again == first
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM journal").scalar() == 1


def test_business_day_follows_the_store_cut_off(journal):
    # 02:30 on 24 November in Shanghai is still the 23rd's business day with a 04:00 cut-off.
    late = journal.append(sale(created_at=datetime(2026, 11, 23, 18, 30, tzinfo=UTC)))
    morning = journal.append(sale(created_at=datetime(2026, 11, 23, 20, 30, tzinfo=UTC)))
    assert late.business_day == date(2026, 11, 23)
    assert morning.business_day == date(2026, 11, 24)
    assert late.created_at.tzinfo is not None


def test_the_database_refuses_to_rewrite_history(journal, engine):
    journal.append(sale())
    with pytest.raises(sa.exc.IntegrityError, match="append-only"):
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE journal SET total_fen = 1")
    with pytest.raises(sa.exc.IntegrityError, match="append-only"):
        with engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM journal")


def tamper(engine, *statements: str) -> None:
    """What someone with the file and a sqlite3 shell could do."""
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER IF EXISTS journal_no_update")
        connection.exec_driver_sql("DROP TRIGGER IF EXISTS journal_no_delete")
        for sql in statements:
            connection.exec_driver_sql(sql)


def test_verify_finds_an_edited_row(journal, engine):
    rows = [journal.append(sale(100 * n)) for n in range(1, 6)]
    tamper(engine, f"UPDATE journal SET total_fen = 1 WHERE id = '{rows[2].id}'")
    report = verify(engine)
    assert not report.ok
    assert report.first_break.seq == rows[2].seq and "was changed" in report.first_break.reason


def test_verify_finds_a_removed_row(journal, engine):
    rows = [journal.append(sale(100 * n)) for n in range(1, 6)]
    tamper(
        engine,
        f"DELETE FROM outbox WHERE journal_id = '{rows[1].id}'",
        f"DELETE FROM journal WHERE id = '{rows[1].id}'",
    )
    report = verify(engine)
    assert report.first_break.id == rows[2].id and "removed" in report.first_break.reason


def test_verify_finds_a_truncated_tail(journal, engine):
    rows = [journal.append(sale(100 * n)) for n in range(1, 4)]
    tamper(
        engine,
        f"DELETE FROM outbox WHERE journal_id = '{rows[-1].id}'",
        f"DELETE FROM journal WHERE seq = {rows[-1].seq}",
    )
    report = verify(engine)
    assert not report.ok and "removed from the end" in report.first_break.reason


def test_money_must_be_integer_fen(journal):
    with pytest.raises(JournalError, match="integer"):
        journal.append(sale(total_fen=19.9))
    with pytest.raises(JournalError, match="float"):
        journal.append(sale(body={"tenders": [{"kind": "cash", "amount_fen": 19.9}]}))
    with pytest.raises(JournalError, match="unknown transaction kind"):
        journal.append(sale(kind="gift"))


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from zoneinfo import ZoneInfo
    from agent.db import open_database
    from agent.journal import Journal, JournalEntry

    journal = Journal(open_database(Path(sys.argv[1])), "T01", ZoneInfo("Asia/Shanghai"), 4)
    n = 0
    while True:
        n += 1
        record = journal.append(JournalEntry(kind="sale", total_fen=n, body={"n": n}))
        print(record.id, flush=True)
    """
)


def test_kill_9_mid_append_loses_no_committed_row_and_no_outbox_row(db_path):
    open_database(db_path).dispose()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db_path)], stdout=subprocess.PIPE, text=True)
    committed = [writer.stdout.readline().strip() for _ in range(200)]
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()

    engine = open_database(db_path)
    with engine.connect() as connection:
        journaled = {row[0] for row in connection.exec_driver_sql("SELECT id FROM journal")}
    assert set(committed) <= journaled
    assert outbox_ids(engine) == journaled
    assert verify(engine).ok
    engine.dispose()


# --- what the till reads back: receipt numbers, the offline redemption cap, listings -------------------------------

# 18:30 UTC on 23 November is 02:30 on the 24th in Shanghai: still the 23rd's business day with a 04:00 cut-off.
LATE_ON_23RD = datetime(2026, 11, 23, 18, 30, tzinfo=UTC)
MORNING_OF_24TH = datetime(2026, 11, 23, 20, 30, tzinfo=UTC)


def test_the_receipt_number_counts_the_station_s_business_day(journal, engine):
    assert journal.next_receipt_no(LATE_ON_23RD) == "T012611230001"
    journal.append(sale(created_at=datetime(2026, 11, 23, 2, 0, tzinfo=UTC)))
    journal.append(sale(created_at=LATE_ON_23RD))
    Journal(engine, "K01", SHANGHAI, 4).append(sale(created_at=LATE_ON_23RD))  # another station's day
    journal.append(sale(created_at=MORNING_OF_24TH))  # the next business day
    assert journal.next_receipt_no(LATE_ON_23RD) == "T012611230003"
    assert asyncio.run(journal.anext_receipt_no(MORNING_OF_24TH)) == "T012611240002"


def test_offline_points_spent_are_the_member_s_offline_sales_of_the_business_day(journal):
    def spent(points: int, online: bool, **overrides) -> None:
        body = {"tenders": [{"kind": "cash", "amount_fen": 100}], "online": online}
        journal.append(sale(100, points_redeemed=points, body=body, **({"created_at": LATE_ON_23RD} | overrides)))

    spent(30, online=False)
    spent(20, online=False, created_at=datetime(2026, 11, 23, 2, 0, tzinfo=UTC))  # same business day, earlier
    spent(500, online=True)  # central checked that one's balance: not under the offline cap
    spent(70, online=False, member_id="m2")
    spent(40, online=False, created_at=MORNING_OF_24TH)  # the next business day
    spent(60, online=False, kind="refund")  # points given back are not points spent
    assert journal.offline_points_spent("m1", LATE_ON_23RD) == 50
    assert asyncio.run(journal.aoffline_points_spent("m1", MORNING_OF_24TH)) == 40
    assert journal.offline_points_spent("m3", LATE_ON_23RD) == 0


def test_transactions_are_found_by_receipt_number_and_listed_newest_first(journal, engine):
    rows = [journal.append(sale(100 * n, body={"receipt_no": f"T01261123000{n}"})) for n in range(1, 6)]
    refund = journal.append(
        sale(100, kind="refund", body={"receipt_no": "RT012611230001-1", "original_id": rows[0].id})
    )
    Journal(engine, "K01", SHANGHAI, 4).append(sale())
    assert journal.by_receipt_no("T012611230003") == rows[2]
    assert journal.by_receipt_no("T019999999999") is None
    assert journal.refunds_of(rows[0].id) == [refund] and journal.refunds_of(rows[1].id) == []
    newest = asyncio.run(journal.arecent(3))
    assert [r.id for r in newest] == [refund.id, rows[4].id, rows[3].id]
    assert [r.id for r in journal.recent(3, before_seq=rows[3].seq)] == [rows[2].id, rows[1].id, rows[0].id]
