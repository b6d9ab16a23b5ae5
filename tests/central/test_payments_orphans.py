"""Payments reconciliation: a customer charged with no sale holding the payment is found (an orphan charge), reported
in the day summary and by the CLI, and refunded once when the setting says so — never while the station's sale may
still be on its way. The real central service (SQLite and PostgreSQL), payments made through the WeChat Pay
simulator over HTTP, journal rows pushed as a store's outbox pushes them (hash-chained per station)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from agent.clock import to_storage
from agent.ids import new_transaction_id
from agent.journal import GENESIS, canonical_json, row_hash
from central.cli import cli
from central.payments.orphans import refund_number
from central.payments.reconcile import CHINA
from tests.central import test_payments as base
from tests.central.test_payments import code, final_answer, follow, pay
from tests.support.credentials import APPID, MCH_ID, WECHAT_KEY
from tests.support.poll import eventually
from tests.support.timings import FAST_PAYMENTS

sim = base.sim
HOUR = timedelta(hours=1)


class Station:
    """A till's journal as central receives it: each row carries the previous row's hash."""

    def __init__(self, client, station_id: str = "T01"):
        self.client = client
        self.station_id = station_id
        self.prev_hash = GENESIS

    def row(
        self, total_fen: int, at: datetime, *, kind: str = "sale", tenders: list[dict] | None = None, **extra
    ) -> dict:
        body = {
            "lines": [{"name": "矿泉水 550ml", "qty": 1, "amount_fen": total_fen}],
            "tenders": tenders if tenders is not None else [{"kind": "cash", "amount_fen": total_fen}],
        }
        row = {
            "id": new_transaction_id(),
            "station_id": self.station_id,
            "kind": kind,
            "business_day": at.astimezone(CHINA).date().isoformat(),
            "created_at": to_storage(at),
            "member_id": extra.pop("member_id", None),
            "total_fen": total_fen,
            "points_earned": 0,
            "points_redeemed": 0,
            "body": canonical_json(body),
            "prev_hash": self.prev_hash,
        }
        row["hash"] = row_hash(self.prev_hash, row)
        row["body"] = json.loads(row["body"])
        self.prev_hash = row["hash"]
        return row

    def push(self, *rows: dict) -> list[str]:
        answer = self.client.post("/v1/transactions:batch", json={"transactions": list(rows)})
        assert answer.status_code == 200, answer.text
        return [r["status"] for r in answer.json()["results"]]


def paid(client, amount: int, station: str = "T01") -> dict:
    payment = final_answer(client, pay(client, code("00"), amount, station_id=station).json())
    assert payment["state"] == "SUCCESS", payment
    return payment


def wechat(payment: dict, amount: int | None = None) -> list[dict]:
    return [
        {
            "kind": "wechat",
            "amount_fen": payment["amount_fen"] if amount is None else amount,
            "out_trade_no": payment["out_trade_no"],
        }
    ]


def china_day(payment: dict):
    return datetime.fromisoformat(payment["created_at"]).astimezone(CHINA).date()


def check(client, day, station_id: str | None = None) -> dict:
    params = {"station_id": station_id} if station_id else {}
    answer = client.get(f"/v1/stores/S1/days/{day}/summary", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()["payments"]


@pytest.fixture
def orphans(central_factory, sim):
    """Central with WeChat Pay at the simulator and the default grace (1 h) and till clock margin (5 min); no
    periodic round (a test runs it); store S1 and its client."""

    def make(**settings):
        server = central_factory(
            wechat_base_url=sim.url,
            wechat_appid=APPID,
            wechat_mch_id=MCH_ID,
            wechat_api_key=WECHAT_KEY,
            payments_orphan_check_seconds=0,
            **FAST_PAYMENTS,
            **settings,
        )
        store = server.add_store("S1")
        client = server.client(store)
        made.append(client)
        return server, client

    made = []
    yield make
    for client in made:
        client.close()


def run_round(server) -> list:
    """One round of the service's own periodic check, on its event loop (where the gateway's tasks live)."""
    watch = server.app.state.orphan_watch
    return asyncio.run_coroutine_threadsafe(watch.run_once(), watch.loop).result(timeout=60)


def test_a_charge_no_sale_holds_is_an_orphan_once_grace_and_the_stations_push_have_passed_it(orphans):
    server, client = orphans()
    till = Station(client)
    now = datetime.now(UTC)
    till.push(till.row(300, now - timedelta(minutes=20)))  # the station's journal before
    sold = paid(client, 1500)
    till.push(till.row(1500, now, tenders=wechat(sold)))  # a paid sale, pushed as usual
    planted = paid(client, 2000)  # the till never learnt it was paid: no sale holds it
    day = china_day(planted)

    fresh = check(client, day)
    assert fresh["paid"] == {"wechat": {"count": 2, "paid_fen": 3500}}
    assert (fresh["matched"], fresh["awaiting"], fresh["problems"], fresh["grace_seconds"]) == (1, 1, [], 3600)

    # Past the grace period, but the station has pushed nothing journaled after the payment: its sale may be on
    # the way (a WAN down for hours looks just like this).
    server.set_now(now + 2 * HOUR)
    assert (check(client, day)["awaiting"], check(client, day)["problems"]) == (1, [])

    # A row journaled within a minute of the payment by the till's clock: a till clock running ahead could make
    # an earlier row look like that, so it does not count.
    till.push(till.row(100, now + timedelta(minutes=1)))
    assert (check(client, day)["awaiting"], check(client, day)["problems"]) == (1, [])

    # A later row arrives, but the one before it has not (rejected, or still in the outbox): still not safe.
    before = till.row(700, now + timedelta(minutes=7))
    after = till.row(900, now + timedelta(minutes=9))
    till.push(after)
    assert (check(client, day)["awaiting"], check(client, day)["problems"]) == (1, [])

    till.push(before)
    found = check(client, day)
    assert (found["matched"], found["awaiting"]) == (1, 0)
    [orphan] = found["problems"]
    assert orphan["kind"] == "orphan_charge" and orphan["out_trade_no"] == planted["out_trade_no"]
    assert (orphan["amount_fen"], orphan["provider"], orphan["station_id"], orphan["source"]) == (
        2000,
        "wechat",
        "T01",
        "central",
    )
    assert orphan["payment_state"] == "SUCCESS" and orphan["refund_state"] is None
    assert "no sale holds this payment" in orphan["reason"]
    # The payments page says the same for the whole store; another station's view does not hold it.
    assert client.get(f"/v1/stores/S1/days/{day}/payments").json()["check"]["problems"] == [orphan]
    assert check(client, day, station_id="T02") == {**found, "paid": {}, "matched": 0, "problems": []}

    # Before the grace period is over it is not an orphan, whatever the station pushed.
    server.set_now(now + timedelta(minutes=30))
    assert check(client, day)["problems"] == []


def test_a_store_offline_for_hours_is_never_taken_for_orphans(orphans, sim):
    server, client = orphans(payments_orphan_refund=True, payments_orphan_grace_seconds=0)
    till = Station(client)
    now = datetime.now(UTC)
    sold = paid(client, 1234)
    day = china_day(sold)
    # The sale is journaled at once, but the WAN goes down: hours pass with the whole day in the outbox.
    outbox = [till.row(1234, now, tenders=wechat(sold)), till.row(500, now + HOUR), till.row(600, now + 3 * HOUR)]
    server.set_now(now + 5 * HOUR)
    assert (check(client, day)["awaiting"], check(client, day)["problems"]) == (1, [])
    run_round(server)
    assert sim.count("refund") == 0
    till.push(*outbox)
    back = check(client, day)
    assert (back["matched"], back["awaiting"], back["problems"]) == (1, 0, [])


def test_a_sale_central_rejected_keeps_its_payment_from_being_refunded(orphans, sim):
    server, client = orphans(payments_orphan_refund=True, payments_orphan_grace_seconds=0)
    till = Station(client)
    now = datetime.now(UTC)
    sold = paid(client, 4200)
    # The sale is refused (a member central does not know), the rows after it are taken: the push went on past it.
    assert till.push(till.row(4200, now, tenders=wechat(sold), member_id="NOSUCHMEMBER")) == ["rejected"]
    assert till.push(till.row(100, now + HOUR), till.row(200, now + 2 * HOUR)) == ["accepted", "accepted"]
    server.set_now(now + 3 * HOUR)
    assert (check(client, china_day(sold))["awaiting"], check(client, china_day(sold))["problems"]) == (1, [])
    run_round(server)
    assert sim.count("refund") == 0


def test_voids_tenders_and_amounts_that_disagree(orphans):
    server, client = orphans()
    till = Station(client)
    now = datetime.now(UTC)
    cancelled = paid(client, 1000)  # the sale was cancelled after payment and the reversal never happened
    short = paid(client, 800)
    failed = final_answer(client, pay(client, code("32"), 500).json())
    reversed_ = paid(client, 700)
    assert client.post(f"/v1/payments/{reversed_['out_trade_no']}/reverse").status_code == 200
    assert follow(client, reversed_["out_trade_no"])["state"] == "REVERSED"
    assert failed["state"] == "FAILED"
    void = till.row(1000, now, kind="void", tenders=wechat(cancelled))
    mismatch = till.row(900, now + timedelta(seconds=1), tenders=wechat(short, 900))
    unknown = till.row(
        300,
        now + timedelta(seconds=2),
        tenders=[{"kind": "alipay", "amount_fen": 300, "out_trade_no": "NEVERSEENATCENTRAL01"}],
    )
    till.push(void, mismatch, unknown, till.row(50, now + timedelta(minutes=10)))
    server.set_now(now + 2 * HOUR)
    found = check(client, china_day(cancelled))
    problems = {p["out_trade_no"]: p for p in found["problems"]}
    assert set(problems) == {
        cancelled["out_trade_no"],
        short["out_trade_no"],
        "NEVERSEENATCENTRAL01",
    }  # not FAILED, REVERSED
    after_void = problems[cancelled["out_trade_no"]]
    assert (after_void["kind"], after_void["transaction_id"]) == ("orphan_after_void", void["id"])
    assert "reversal never happened" in after_void["reason"]
    differs = problems[short["out_trade_no"]]
    assert (differs["kind"], differs["amount_fen"], differs["tender_fen"]) == ("amount_mismatch", 800, 900)
    never = problems["NEVERSEENATCENTRAL01"]
    assert (never["kind"], never["payment_state"], never["provider"]) == ("tender_not_paid", None, "alipay")
    assert never["transaction_id"] == unknown["id"] and "central never saw this payment" in never["reason"]
    assert found["paid"] == {"wechat": {"count": 2, "paid_fen": 1800}} and found["matched"] == 1


def test_a_charge_the_bill_shows_and_central_never_saw_is_an_orphan(orphans, sim, tmp_path):
    server, client = orphans()
    stranger = sim.add_order("S1T09LOSTANSWER0001", 555, device_info="S1-T09")
    day = datetime.now(UTC).astimezone(CHINA).date()
    settings = tmp_path / "central.toml"
    settings.write_text(
        f'environment = "development"\ndatabase_url = "{server.settings.database_url}"\nphone_hash_key = "{server.settings.phone_hash_key.get_secret_value()}"\n'
        f'wechat_base_url = "{sim.url}"\nwechat_appid = "{APPID}"\nwechat_mch_id = "{MCH_ID}"\nwechat_api_key = "{WECHAT_KEY}"\n'
    )
    assert (
        CliRunner()
        .invoke(cli, ["payments", "reconcile", "--config", str(settings), "--day", day.isoformat()])
        .exit_code
        == 0
    )
    [orphan] = check(client, day)["problems"]
    assert (orphan["kind"], orphan["out_trade_no"], orphan["source"], orphan["amount_fen"]) == (
        "orphan_charge",
        stranger.out_trade_no,
        "bill",
        555,
    )
    assert orphan["payment_state"] is None and "refund it at the provider" in orphan["reason"]


def test_auto_refund_refunds_an_orphan_once_however_often_it_runs(orphans, sim, tmp_path):
    server, client = orphans(
        payments_orphan_refund=True, payments_orphan_grace_seconds=0, payments_orphan_clock_margin_seconds=0
    )
    till = Station(client)
    sold = paid(client, 1500)
    till.push(till.row(1500, datetime.now(UTC), tenders=wechat(sold)))
    planted = paid(client, 2000)
    waiting = paid(client, 3000, station="T02")  # station T02 has pushed nothing since: not refunded
    till.push(till.row(100, datetime.now(UTC)))  # the next sale at T01, after the planted payment
    day = china_day(planted)

    first = dict(run_round(server))["S1"]
    [orphan] = first.problems
    assert (orphan.out_trade_no, orphan.out_refund_no) == (
        planted["out_trade_no"],
        refund_number(planted["out_trade_no"]),
    )
    assert orphan.refund_state in ("PROCESSING", "SUCCESS") and first.awaiting == 1
    run_round(server)
    run_round(server)
    assert sim.count("refund") == 1 and sim.count("refund", sold["out_trade_no"]) == 0
    assert sim.count("refund", waiting["out_trade_no"]) == 0
    orn = refund_number(planted["out_trade_no"])
    assert len(orn) == 32 and orn.startswith("ORPH")

    refund = client.get(f"/v1/payments/{planted['out_trade_no']}/refunds/{orn}").json()
    while not refund["final"]:
        refund = client.get(f"/v1/payments/{planted['out_trade_no']}/refunds/{orn}", params={"wait": 2}).json()
    assert (refund["state"], refund["amount_fen"]) == ("SUCCESS", 2000)
    [done] = check(client, day)["problems"]
    assert (done["refund_state"], done["refunded_fen"], done["out_refund_no"]) == ("SUCCESS", 2000, orn)
    assert "refunded to the customer" in done["reason"]
    run_round(server)
    assert sim.count("refund") == 1

    # The CLI reports the same; it never refunds itself.
    settings = tmp_path / "central.toml"
    settings.write_text(
        f'environment = "development"\ndatabase_url = "{server.settings.database_url}"\nphone_hash_key = "{server.settings.phone_hash_key.get_secret_value()}"\n'
        "payments_orphan_grace_seconds = 0\npayments_orphan_clock_margin_seconds = 0\n"
    )
    printed = CliRunner().invoke(cli, ["payments", "orphans", "--config", str(settings), "--day", day.isoformat()])
    assert printed.exit_code == 0, printed.output
    assert f"store S1 {day}: wechat 3 paid 6500 fen; 1 matched, 1 awaiting, 1 to settle" in printed.output
    assert f"orphan_charge  {planted['out_trade_no']}  2000 fen [refund {orn} SUCCESS]" in printed.output
    as_json = CliRunner().invoke(
        cli, ["payments", "orphans", "--config", str(settings), "--day", day.isoformat(), "--json"]
    )
    assert json.loads(as_json.output)["problems"][0]["out_trade_no"] == planted["out_trade_no"]


def test_the_service_checks_on_its_own_schedule(central_factory, sim):
    server = central_factory(
        wechat_base_url=sim.url,
        wechat_appid=APPID,
        wechat_mch_id=MCH_ID,
        wechat_api_key=WECHAT_KEY,
        payments_orphan_refund=True,
        payments_orphan_grace_seconds=0,
        payments_orphan_clock_margin_seconds=0,
        payments_orphan_check_seconds=0.05,
        **FAST_PAYMENTS,
    )
    with server.client(server.add_store("S1")) as client:
        planted = paid(client, 990)
        till = Station(client)
        till.push(till.row(10, datetime.now(UTC)))
        orn = refund_number(planted["out_trade_no"])
        answer = eventually(  # polling the service's own state: the round runs every 0.05 s
            lambda: (
                (found := client.get(f"/v1/payments/{planted['out_trade_no']}/refunds/{orn}")).status_code != 404
                and found
            ),
            within=20,
            what="the periodic check's refund of the orphan",
            every=0.05,
        )
        refund = answer.json()
        while not refund["final"]:
            refund = client.get(f"/v1/payments/{planted['out_trade_no']}/refunds/{orn}", params={"wait": 2}).json()
        assert (refund["state"], refund["amount_fen"], sim.count("refund")) == ("SUCCESS", 990, 1)


def test_a_sale_finished_days_after_its_payment_still_holds_it(orphans):
    server, client = orphans()
    till = Station(client)
    now = datetime.now(UTC)
    slow = paid(client, 2500)
    # The sale stayed open over a long weekend (one open sale per station: nothing else was journaled meanwhile).
    till.push(
        till.row(2500, now + timedelta(days=3), tenders=wechat(slow)), till.row(100, now + timedelta(days=3, hours=1))
    )
    server.set_now(now + timedelta(days=4))
    found = check(client, china_day(slow))
    assert (found["matched"], found["awaiting"], found["problems"]) == (1, 0, [])
