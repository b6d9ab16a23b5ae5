"""The agent's sync against the real central service on 127.0.0.1 (SQLite and PostgreSQL): every transaction
counted exactly once, points never doubled, nothing lost while central is down or misbehaves."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from agent.central_client import (
    CentralBadResponse,
    CentralClient,
    CentralRejected,
    CentralServerError,
    CentralUnreachable,
)
from agent.journal import Journal, JournalEntry
from agent.member_cache import MemberCache
from agent.member_code_gate import MemberCodeGate
from agent.reconcile import reconcile
from agent.settings import CentralSettings
from agent.sync import Sync
from central import feed
from central.identity import merge
from tests.support.credentials import PHONE_KEY_BYTES

ROOT = Path(__file__).resolve().parents[2]
SHANGHAI = ZoneInfo("Asia/Shanghai")
AT = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)  # 11:00 in Shanghai
DAY = date(2026, 11, 23)


@pytest.fixture
def store(central):
    central.seed(members=40)
    return central.add_store("SH001")


def make_sync(engine, central, credentials, store_id: str | None = None, batch_size: int = 200) -> Sync:
    settings = CentralSettings(
        url=central.url, token=SecretStr(credentials.token), connect_timeout_s=2, read_timeout_s=5
    )
    return Sync(
        engine=engine,
        cache=MemberCache(engine, PHONE_KEY_BYTES),
        gate=MemberCodeGate(engine),
        client=CentralClient(settings, store_id or credentials.store_id),
        batch_size=batch_size,
        page_size=15,
    )


_loop: asyncio.AbstractEventLoop | None = None


@pytest.fixture(autouse=True)
def event_loop():
    """One event loop per test, as the agent has one for its life (the HTTP client's connections belong to it)."""
    global _loop
    _loop = asyncio.new_event_loop()
    yield _loop
    _loop.close()
    _loop = None


def run(coroutine):
    return _loop.run_until_complete(coroutine)


@pytest.fixture
def sync(engine, central, store, event_loop):
    sync = make_sync(engine, central, store)
    yield sync
    run(sync.client.aclose())


def a_member(sync: Sync) -> str:
    with sync.engine.connect() as connection:
        return connection.exec_driver_sql("SELECT id FROM member ORDER BY id LIMIT 1").scalar_one()


def points_of(sync: Sync, member_id: str) -> int:
    with sync.engine.connect() as connection:
        return connection.exec_driver_sql("SELECT points FROM member WHERE id = ?", (member_id,)).scalar_one()


def sale(journal: Journal, total_fen: int, member_id: str | None = None, tender: str = "cash", **extra) -> str:
    body = {
        "lines": [{"sku": "6901234567892", "qty": 1, "amount_fen": total_fen}],
        "tenders": [{"kind": tender, "amount_fen": total_fen}],
    }
    record = journal.append(
        JournalEntry(
            kind="sale",
            total_fen=total_fen,
            body=body,
            member_id=member_id,
            points_earned=total_fen // 100 if member_id else 0,
            created_at=AT,
            **extra,
        )
    )
    return record.id


def outbox(sync: Sync) -> dict[str, str]:
    with sync.engine.connect() as connection:
        return dict(connection.exec_driver_sql("SELECT journal_id, status FROM outbox").all())


@pytest.fixture
def journal(engine) -> Journal:
    return Journal(engine, "T01", SHANGHAI, 4)


def test_first_pull_fills_the_cache_then_follows_changes(sync, central):
    report = run(sync.pull())
    assert report.upserted == 40 and report.pages >= 3 and report.keys >= 1
    assert sync.cache.count() == 40
    member = sync.cache.lookup("card_no", next(iter(_cards(sync))))
    assert member is not None and member.display_name
    again = run(sync.pull())
    assert (again.upserted, again.deleted) == (0, 0)


class ChangesTransport(httpx.AsyncBaseTransport):
    """The network to central, counting the requests for member changes: the `fail_at`-th finds central
    unreachable, and `asked` is set once `signal_at` of them have gone out."""

    def __init__(self, fail_at: int = 0, signal_at: int = 0):
        self.inner = httpx.AsyncHTTPTransport()
        self.fail_at, self.signal_at = fail_at, signal_at
        self.changes_asked = 0
        self.asked = threading.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/members/changes"):
            self.changes_asked += 1
            if self.changes_asked == self.fail_at:
                raise httpx.ConnectError("connection refused", request=request)
            if self.signal_at and self.changes_asked >= self.signal_at:
                self.asked.set()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_sync_cut_off_keeps_the_pages_before_it_and_resumes_after_them(engine, central, store):
    # 40 members in pages of 15: the third page cannot be fetched. The two before it are in the cache, with the
    # cursor that follows them, whether they were applied one by one or together; the next pull brings the rest.
    sync = make_sync(engine, central, store)
    transport = ChangesTransport(fail_at=3)
    settings = CentralSettings(url=central.url, token=SecretStr(store.token), connect_timeout_s=2, read_timeout_s=5)
    sync.client = CentralClient(settings, store.store_id, transport=transport)
    with pytest.raises(CentralUnreachable):
        run(sync.pull())
    assert sync.cache.count() == 30
    with sync.engine.connect() as connection:
        cached_up_to = connection.exec_driver_sql("SELECT max(version) FROM member").scalar_one()
    assert sync.cache.cursor() == str(cached_up_to)
    report = run(sync.pull())
    run(sync.client.aclose())
    assert (report.upserted, report.pages) == (10, 1) and sync.cache.count() == 40


def test_pages_are_applied_in_batches_while_the_next_batch_is_fetched(engine, central, store):
    sync = make_sync(engine, central, store)
    sync.page_size, sync.apply_at_most = 2, 8  # 20 pages of 2 members: batches of 4 pages
    transport = ChangesTransport(signal_at=9)  # the batch being applied, the next 4 pages, 1 more in hand
    settings = CentralSettings(url=central.url, token=SecretStr(store.token), connect_timeout_s=2, read_timeout_s=5)
    sync.client = CentralClient(settings, store.store_id, transport=transport)
    applied: list[int] = []
    apply = sync.cache.apply_rows

    def apply_once_the_next_batch_is_fetched(batches, cursor=None, now=None):
        if not applied:
            assert transport.asked.wait(10), "the next pages were not fetched while the first batch was applied"
        applied.append(sum(len(rows) for rows in batches))
        return apply(batches, cursor, now)

    sync.cache.apply_rows = apply_once_the_next_batch_is_fetched
    report, again = run(sync.pull()), run(sync.pull())
    run(sync.client.aclose())
    assert (report.upserted, report.pages) == (40, 20) and sync.cache.count() == 40
    assert applied[:5] == [8] * 5  # 5 transactions, each with the cursor of its last page
    assert again.upserted == 0


def _cards(sync: Sync) -> list[str]:
    with sync.engine.connect() as connection:
        return [
            row[0] for row in connection.exec_driver_sql("SELECT value FROM member_identifier WHERE kind = 'card_no'")
        ]


def test_push_sends_each_transaction_once_and_takes_central_balances(sync, journal, central):
    run(sync.pull())
    member = a_member(sync)
    before = points_of(sync, member)
    ids = [sale(journal, 1990, member, "wechat"), sale(journal, 500), sale(journal, 12000, member)]
    report = run(sync.push())
    assert (report.sent, report.accepted, report.duplicate, report.rejected) == (3, 3, 0, 0)
    assert outbox(sync) == {}
    assert points_of(sync, member) == before + 19 + 120
    assert run(sync.push()).sent == 0
    summary = run(sync.client.day_summary(DAY, "T01"))
    assert sorted(t.id for t in summary.transactions) == sorted(ids)
    assert summary.tenders == {"wechat": 1990, "cash": 12500}


def test_a_long_outbox_drains_in_batches_of_the_configured_size(engine, central, store, journal):
    sync = make_sync(engine, central, store, batch_size=2)
    ids = [sale(journal, 100 * n) for n in range(1, 6)]
    report = run(sync.push())
    summary = run(sync.client.day_summary(DAY, "T01"))
    run(sync.client.aclose())
    assert report.accepted == 5 and sorted(t.id for t in summary.transactions) == sorted(ids)
    assert central.faults.hits["/v1/transactions:batch"] == 3


def test_central_down_then_back_loses_and_doubles_nothing(sync, journal, central):
    run(sync.pull())
    member = a_member(sync)
    before = points_of(sync, member)
    central.stop()
    ids = [sale(journal, 1000, member), sale(journal, 2000, member)]
    assert run(sync.push_job.run()) is None
    assert sync.push_job.failures == 1 and "cannot reach central" in sync.push_job.last_error
    assert set(outbox(sync)) == set(ids)
    central.start()
    sync.push_job.not_before = 0  # the back-off has passed
    assert run(sync.push_job.run()).accepted == 2
    assert sync.push_job.failures == 0 and sync.push_job.last_success is not None
    assert points_of(sync, member) == before + 30


def test_answer_lost_after_commit_is_a_duplicate_on_retry(sync, journal, central):
    run(sync.pull())
    member = a_member(sync)
    before = points_of(sync, member)
    sale(journal, 5000, member)
    central.faults.drop_response("/v1/transactions:batch")
    with pytest.raises(CentralUnreachable):
        run(sync.push())
    assert len(outbox(sync)) == 1  # not applied: the answer never came
    report = run(sync.push())
    assert (report.accepted, report.duplicate) == (0, 1)
    assert points_of(sync, member) == before + 50  # booked once
    assert outbox(sync) == {}


@pytest.mark.parametrize(
    "status, body, headers, error",
    [
        (500, '{"error": "internal", "message": "boom"}', {}, CentralServerError),
        (429, '{"error": "slow_down", "message": "later"}', {"Retry-After": "120"}, CentralServerError),
        (200, "<html>captive portal</html>", {}, CentralBadResponse),
        (200, '{"results": [], "balances": []}', {}, CentralBadResponse),
    ],
)
def test_misbehaving_central_applies_nothing_and_backs_off(sync, journal, central, status, body, headers, error):
    sale(journal, 700)
    central.faults.respond("/v1/transactions:batch", status, body, headers=headers)
    with pytest.raises(error):
        run(sync.push())
    assert list(outbox(sync).values()) == ["pending"]
    central.faults.respond("/v1/transactions:batch", status, body, headers=headers)
    assert run(sync.push_job.run()) is None
    delay = sync.push_job.not_before - __import__("time").monotonic()
    if "Retry-After" in headers:
        assert delay > 100  # central's wish is honoured
    assert sync.push_job.failures == 1


def test_rejected_rows_are_kept_visible_and_not_resent(sync, journal, central):
    run(sync.pull())
    good = sale(journal, 300)
    unknown = sale(journal, 300, member_id="NOSUCHMEMBER")
    negative = sale(journal, -300)
    report = run(sync.push())
    assert (report.accepted, report.rejected) == (1, 2)
    box = outbox(sync)
    assert good not in box and box == {unknown: "rejected", negative: "rejected"}
    with sync.engine.connect() as connection:
        reasons = dict(connection.exec_driver_sql("SELECT journal_id, last_error FROM outbox").all())
    assert reasons[unknown].startswith("unknown_member") and reasons[negative].startswith("negative_amount")
    hits = central.faults.hits["/v1/transactions:batch"]
    assert run(sync.push()).sent == 0 and central.faults.hits["/v1/transactions:batch"] == hits
    assert sync.status().outbox_rejected == 2


def test_another_stores_token_is_refused(engine, central, store, journal):
    other = central.add_store("SH002")
    sneaky = make_sync(engine, central, other, store_id="SH001")
    sale(journal, 100)
    with pytest.raises(CentralRejected) as caught:
        run(sneaky.push())
    run(sneaky.client.aclose())
    assert caught.value.status == 403
    assert list(outbox_rows(engine).values()) == ["pending"]  # kept for the right credentials


def outbox_rows(engine) -> dict[str, str]:
    with engine.connect() as connection:
        return dict(connection.exec_driver_sql("SELECT journal_id, status FROM outbox").all())


def test_a_merge_at_central_reaches_the_cache(sync, central):
    run(sync.pull())
    with sync.engine.connect() as connection:
        (a, card_a), (b, _) = connection.exec_driver_sql(
            "SELECT member_id, value FROM member_identifier WHERE kind = 'card_no' ORDER BY member_id LIMIT 2"
        ).all()
    with central.session() as session:
        feed.lock(session)
        merge(session, b, a, datetime.now(UTC))
        session.commit()
    report = run(sync.pull())
    assert report.deleted == 1
    assert sync.cache.lookup("card_no", card_a).id == b
    with sync.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM member WHERE id = ?", (a,)).scalar() == 0


def test_reconcile_matches_then_finds_and_repairs_what_central_lacks(sync, journal, central, store):
    ids = [sale(journal, 1000), sale(journal, 2500, tender="alipay")]
    run(sync.push())
    assert run(reconcile(sync.engine, sync.client, "T01", DAY)).matched

    # Central loses a row it had accepted (a restore from an older backup, say).
    with central.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM ledger_entry WHERE transaction_id = :id"), {"id": ids[1]})
        connection.execute(sa.text("DELETE FROM store_transaction WHERE id = :id"), {"id": ids[1]})
    result = run(reconcile(sync.engine, sync.client, "T01", DAY))
    assert not result.matched and result.missing_at_central == [ids[1]] and result.requeued == [ids[1]]
    assert run(sync.push()).accepted == 1
    assert run(reconcile(sync.engine, sync.client, "T01", DAY)).matched


def test_reconcile_reports_what_only_central_has(sync, journal, central, store, engine, tmp_path):
    from agent.db import open_database

    elsewhere = open_database(tmp_path / "other.db")  # the same station id journaled on another disk
    stray = sale(Journal(elsewhere, "T01", SHANGHAI, 4), 4200)
    other_sync = make_sync(elsewhere, central, store)
    run(other_sync.push())
    run(other_sync.client.aclose())
    elsewhere.dispose()
    sale(journal, 100)
    run(sync.push())
    result = run(reconcile(sync.engine, sync.client, "T01", DAY))
    assert result.missing_at_store == [stray] and not result.matched


def pos_edge(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_cli_sync_now_and_reconcile(central, store, engine, db_path, journal, tmp_path):
    sale(journal, 990)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[store]\nid = "SH001"\nname = "徐汇店"\n[station]\nid = "T01"\n[central]\nurl = "{central.url}"\ntoken = "{store.token}"\n'
        f'[storage]\ndatabase = "{db_path}"\n'
    )
    config.chmod(0o600)
    done = pos_edge(config, "sync", "now")
    assert done.returncode == 0, done.stderr
    assert "pushed 1 transaction(s): 1 accepted" in done.stdout and "pulled 40 member change(s)" in done.stdout
    matched = pos_edge(config, "reconcile", "--day", DAY.isoformat(), "--json")
    assert matched.returncode == 0 and json.loads(matched.stdout)["matched"] is True
    sale(journal, 10)  # journaled, not pushed yet
    different = pos_edge(config, "reconcile", "--day", DAY.isoformat())
    assert different.returncode == 1 and "DIFFERENT" in different.stdout and "waiting to be pushed" in different.stdout
    central.stop()
    offline = pos_edge(config, "sync", "now")
    assert offline.returncode == 1 and offline.stderr.startswith("error: cannot reach central")


def test_the_running_agent_syncs_on_its_schedule(central, store, engine, db_path, journal, tmp_path):
    import httpx

    from tests.agent.test_cli import free_port
    from tests.support.poll import eventually

    transaction = sale(journal, 1234)
    engine.dispose()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[store]\nid = "SH001"\nname = "徐汇店"\n[station]\nid = "T01"\n'
        f'[central]\nurl = "{central.url}"\npush_interval_s = 1\nsync_interval_s = 5\n[storage]\ndatabase = "{db_path}"\n'
    )
    port = free_port()
    env = {**os.environ, "POS_EDGE_API__PORT": str(port), "POS_EDGE_CENTRAL__TOKEN": store.token}
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in agent.stderr:
            if "Uvicorn running" in line or agent.poll() is not None:
                break
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
        status = eventually(
            lambda: (s := api.get("/v1/sync").json())["push"]["last_success"] and s["pull"]["last_success"] and s,
            within=20,
        )
        assert status["outbox_pending"] == 0 and status["member_cursor"]
        with central.client(store) as client:
            summary = client.get(f"/v1/stores/SH001/days/{DAY.isoformat()}/summary").json()
        assert [t["id"] for t in summary["transactions"]] == [transaction]
        assert api.get("/v1/status").json()["database"]["members"] == 40
    finally:
        agent.terminate()
        agent.wait(timeout=15)


def test_reconcile_reports_a_customer_charged_with_no_sale(central_factory, engine, db_path, tmp_path):
    """A payment made at central that no sale holds (the till never learnt it was paid) is reported by the
    station's reconciliation once central's grace is over and the station has pushed past it; exit 1."""
    from datetime import timedelta

    from agent.clock import utcnow
    from central.payments.reconcile import CHINA
    from central.payments.simulators import serve_in_thread
    from central.payments.simulators.wechat import WeChatSimulator
    from tests.central.test_payments import code, pay
    from tests.support.credentials import APPID, MCH_ID, WECHAT_KEY
    from tests.support.timings import FAST_PAYMENTS

    simulator = WeChatSimulator(appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY)
    served = serve_in_thread(simulator.app())
    try:
        central = central_factory(
            wechat_base_url=served.url,
            wechat_appid=APPID,
            wechat_mch_id=MCH_ID,
            wechat_api_key=WECHAT_KEY,
            **FAST_PAYMENTS,
        )
        store = central.add_store("SH001")
        with central.client(store) as client:
            sold, planted = pay(client, code("00"), 1500).json(), pay(client, code("00"), 2000).json()
        assert sold["state"] == planted["state"] == "SUCCESS"
        journal = Journal(engine, "T01", SHANGHAI, 4)
        now = utcnow()
        tender = {"kind": "wechat", "amount_fen": 1500, "tendered_fen": 1500, "out_trade_no": sold["out_trade_no"]}
        journal.append(
            JournalEntry(kind="sale", total_fen=1500, body={"lines": [], "tenders": [tender]}, created_at=now)
        )
        cash = lambda fen: {"lines": [], "tenders": [{"kind": "cash", "amount_fen": fen, "tendered_fen": fen}]}  # noqa: E731
        journal.append(JournalEntry(kind="sale", total_fen=300, body=cash(300)))  # the next sale, seconds later
        sync = make_sync(engine, central, store)
        run(sync.push())
        day = datetime.fromisoformat(planted["created_at"]).astimezone(CHINA).date()
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[store]\nid = "SH001"\nname = "徐汇店"\n[station]\nid = "T01"\n[central]\nurl = "{central.url}"\ntoken = "{store.token}"\n'
            f'[storage]\ndatabase = "{db_path}"\n'
        )
        config.chmod(0o600)

        # Past central's grace period, but the station has pushed nothing journaled well after it: not an orphan (yet).
        central.set_now(now + timedelta(hours=2))
        early = run(reconcile(engine, sync.client, "T01", day))
        assert (
            early.payment_problems == []
            and early.payments_awaiting == 1
            and early.payments_paid == {"wechat": {"count": 2, "paid_fen": 3500}}
        )
        journal.append(JournalEntry(kind="sale", total_fen=400, body=cash(400), created_at=now + timedelta(minutes=10)))
        run(sync.push())
        result = run(reconcile(engine, sync.client, "T01", day))
        run(sync.client.aclose())
        [orphan] = result.payment_problems
        assert not result.matched and (orphan.kind, orphan.out_trade_no, orphan.amount_fen) == (
            "orphan_charge",
            planted["out_trade_no"],
            2000,
        )

        as_json = pos_edge(config, "reconcile", "--day", day.isoformat(), "--json")
        assert as_json.returncode == 1, as_json.stderr
        report = json.loads(as_json.stdout)
        assert report["matched"] is False and [p["out_trade_no"] for p in report["payment_problems"]] == [
            planted["out_trade_no"]
        ]
        text = pos_edge(config, "reconcile", "--day", day.isoformat())
        assert text.returncode == 1 and "DIFFERENT" in text.stdout
        assert (
            f"payment orphan_charge {planted['out_trade_no']} wechat 2000 fen: the customer was charged 2000 fen"
            in text.stdout
        )
        assert "code payments: wechat 2 paid 3500 fen" in text.stdout
    finally:
        served.stop()
