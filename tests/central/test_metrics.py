"""Central's /metrics over HTTP, read with prometheus-client's own parser: requests by route template and status,
payments by outcome (against the WeChat Pay simulator), rows ingested, the member change feed's head and how far
behind it each store was left; behind `metrics_token`."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from central.leases import Leases
from tests.central.rows import journal_row
from tests.central.test_payments import code, final_answer, follow, new_otn, pay, sim  # noqa: F401 - sim: fixture
from tests.support.clock import FakeClock
from tests.support.credentials import APPID, MCH_ID, WECHAT_KEY
from tests.support.timings import FAST_PAYMENTS

TOKEN = "metrics-token-0123456789abcdef"


def scrape(server) -> dict[tuple[str, tuple], float]:
    answer = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no sample {name}{labels}; have {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


@pytest.mark.parametrize("central_database_url", ["sqlite"], indirect=True)
def test_metrics_are_off_without_a_token_and_want_it_once_set(central_factory):
    off = central_factory()
    answer = httpx.get(f"{off.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert answer.status_code == 401 and "metrics_token" in answer.json()["message"]
    on = central_factory(metrics_token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
        answer = httpx.get(f"{on.url}/metrics", headers=headers, timeout=10)
        assert answer.status_code == 401 and answer.json()["error"] == "unauthorized", headers
        assert answer.headers["www-authenticate"] == "Bearer"
    scrape(on)


def test_payments_requests_ingestion_and_the_feed_are_counted(central_factory, sim):  # noqa: F811
    server = central_factory(
        wechat_base_url=sim.url,
        wechat_appid=APPID,
        wechat_mch_id=MCH_ID,
        wechat_api_key=WECHAT_KEY,
        metrics_token=TOKEN,
        **FAST_PAYMENTS,
    )
    store = server.add_store("S1")
    before = scrape(server)
    assert value(before, "pos_central_payments_total", provider="wechat", outcome="paid") == 0
    assert value(before, "pos_central_database_readable") == 1

    with server.client(store) as client:
        paid = final_answer(client, pay(client, code("00")).json())
        assert paid["state"] == "SUCCESS"
        refused = final_answer(client, pay(client, code("32")).json())  # NOTENOUGH
        assert refused["state"] == "FAILED"
        voided = client.post(
            f"/v1/payments/{new_otn()}/void", json={"provider": "wechat", "amount_fen": 100, "station_id": "T01"}
        )
        assert voided.json()["code"] == "VOIDED"
        waiting = pay(client, code("12")).json()  # the customer never confirms; the till gives up
        assert client.post(f"/v1/payments/{waiting['out_trade_no']}/reverse").json()["state"] == "REVERSING"
        assert follow(client, waiting["out_trade_no"])["state"] == "REVERSED"

        sale = journal_row(2590)
        assert (
            client.post("/v1/transactions:batch", json={"transactions": [sale, {"id": "not-a-row"}]}).status_code == 200
        )
        assert client.post("/v1/transactions:batch", json={"transactions": [sale]}).status_code == 200

        server.add_member()
        first = client.get("/v1/members/changes").json()
        server.add_member()  # a change the store has not read yet
        assert client.get("/v1/nothing-here").status_code == 404

    seen = scrape(server)
    for outcome in ("paid", "failed", "voided", "reversed"):
        assert value(seen, "pos_central_payments_total", provider="wechat", outcome=outcome) == 1, outcome
    assert value(seen, "pos_central_payment_seconds_count", provider="wechat", outcome="paid") == 1
    assert value(seen, "pos_central_payment_seconds_count", provider="wechat", outcome="reversed") == 1
    assert 0 < value(seen, "pos_central_payment_seconds_sum", provider="wechat", outcome="paid") < 5
    assert value(seen, "pos_central_transactions_ingested_total", result="accepted") == 1
    assert value(seen, "pos_central_transactions_ingested_total", result="duplicate") == 1
    assert value(seen, "pos_central_transactions_ingested_total", result="rejected") == 1

    # Requests by the route's template, never by the path as sent.
    assert value(seen, "pos_central_requests_total", method="POST", route="/v1/payments", status="201") == 3
    assert value(seen, "pos_central_requests_total", method="POST", route="/v1/transactions:batch", status="200") == 2
    assert value(seen, "pos_central_requests_total", method="GET", route="unmatched", status="404") == 1
    assert value(seen, "pos_central_request_seconds_count", method="GET", route="/v1/payments/{out_trade_no}") >= 1
    assert not [key for key in seen if any(paid["out_trade_no"] in str(label) for label in key[1])]

    # The feed: two changes made; the store's last page ended at the first.
    assert value(seen, "pos_central_feed_head_version") == 2
    assert first["next_cursor"] == "1"
    assert value(seen, "pos_central_feed_store_behind_versions", store="S1") == 1
    assert value(seen, "pos_central_feed_store_last_pull_timestamp_seconds", store="S1") > 0
    assert value(seen, "process_resident_memory_bytes") > 0


@pytest.mark.parametrize("central_database_url", ["sqlite"], indirect=True)
def test_two_services_in_one_process_keep_their_own_figures(central_factory):
    one, two = central_factory(metrics_token=TOKEN), central_factory(metrics_token=TOKEN)
    store = one.add_store("S1")
    with one.client(store) as client:
        assert client.post("/v1/transactions:batch", json={"transactions": [journal_row(100)]}).status_code == 200
    assert value(scrape(one), "pos_central_transactions_ingested_total", result="accepted") == 1
    assert value(scrape(two), "pos_central_transactions_ingested_total", result="accepted") == 0


def test_the_periodic_jobs_show_on_any_replicas_metrics_whichever_process_runs_them(central_factory):
    # A web replica with no jobs of its own; another process (a worker, on its own clock) runs a job twice.
    replica = central_factory(metrics_token=TOKEN, run_jobs=False)
    clock = FakeClock()
    worker = Leases(replica.engine, "host-b:worker", clock=clock.now)
    assert "pos_central_job_runs" not in {name for name, _ in scrape(replica)}
    assert worker.claim_round("payment-orphans", 600)
    clock.seconds = 600
    assert worker.claim_round("payment-orphans", 600)

    seen = scrape(replica)
    assert value(seen, "pos_central_job_runs", job="payment-orphans") == 2
    assert value(seen, "pos_central_job_last_run_timestamp_seconds", job="payment-orphans") == clock.now().timestamp()
