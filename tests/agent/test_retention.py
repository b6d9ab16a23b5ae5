"""Retention forgets only what central holds and nothing open needs, and the journal's chain still proves itself."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from agent.clock import to_storage
from agent.db import open_database
from agent.identify import Identifier
from agent.journal import GENESIS, Journal, JournalEntry, canonical_json, row_hash, verify
from agent.member_cache import MemberCache, MemberChange
from agent.member_code_gate import MemberCodeGate
from agent.print_queue import insert_job
from agent.retention import RetentionPolicy, purge_journal, purge_print_jobs, run_retention
from agent.settings import CentralSettings
from agent.sync import Sync
from tests.agent.test_journal import tamper
from tests.support.credentials import PHONE_KEY_BYTES

ROOT = Path(__file__).resolve().parents[2]
SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2027, 6, 1, 4, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=200)  # past the 180-day retention
YOUNG = NOW - timedelta(days=100)
POLICY = RetentionPolicy(journal_days=180, print_job_days=7, member_days=365)


def sale(at: datetime, total_fen: int = 1990, member_id: str | None = None, **body) -> JournalEntry:
    return JournalEntry(
        kind="sale",
        total_fen=total_fen,
        created_at=at,
        member_id=member_id,
        body={
            "lines": [
                {
                    "sku": "6901234567892",
                    "name": "矿泉水",
                    "qty": 1,
                    "unit_price_fen": total_fen,
                    "amount_fen": total_fen,
                }
            ],
            "tenders": [{"kind": "cash", "amount_fen": total_fen}],
            **body,
        },
    )


def confirm(engine: sa.Engine, *ids: str) -> None:
    """What the push does with a row central answered `accepted` or `duplicate` (agent/sync.py)."""
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM outbox WHERE journal_id = ?", [(i,) for i in ids])


def journal_ids(engine: sa.Engine) -> list[str]:
    with engine.connect() as connection:
        return connection.exec_driver_sql("SELECT id FROM journal ORDER BY seq").scalars().all()


def fill_journal(engine: sa.Engine, rows: int, at: datetime, station: str = "T01", confirmed: bool = True) -> list[str]:
    """`rows` sales chained as Journal.append chains them, written in one transaction (appending them one by one
    would wait for the disk each time). Confirmed rows have no outbox row, as after a push."""
    ids = []
    with engine.begin() as connection:
        prev = (
            connection.exec_driver_sql(
                "SELECT hash FROM journal WHERE station_id = ? ORDER BY seq DESC LIMIT 1", (station,)
            ).scalar()
            or GENESIS
        )
        journal, outbox = [], []
        for n in range(rows):
            row = {
                "id": f"{station}-{at:%Y%m%d}-{n:07d}",
                "station_id": station,
                "kind": "sale",
                "business_day": at.date().isoformat(),
                "created_at": to_storage(at + timedelta(microseconds=n)),
                "member_id": None,
                "total_fen": 100 + n % 900,
                "points_earned": 0,
                "points_redeemed": 0,
                "body": canonical_json(
                    {
                        "lines": [
                            {"sku": "6901234567892", "name": "矿泉水 550ml", "qty": 1, "amount_fen": 100 + n % 900}
                        ],
                        "tenders": [{"kind": "cash", "amount_fen": 100 + n % 900}],
                        "receipt_no": f"{station}{n:08d}",
                    }
                ),
            }
            row["prev_hash"] = prev
            row["hash"] = prev = row_hash(prev, row)
            journal.append(tuple(row.values()))
            if not confirmed:
                outbox.append((row["id"], row["created_at"], row["created_at"]))
            ids.append(row["id"])
        connection.exec_driver_sql(
            "INSERT INTO journal (id, station_id, kind, business_day, created_at, member_id, total_fen, points_earned,"
            " points_redeemed, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            journal,
        )
        if outbox:
            connection.exec_driver_sql(
                "INSERT INTO outbox (journal_id, status, attempts, created_at, next_attempt_at) VALUES (?, 'pending', 0, ?, ?)",
                outbox,
            )
    return ids


@pytest.fixture
def journal(engine) -> Journal:
    return Journal(engine, "T01", SHANGHAI, 4)


# --- against the real central service ---------------------------------------------------------------------------


@pytest.mark.parametrize("central_database_url", ["sqlite"], indirect=True)
def test_only_rows_central_accepted_and_older_than_the_retention_go(central, engine, journal):
    credentials = central.add_store("SH001")
    client_settings = CentralSettings(
        url=central.url, token=SecretStr(credentials.token), connect_timeout_s=2, read_timeout_s=5
    )
    from agent.central_client import CentralClient

    sync = Sync(
        engine, MemberCache(engine, PHONE_KEY_BYTES), MemberCodeGate(engine), CentralClient(client_settings, "SH001")
    )
    accepted = [journal.append(sale(OLD + timedelta(minutes=n))).id for n in range(3)]
    rejected = journal.append(sale(OLD + timedelta(minutes=5), member_id="NOSUCHMEMBER")).id  # central refuses it
    behind = journal.append(sale(OLD + timedelta(minutes=6))).id  # accepted, old, but after the rejected one
    young = journal.append(sale(YOUNG)).id  # accepted, inside the retention

    async def push():
        try:
            return await sync.push()
        finally:
            await sync.client.aclose()

    report = asyncio.run(push())
    assert (report.accepted, report.rejected) == (5, 1)
    pending = journal.append(sale(OLD + timedelta(minutes=7))).id  # never sent (created_at is the till's clock)

    purged, held_back, checkpoints = purge_journal(engine, NOW - timedelta(days=180), NOW)

    assert purged == 3 and journal_ids(engine) == [rejected, behind, young, pending]
    assert held_back == (f"station T01: transaction {rejected} (seq 4) is not confirmed by central (rejected)",)
    assert checkpoints["T01"][0] == 3
    checked = verify(engine)
    assert checked.ok and (checked.rows, checked.purged) == (4, 3)
    assert all(journal.get(i) is None for i in accepted)


def test_nothing_younger_than_the_retention_goes_even_when_confirmed(engine, journal):
    rows = [journal.append(sale(NOW - timedelta(days=days))) for days in (400, 181, 179, 1)]
    confirm(engine, *(r.id for r in rows))
    purged, held_back, _ = purge_journal(engine, NOW - timedelta(days=180), NOW)
    assert purged == 2 and held_back == ()
    assert journal_ids(engine) == [rows[2].id, rows[3].id]


def test_the_database_refuses_a_purge_past_the_checkpoint_or_of_an_unconfirmed_row(engine, journal):
    rows = [journal.append(sale(OLD)) for _ in range(4)]
    confirm(engine, rows[0].id, rows[1].id, rows[3].id)
    with pytest.raises(sa.exc.IntegrityError, match="append-only"):
        with engine.begin() as connection:  # no checkpoint covers it
            connection.exec_driver_sql("DELETE FROM journal WHERE seq = ?", (rows[0].seq,))
    with pytest.raises(sa.exc.IntegrityError, match="append-only"):
        with engine.begin() as connection:  # covered, but central has not confirmed rows[2]
            connection.exec_driver_sql(
                "INSERT INTO journal_checkpoint VALUES ('T01', ?, ?, 3, '2027-01-01T00:00:00.000000+00:00')",
                (rows[2].seq, rows[2].hash),
            )
            connection.exec_driver_sql("DELETE FROM journal WHERE seq <= ?", (rows[2].seq,))
    with pytest.raises(sa.exc.IntegrityError, match="only moves forward"):
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO journal_checkpoint VALUES ('T01', 2, 'x', 2, '2027-01-01T00:00:00.000000+00:00')"
            )
            connection.exec_driver_sql("UPDATE journal_checkpoint SET seq = 1")
    assert len(journal_ids(engine)) == 4 and verify(engine).ok


# --- the chain across a purge ------------------------------------------------------------------------------------


def test_the_chain_verifies_after_a_purge_and_still_catches_tampering_after_the_checkpoint(engine, journal):
    fill_journal(engine, 50, OLD)
    kept = [journal.append(sale(YOUNG + timedelta(minutes=n))) for n in range(3)]
    assert purge_journal(engine, NOW - timedelta(days=180), NOW, batch_size=7)[0] == 50
    report = verify(engine)
    assert report.ok and (report.rows, report.purged) == (3, 50)
    assert kept[0].prev_hash != GENESIS  # the first row left still names the purged row before it

    tamper(engine, f"UPDATE journal SET total_fen = 1 WHERE id = '{kept[1].id}'")
    broken = verify(engine).first_break
    assert broken.seq == kept[1].seq and "was changed" in broken.reason


def test_a_row_removed_right_after_the_checkpoint_is_caught(engine, journal):
    fill_journal(engine, 5, OLD)
    kept = [journal.append(sale(YOUNG)) for _ in range(3)]
    purge_journal(engine, NOW - timedelta(days=180), NOW)
    tamper(
        engine,
        f"DELETE FROM outbox WHERE journal_id = '{kept[0].id}'",
        f"DELETE FROM journal WHERE id = '{kept[0].id}'",
    )
    broken = verify(engine).first_break
    assert broken.id == kept[1].id and "removed" in broken.reason


def test_a_removed_checkpoint_is_caught(engine, journal):
    fill_journal(engine, 5, OLD)
    journal.append(sale(YOUNG))
    purge_journal(engine, NOW - timedelta(days=180), NOW)
    tamper(engine, "DELETE FROM journal_checkpoint")
    assert "removed" in verify(engine).first_break.reason


def test_a_journal_purged_to_the_last_row_still_verifies_and_chains_on(engine, journal):
    fill_journal(engine, 10, OLD)
    purge_journal(engine, NOW - timedelta(days=180), NOW)
    assert journal_ids(engine) == [] and verify(engine).ok
    after = journal.append(sale(NOW))
    assert after.seq == 11 and after.prev_hash != GENESIS
    assert verify(engine).ok


# --- what holds a row back ----------------------------------------------------------------------------------------


def _refund_in_flight(engine, sale_id):
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO pending_refund VALUES ('r1', ?, '{}', '2027-01-01', '2027-01-01')", (sale_id,)
        )


def _receipt_uncertain(engine, sale_id):
    with engine.begin() as connection:
        insert_job(connection, "printer", f"{sale_id}-receipt", b"\x1b@receipt", "receipt", sale_id)
        connection.exec_driver_sql("UPDATE print_job SET status = 'uncertain'")


@pytest.mark.parametrize("hold", [_refund_in_flight, _receipt_uncertain], ids=["refund-in-flight", "receipt-uncertain"])
def test_a_row_something_open_still_needs_stays_with_every_row_after_it(engine, journal, hold):
    rows = [journal.append(sale(OLD + timedelta(minutes=n))) for n in range(4)]
    confirm(engine, *(r.id for r in rows))
    hold(engine, rows[2].id)
    purged, held_back, _ = purge_journal(engine, NOW - timedelta(days=180), NOW)
    assert purged == 2 and journal_ids(engine) == [rows[2].id, rows[3].id]
    assert rows[2].id in held_back[0]


def test_a_refund_goes_only_with_its_sale(engine, journal):
    # The sale is on another station of this database and stays (central has not confirmed it): its refund must
    # stay too, or the sale would look refundable in full again.
    kiosk = Journal(engine, "K01", SHANGHAI, 4)
    kept_sale = kiosk.append(sale(OLD))
    refund = journal.append(
        JournalEntry(
            kind="refund",
            total_fen=-1990,
            created_at=OLD + timedelta(hours=1),
            body={"original_id": kept_sale.id, "lines": [], "tenders": []},
        )
    )
    later = journal.append(sale(OLD + timedelta(hours=2)))
    confirm(engine, refund.id, later.id)
    purged, held_back, _ = purge_journal(engine, NOW - timedelta(days=180), NOW)
    assert purged == 0 and set(journal_ids(engine)) == {kept_sale.id, refund.id, later.id}
    assert any(f"goes only with its sale {kept_sale.id}" in reason for reason in held_back)

    confirm(engine, kept_sale.id)  # central has the sale now: all three may go
    assert purge_journal(engine, NOW - timedelta(days=180), NOW)[0] == 3 and verify(engine).ok


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 400), st.booleans()), min_size=1, max_size=25), st.integers(1, 6))
def test_whatever_the_journal_holds_only_confirmed_rows_past_the_retention_go(tmp_path_factory, rows, batch_size):
    engine = open_database(tmp_path_factory.mktemp("prop") / "agent.db")
    try:
        journal = Journal(engine, "T01", SHANGHAI, 4)
        written = []
        for age_days, confirmed in rows:
            record = journal.append(sale(NOW - timedelta(days=age_days)))
            if confirmed:
                confirm(engine, record.id)
            written.append((record, age_days, confirmed))
        purged, _, _ = purge_journal(engine, NOW - timedelta(days=180), NOW, batch_size=batch_size)
        remaining = set(journal_ids(engine))
        gone = [(age, ok) for record, age, ok in written if record.id not in remaining]
        assert all(ok and age > 180 for age, ok in gone) and len(gone) == purged
        # What went is the longest run from the start of the chain that could go.
        expected = 0
        for _, age, ok in written:
            if not (ok and age > 180):
                break
            expected += 1
        assert purged == expected and verify(engine).ok
    finally:
        engine.dispose()


# --- kill -9 mid-purge -------------------------------------------------------------------------------------------

PURGER = textwrap.dedent(
    """
    import sys
    from datetime import datetime
    from pathlib import Path
    from agent.db import open_database
    from agent.retention import purge_journal

    engine = open_database(Path(sys.argv[1]))
    now = datetime.fromisoformat(sys.argv[2])
    purge_journal(engine, now, now, batch_size=200, after_batch=lambda station, seq: print(seq, flush=True))
    print("done", flush=True)
    """
)


def test_kill_9_mid_purge_leaves_a_verifiable_chain(db_path, engine, journal):
    fill_journal(engine, 20_000, OLD)
    kept = journal.append(sale(NOW))
    purger = subprocess.Popen(
        [sys.executable, "-c", PURGER, str(db_path), NOW.isoformat()], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    committed = [int(purger.stdout.readline()) for _ in range(5)]
    os.kill(purger.pid, signal.SIGKILL)
    purger.wait()

    after = open_database(db_path)
    report = verify(after)
    assert report.ok, report.first_break
    assert report.purged >= committed[-1] and report.purged < 20_000  # it was killed mid-way
    assert report.rows + report.purged == 20_001
    assert purge_journal(after, NOW, NOW)[0] == 20_000 - report.purged  # a later run finishes the job
    assert verify(after).ok and journal_ids(after) == [kept.id]
    after.dispose()


# --- print jobs ---------------------------------------------------------------------------------------------------


def test_printed_receipts_go_after_their_retention_and_unfinished_ones_stay(engine):
    with engine.begin() as connection:
        for n, (status, days) in enumerate(
            [("printed", 30), ("cancelled", 30), ("queued", 30), ("uncertain", 30), ("printed", 2)]
        ):
            insert_job(connection, "printer", f"job-{n}", b"\x1b@" + b"x" * 1000, "receipt", None)
            connection.exec_driver_sql(
                "UPDATE print_job SET status = ?, updated_at = ? WHERE id = ?",
                (status, to_storage(NOW - timedelta(days=days)), f"job-{n}"),
            )
    assert purge_print_jobs(engine, NOW - timedelta(days=7), batch_size=1) == 2
    with engine.connect() as connection:
        left = connection.exec_driver_sql("SELECT id FROM print_job ORDER BY seq").scalars().all()
    assert left == ["job-2", "job-3", "job-4"]


# --- members' personal data ----------------------------------------------------------------------------------------


def member(member_id: str, card: str) -> MemberChange:
    return MemberChange(
        member_id,
        1,
        tier="gold",
        points=1200,
        display_name="王小明",
        phone_masked="138****5678",
        identifiers=(
            ("card_no", card),
            ("unionid", f"o6_{member_id}"),
            ("openid:wx123", f"oA_{member_id}"),
            ("phone_hash", f"ph-{member_id}"),
        ),
    )


@pytest.mark.parametrize("batch_size", [1, 500])
def test_personal_data_of_members_not_seen_goes_and_what_identifies_them_offline_stays(engine, cache, batch_size):
    cache.apply(
        [member("gone", "88000001"), member("seen", "88000002"), member("new", "88000003")],
        now=NOW - timedelta(days=400),
    )
    cache.mark_seen("seen", NOW - timedelta(days=10))
    cache.apply([member("new", "88000003")], now=NOW - timedelta(days=300))  # a feed change does not count as seen...
    cache.apply([member("fresh", "88000004")], now=NOW - timedelta(days=5))  # ...arriving in the cache does

    report = run_retention(engine, cache, RetentionPolicy(180, 7, 365, batch_size=batch_size), now=NOW)

    assert report.members == 2
    purged = cache.lookup("card_no", "88000001")
    assert (purged.id, purged.tier, purged.points, purged.display_name, purged.phone_masked) == (
        "gone",
        "gold",
        1200,
        "",
        None,
    )
    assert cache.get("gone") is not None  # a member code (which carries the id) still finds them offline
    for kind, value in (("unionid", "o6_gone"), ("openid:wx123", "oA_gone"), ("phone_hash", "ph-gone")):
        assert cache.lookup(kind, value) is None
    assert cache.lookup("phone_hash", "ph-seen").display_name == "王小明"
    assert cache.lookup("unionid", "o6_fresh") is not None
    assert cache.lookup("card_no", "88000003").display_name == ""
    assert run_retention(engine, cache, POLICY, now=NOW).members == 0  # nothing left to purge


def test_identifying_a_member_at_the_till_marks_them_seen(engine, cache):
    cache.apply([member("m1", "88000001")], now=NOW - timedelta(days=400))

    async def offline() -> bool:
        return False

    identifier = Identifier(cache, MemberCodeGate(engine), client=None, online=offline)
    found = asyncio.run(identifier.card("88000001"))
    assert found.member.id == "m1"
    assert run_retention(engine, cache, POLICY).members == 0  # seen just now, by the real clock
    assert cache.get("m1").display_name == "王小明"
