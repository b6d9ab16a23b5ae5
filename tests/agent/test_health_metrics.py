"""/healthz, /readyz and /metrics of the agent, over real HTTP on a whole store on 127.0.0.1: the real central service
and the WeChat Pay simulator, the agent with simulated devices, or a network printer on a real TCP port and a serial
scanner on a pseudo-terminal (tests/checkout_stack.py, tests/printer_server.py). /metrics is read with
prometheus-client's own parser."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from agent.print_queue import PrinterState
from tests.agent.test_checkout import BASKET, start_sale
from tests.checkout_stack import Stack, wechat_code
from tests.support.poll import eventually

WATER = "6901234567892"  # in the stack's catalogue: ¥2.00


class Scrape:
    """One /metrics answer, parsed."""

    def __init__(self, text: str):
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in self.families.values()
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        assert key in self.samples, f"no sample {name}{labels}; have {sorted(k for k in self.samples if k[0] == name)}"
        return self.samples[key]


def scrape(stack: Stack) -> Scrape:
    answer = stack.api.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(answer.text)


def ready(stack: Stack) -> tuple[int, dict[str, dict[str, Any]]]:
    """/readyz as monitoring on the box asks for it: no token. (status, parts by name)."""
    answer = httpx.get(f"{stack.url}/readyz", timeout=15)
    body = answer.json()
    assert body["can_sell"] is (answer.status_code == 200)
    return answer.status_code, {part["name"]: part for part in body["parts"]}


@pytest.fixture
def custom_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """A store whose settings differ from the checkout stack's by the text replacements given."""
    stacks: list[Stack] = []

    def make(kind: str = "till", **replace: tuple[str, str]) -> Stack:
        where = tmp_path / f"custom{len(stacks)}"
        where.mkdir()
        stack = Stack(where, kind=kind)
        stacks.append(stack)
        text = stack.config.read_text(encoding="utf-8")
        for old, new in replace.values():
            assert old in text, old
            text = text.replace(old, new)
        stack.config.write_text(text, encoding="utf-8")
        return stack.start()

    yield make
    for stack in stacks:
        stack.close()


# --- /healthz and /metrics ------------------------------------------------------------------------------------


def test_healthz_answers_without_a_token(stack):
    answer = httpx.get(f"{stack.url}/healthz", timeout=5)
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}


def test_metrics_want_the_token_when_one_is_set(stack):
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": stack.token}):
        answer = httpx.get(f"{stack.url}/metrics", headers=headers, timeout=5)
        assert answer.status_code == 401 and answer.json()["error"] == "unauthorized", headers
    assert httpx.get(f"{stack.url}/metrics", params={"token": stack.token}, timeout=5).status_code == 401  # header only
    assert (
        httpx.get(f"{stack.url}/metrics", headers={"Authorization": f"Bearer {stack.token}"}, timeout=5).status_code
        == 200
    )


def test_sales_refunds_payments_scans_prints_and_sync_are_counted_per_agent(stack_factory):
    stack, other = stack_factory(), stack_factory()  # two agents in one process: each its own figures
    before = scrape(stack)
    assert before("pos_edge_sales_total", station_kind="till") == 0
    assert before("pos_edge_journal_rows") == 0 and before("pos_edge_database_readable") == 1

    # A product scanned on the station's scanner opens a sale; it is paid in cash.
    stack.scan(WATER)
    scanned = stack.wait_session_current()
    cash = stack.api.post(f"/v1/sessions/{scanned['id']}/tenders", json={"kind": "cash", "tendered_fen": 500}).json()
    assert cash["state"] == "closed"
    # A code payment refused by the provider (NOTENOUGH), then one that is paid.
    session = start_sale(stack)
    refused = stack.api.post(
        f"/v1/sessions/{session['id']}/tenders", json={"kind": "code", "auth_code": wechat_code("32")}
    )
    assert refused.status_code == 200 and refused.json()["payment"]["state"] == "FAILED"
    paid = stack.api.post(
        f"/v1/sessions/{session['id']}/tenders", json={"kind": "code", "auth_code": wechat_code("00")}
    ).json()
    assert paid["state"] == "closed" and paid["tenders"][0]["kind"] == "wechat"
    # The code-paid sale is refunded through central; its refund receipt is the last print job.
    refund = stack.api.post("/v1/refunds", json={"transaction": paid["transaction_id"], "reason": "顾客退货"})
    assert refund.status_code == 201, refund.text
    stack.job_printed(refund.json()["receipt_job_id"])
    stack.sync_now()

    seen = scrape(stack)
    assert seen("pos_edge_scans_total", device="scanner-1", kind="product") == 1
    assert seen("pos_edge_sales_total", station_kind="till") == 2
    assert seen("pos_edge_sale_tenders_total", station_kind="till", tender="cash") == 1
    assert seen("pos_edge_sale_tenders_total", station_kind="till", tender="wechat") == 1
    assert seen("pos_edge_sale_fen_total", station_kind="till", tender="cash") == 200
    assert seen("pos_edge_sale_fen_total", station_kind="till", tender="wechat") == 4190
    assert seen("pos_edge_refunds_total", station_kind="till") == 1
    assert seen("pos_edge_refund_fen_total", station_kind="till", tender="wechat") == 4190
    assert seen("pos_edge_code_payments_total", provider="wechat", outcome="paid") == 1
    assert seen("pos_edge_code_payments_total", provider="wechat", outcome="failed") == 1
    assert seen("pos_edge_code_payments_total", provider="wechat", outcome="offline") == 0
    assert seen("pos_edge_code_payment_seconds_count", provider="wechat", outcome="paid") == 1
    assert 0 < seen("pos_edge_code_payment_seconds_sum", provider="wechat", outcome="paid") < 10
    assert seen("pos_edge_code_payment_seconds_bucket", provider="wechat", outcome="paid", le="+Inf") == 1
    # Three rows (two sales, one refund) journaled, all confirmed by central: nothing waits.
    assert seen("pos_edge_journal_rows") == 3
    assert seen("pos_edge_sync_rows_total", result="accepted") == 3
    assert seen("pos_edge_outbox_rows", status="pending") == 0 and seen("pos_edge_sync_lag_seconds") == 0
    assert seen("pos_edge_sync_last_success_timestamp_seconds", job="push") > time.time() - 60
    assert seen("pos_edge_print_jobs_printed_total", printer="printer") == 3
    assert seen("pos_edge_print_failures_total", printer="printer", reason="paper_out") == 0
    assert seen("pos_edge_print_queue_jobs", printer="printer", status="queued") == 0
    assert seen("pos_edge_device_up", device="scanner-1", type="scanner") == 1
    assert seen("pos_edge_device_up", device="printer", type="printer") == 1
    assert seen("pos_edge_device_state", device="printer", type="printer", state="ready") == 1
    assert seen("pos_edge_database_bytes", file="db") > 0
    assert seen("pos_edge_build_info", version=__version__, store="S1", station="T01", station_kind="till") == 1
    assert seen("process_resident_memory_bytes") > 0

    untouched = scrape(other)
    assert untouched("pos_edge_sales_total", station_kind="till") == 0
    assert untouched("pos_edge_code_payments_total", provider="wechat", outcome="paid") == 0


def test_a_code_payment_with_central_away_is_counted_offline_and_the_backlog_shows_as_sync_lag(stack):
    session = start_sale(stack)
    part = stack.api.post(
        f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "amount_fen": 1000, "tendered_fen": 1000}
    )
    assert part.json()["remaining_fen"] == 3190  # a split tender: the payer is not asked for again before the charge
    stack.central.stop()  # the till saw central a moment ago, so it sends the charge, which cannot leave the store
    answer = stack.api.post(
        f"/v1/sessions/{session['id']}/tenders", json={"kind": "code", "auth_code": wechat_code("00")}
    )
    assert answer.status_code == 503 and answer.json()["error"] == "offline"
    done = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "tendered_fen": 5000}).json()
    assert done["state"] == "closed"

    seen = scrape(stack)
    assert seen("pos_edge_code_payments_total", provider="wechat", outcome="offline") == 1
    assert not [
        key for key in seen.samples if key[0].startswith("pos_edge_code_payment_seconds")
    ]  # never sent: no time
    assert seen("pos_edge_outbox_rows", status="pending") == 1
    assert seen("pos_edge_sync_lag_seconds") >= 0 and seen("pos_edge_journal_rows") == 1


def test_print_failures_are_counted_by_reason_and_the_printer_shows_down(custom_stack, printer_server):
    printer_server.paper = "out"
    stack = custom_stack(printer=('url = "sim://printer"', f'url = "{printer_server.url}"'))
    session = start_sale(stack)
    stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "tendered_fen": 5000})
    queue = stack.app.state.agent.devices.printer
    assert queue.wait_for_state({PrinterState.PAPER_OUT}, 10).state is PrinterState.PAPER_OUT

    seen = scrape(stack)
    assert seen("pos_edge_print_failures_total", printer="printer", reason="paper_out") >= 1
    assert seen("pos_edge_print_jobs_printed_total", printer="printer") == 0
    assert seen("pos_edge_print_queue_jobs", printer="printer", status="queued") == 1
    assert seen("pos_edge_device_up", device="printer", type="printer") == 0
    assert seen("pos_edge_device_state", device="printer", type="printer", state="paper_out") == 1


# --- /readyz ----------------------------------------------------------------------------------------------------


def test_a_till_stays_ready_with_its_printer_off_and_central_away_and_says_so(custom_stack, printer_server):
    stack = custom_stack(printer=('url = "sim://printer"', f'url = "{printer_server.url}"'))
    status, parts = ready(stack)
    assert status == 200
    assert {name: (part["type"], part["ok"], part["state"]) for name, part in parts.items()} == {
        "database": ("database", True, "ok"),
        "disk": ("disk", True, "ok"),
        "scanner-1": ("scanner", True, "connected"),
        "printer": ("printer", True, "ready"),
        "central": ("central", True, "reachable"),
    }

    # The printer is switched off; a sale's receipt cannot print and waits in the queue.
    printer_server.refuse()
    session = start_sale(stack)
    assert (
        stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "tendered_fen": 5000}).json()[
            "state"
        ]
        == "closed"
    )
    assert (
        stack.app.state.agent.devices.printer.wait_for_state({PrinterState.OFFLINE}, 10).state is PrinterState.OFFLINE
    )
    # Central goes away; the till finds out at its next request to it.
    stack.central.stop()
    assert stack.api.post("/v1/sync").status_code == 503

    status, parts = ready(stack)
    assert status == 200  # it sells: cash and card offline, the receipt kept in the queue
    assert (parts["printer"]["ok"], parts["printer"]["state"], parts["printer"]["needed_to_sell"]) == (
        False,
        "offline",
        False,
    )
    assert parts["printer"]["detail"].startswith("1 queued")
    assert (parts["central"]["ok"], parts["central"]["state"], parts["central"]["needed_to_sell"]) == (
        False,
        "unreachable",
        False,
    )
    assert parts["database"]["ok"] and parts["scanner-1"]["ok"]


def test_a_kiosk_without_a_working_scanner_cannot_sell(custom_stack):
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.close(slave)  # only the driver holds the port open, as with a real one
    try:
        stack = custom_stack("kiosk", scanner=('url = "sim://scanner-1"', f'url = "serial://{path}"'))
        status, parts = eventually(
            lambda: (found := ready(stack))[1]["scanner-1"]["ok"] and found, what="the scanner connected"
        )
        assert status == 200 and parts["scanning"]["ok"] and parts["central"]["needed_to_sell"]
    finally:
        os.close(master)  # the USB cable pulled

    status, parts = eventually(lambda: (found := ready(stack))[0] == 503 and found, what="/readyz said 503")
    assert parts["scanner-1"]["state"] in ("disconnected", "error") and not parts["scanner-1"]["ok"]
    assert (parts["scanning"]["ok"], parts["scanning"]["needed_to_sell"]) == (False, True)
    assert parts["database"]["ok"] and parts["central"]["ok"]


def test_a_kiosk_cannot_sell_without_central(stack_factory):
    stack = stack_factory(kind="kiosk")
    assert ready(stack)[0] == 200
    stack.central.stop()
    assert stack.api.post("/v1/sync").status_code == 503
    status, parts = ready(stack)
    assert status == 503 and (parts["central"]["ok"], parts["central"]["needed_to_sell"]) == (False, True)
    assert parts["scanning"]["ok"]


def test_a_till_whose_journal_cannot_be_read_is_not_ready_until_it_can(stack):
    assert ready(stack)[0] == 200
    with sqlite3.connect(stack.database) as db:  # the journal's table damaged (here: moved away), then put back
        db.execute("ALTER TABLE journal RENAME TO journal_moved")
    try:
        status, parts = ready(stack)
        assert status == 503 and (parts["database"]["ok"], parts["database"]["state"]) == (False, "error")
        assert "journal" in parts["database"]["detail"]
    finally:
        with sqlite3.connect(stack.database) as db:
            db.execute("ALTER TABLE journal_moved RENAME TO journal")
    assert ready(stack)[0] == 200


def test_readyz_shows_no_sale_and_no_member(stack):
    member = stack.add_member(points=10, display_name="李*华", phone="13812345678")
    stack.sync_now()  # the member is in the till's cache
    session = start_sale(stack, BASKET)
    text = httpx.get(f"{stack.url}/readyz", timeout=5).text
    for secret in (member, "李", "13812345678", "138****5678", session["id"], stack.token):
        assert secret not in text


def test_a_nearly_full_disk_stops_new_sales_and_readiness_before_sqlite_could_fail(stack):
    from agent.disk_space import MB

    disk = stack.app.state.agent.disk
    disk._free_bytes = lambda path: 100 * MB  # the one seam: what statvfs says is free
    refused = stack.api.post("/v1/sessions")
    assert refused.status_code == 503 and refused.json()["error"] == "disk_full"
    assert "nearly full" in refused.json()["message"] and "存储空间不足" in refused.json()["message_zh"]
    status, parts = ready(stack)
    assert status == 503 and parts["disk"]["state"] == "low" and "100 MB free" in parts["disk"]["detail"]
    assert scrape(stack)("pos_edge_disk_free_bytes") == 100 * MB
    disk._free_bytes = lambda path: 10_000 * MB  # space freed: the next sale starts
    assert stack.api.post("/v1/sessions").status_code == 201
    assert ready(stack)[0] == 200
