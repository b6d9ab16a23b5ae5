"""Day summaries: what central holds for a store's business day, in a form two sides can compare."""

from __future__ import annotations

import hashlib
from datetime import date, datetime

from central import contract
from central.payments.reconcile import CHINA
from central.payments.simulators import serve_in_thread
from central.payments.simulators.wechat import WeChatSimulator
from tests.central.rows import journal_row
from tests.central.test_payments import code, pay
from tests.support.credentials import APPID, MCH_ID, WECHAT_KEY
from tests.support.timings import FAST_PAYMENTS


def independent_digest(rows: list[dict]) -> str:
    """The contract's definition, written again from its text."""
    lines = [f"{row['id']}:{row['total_fen']}" for row in sorted(rows, key=lambda row: row["id"])]
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def test_sums_per_tender_points_and_digest(central):
    store = central.add_store("S1")
    member = central.add_member(points=1000)
    rows = [
        journal_row(
            2500,
            member_id=member,
            points_earned=25,
            tenders=[{"kind": "wechat", "amount_fen": 2500, "transaction_id": "4200001"}],
        ),
        journal_row(1800, tenders=[{"kind": "cash", "amount_fen": 1000}, {"kind": "alipay", "amount_fen": 800}]),
        journal_row(
            990, member_id=member, points_redeemed=100, tenders=[{"kind": "cash", "amount_fen": 990}], station_id="K01"
        ),
        journal_row(500, kind="refund", tenders=[{"kind": "cash", "amount_fen": 500}]),
    ]
    other_day = journal_row(777, business_day=date(2026, 11, 22))
    with central.client(store) as client:
        client.post("/v1/transactions:batch", json={"transactions": [*rows, other_day]}).raise_for_status()
        summary = contract.DaySummary.model_validate(client.get("/v1/stores/S1/days/2026-11-23/summary").json())
        till = contract.DaySummary.model_validate(
            client.get("/v1/stores/S1/days/2026-11-23/summary", params={"station_id": "T01"}).json()
        )
        empty = client.get("/v1/stores/S1/days/2026-01-01/summary").json()
        bad_day = client.get("/v1/stores/S1/days/2026-13-01/summary")
    assert summary.count == 4 and summary.total_fen == 2500 + 1800 + 990 + 500
    assert summary.tenders == {"alipay": 800, "cash": 1000 + 990 + 500, "wechat": 2500}
    assert (summary.points_earned, summary.points_redeemed) == (25, 100)
    assert summary.digest == independent_digest(rows)
    assert [t.id for t in summary.transactions] == sorted(r["id"] for r in rows)
    assert {t.id: (t.total_fen, t.points_earned, t.points_redeemed, t.station_id) for t in summary.transactions}[
        rows[2]["id"]
    ] == (990, 0, 100, "K01")
    assert (
        till.count == 3 and till.station_id == "T01" and till.digest == independent_digest([rows[0], rows[1], rows[3]])
    )
    assert empty["count"] == 0 and empty["digest"] == hashlib.sha256(b"").hexdigest() and empty["tenders"] == {}
    assert bad_day.status_code == 422


def test_another_stores_summary_is_forbidden(central):
    central.add_store("S1")
    s2 = central.add_store("S2")
    with central.client(s2) as client:
        answer = client.get("/v1/stores/S1/days/2026-11-23/summary")
    assert answer.status_code == 403 and answer.json()["error"] == "forbidden"


def test_the_summary_carries_the_days_code_payments(central_factory):
    sim = WeChatSimulator(appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY)
    served = serve_in_thread(sim.app())
    try:
        server = central_factory(
            wechat_base_url=served.url,
            wechat_appid=APPID,
            wechat_mch_id=MCH_ID,
            wechat_api_key=WECHAT_KEY,
            **FAST_PAYMENTS,
        )
        with server.client(server.add_store("S1")) as client:
            payment = pay(client, code("00"), 2500).json()
            day = datetime.fromisoformat(payment["created_at"]).astimezone(CHINA).date()  # payments count China days
            tender = {"kind": "wechat", "amount_fen": 2500, "out_trade_no": payment["out_trade_no"]}
            client.post(
                "/v1/transactions:batch", json={"transactions": [journal_row(2500, business_day=day, tenders=[tender])]}
            ).raise_for_status()
            answer = client.get(f"/v1/stores/S1/days/{day}/summary").json()
            other_till = client.get(f"/v1/stores/S1/days/{day}/summary", params={"station_id": "K01"}).json()
    finally:
        served.stop()
    payments = answer["payments"]
    assert payments["paid"] == {"wechat": {"count": 1, "paid_fen": 2500}} and answer["tenders"] == {"wechat": 2500}
    assert (payments["day"], payments["matched"], payments["awaiting"], payments["problems"]) == (
        day.isoformat(),
        1,
        0,
        [],
    )
    assert (other_till["payments"]["paid"], other_till["payments"]["matched"]) == ({}, 0)
    # An agent reading a central that does not check payments gets no `payments`, and still reads the summary.
    older = {name: value for name, value in answer.items() if name != "payments"}
    assert contract.DaySummary.model_validate(older).payments is None
