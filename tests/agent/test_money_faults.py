"""Money under the faults a store's network really has, each injected at exactly one step: a charge that reaches
central after the till asked about it, lost refund answers, a till that dies right after "paid", one lost answer
to a background push. The promise: no charge without a sale, no refund without a record, a receipt for every
paid sale, and code payment not refused while central is fine."""

from __future__ import annotations

import pytest

from agent.db import open_database
from agent.journal import Journal
from tests.agent.test_checkout import BASKET, journal_count, start_sale
from tests.checkout_stack import wechat_code
from tests.support.poll import eventually

pytestmark = pytest.mark.timeout(90)


def pay_code(stack, session: dict, scenario: str = "00") -> dict:
    answer = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": wechat_code(scenario)})
    assert answer.status_code == 200, answer.text
    return answer.json()


def central_payment(stack, out_trade_no: str) -> dict:
    with stack.central.client(stack.store) as client:
        return client.get(f"/v1/payments/{out_trade_no}").json()


def journaled_code_tenders(stack) -> list[str]:
    sales = [t for t in stack.api.get("/v1/transactions", params={"limit": 200}).json() if t["kind"] == "sale"]
    return [
        tender["out_trade_no"] for sale in sales for tender in sale["body"]["tenders"] if tender.get("out_trade_no")
    ]


# --- a charge whose request reaches central after the till asked about it -------------------------------------


def test_a_charge_that_reaches_central_late_is_never_taken_without_a_sale(stack):
    session = start_sale(stack)
    held = stack.central.faults.hold("/v1/payments", method="POST")  # its answer is lost; central sees it later
    sent = pay_code(stack, session)
    assert sent["payment"]["state"] == "UNKNOWN"  # no answer: the till must find out, not guess

    # Central has not seen the payment when the till asks. That is no answer: the till sends the same request again
    # (one out_trade_no is one payment at central), and the sale completes on central's word.
    done = stack.wait_session(
        session["id"], lambda s: s["state"] == "closed" or (s["payment"] or {}).get("state") == "FAILED"
    )
    held.release()
    assert held.wait_handled(1) == [200]  # the late copy answers the payment already made, charging nothing more
    assert done["state"] == "closed", done["payment"]["message"]
    out_trade_no = done["payment"]["out_trade_no"]
    assert stack.wechat.count("micropay") == 1 and journaled_code_tenders(stack) == [out_trade_no]


def test_a_payment_given_up_before_its_request_arrives_is_voided_and_never_charged(stack):
    session = start_sale(stack)
    held = stack.central.faults.hold("/v1/payments", method="POST", times=20)  # every charge request is late
    sent = pay_code(stack, session)
    out_trade_no = sent["payment"]["out_trade_no"]
    cancelled = stack.api.post(f"/v1/sessions/{session['id']}/payment/cancel").json()  # the cashier gives up

    assert cancelled["payment"]["state"] == "FAILED" and cancelled["state"] == "basket"
    assert central_payment(stack, out_trade_no)["code"] == "VOIDED"  # central holds the give-up, unseen payment or not
    held.release()
    statuses = held.wait_handled(1)
    assert set(statuses) == {409}  # the late request (and any copy) is refused: payment_voided
    assert stack.wechat.count("micropay") == 0 and journal_count(stack) == 0
    done = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "tendered_fen": 5000}).json()
    assert done["state"] == "closed" and journaled_code_tenders(stack) == []


def test_after_a_restart_a_payment_central_never_saw_is_voided_not_assumed(stack_factory):
    stack = stack_factory(separate_process=True)
    session = start_sale(stack)
    held = stack.central.faults.hold("/v1/payments", method="POST", times=20)
    out_trade_no = pay_code(stack, session)["payment"]["out_trade_no"]
    stack.kill()  # the auth code dies with the process: the restarted till cannot send the request again
    stack.start()

    restored = stack.wait_session(session["id"], lambda s: (s["payment"] or {}).get("state") in ("FAILED", "REVERSED"))
    assert restored["state"] == "basket" and central_payment(stack, out_trade_no)["code"] == "VOIDED"
    held.release()
    assert set(held.wait_handled(1)) == {409}
    assert stack.wechat.count("micropay") == 0 and journal_count(stack) == 0


# --- refunds whose answers are lost --------------------------------------------------------------------------


def test_a_lost_refund_answer_then_another_refund_finishes_the_first_and_makes_the_second(stack):
    session = start_sale(stack)
    sale = pay_code(stack, session)
    out_trade_no = sale["tenders"][0]["out_trade_no"]
    stack.central.faults.drop_response(f"/v1/payments/{out_trade_no}/refunds", method="POST")
    lost = stack.api.post(
        "/v1/refunds", json={"transaction": sale["receipt_no"], "lines": [{"line": 0, "qty": 1}], "reason": "顾客退货"}
    )
    assert lost.status_code == 409 and lost.json()["error"] == "refund_in_progress"

    # The cashier, not knowing, refunds another line: the first refund is finished (recorded, points reversed), then
    # the second is made under a number of its own — where central once answered 409 for a number already used.
    second = stack.api.post(
        "/v1/refunds", json={"transaction": sale["receipt_no"], "lines": [{"line": 1, "qty": 1}], "reason": "顾客退货"}
    )
    assert second.status_code == 201, second.text
    refunds = stack.api.get(f"/v1/transactions/{sale['transaction_id']}").json()["refunds"]
    assert [r["total_fen"] for r in refunds] == [200, 1290]
    assert stack.wechat.count("refund") == 2
    refund_numbers = [t["out_refund_no"] for r in refunds for t in r["body"]["tenders"]]
    assert len(set(refund_numbers)) == 2


def test_a_refund_whose_answer_a_crash_cut_off_is_finished_at_the_next_start(stack_factory):
    stack = stack_factory(separate_process=True)
    session = start_sale(stack)
    sale = pay_code(stack, session)
    out_trade_no = sale["tenders"][0]["out_trade_no"]
    stack.central.faults.drop_response(f"/v1/payments/{out_trade_no}/refunds", method="POST")
    assert (
        stack.api.post("/v1/refunds", json={"transaction": sale["receipt_no"], "reason": "顾客退货"}).status_code == 409
    )
    stack.kill()
    stack.start()  # nobody asks again: the till finishes the refund by itself

    eventually(
        lambda: stack.api.get(f"/v1/transactions/{sale['transaction_id']}").json()["refunds"],
        within=15,
        what="the refund",
    )
    refunds = stack.api.get(f"/v1/transactions/{sale['transaction_id']}").json()["refunds"]
    assert [r["total_fen"] for r in refunds] == [4190]
    assert stack.wechat.count("refund") == 1
    job = f"{refunds[0]['id']}-refund"
    assert stack.job_printed(job)


def test_a_refund_that_never_left_the_store_is_not_recorded(stack):
    session = start_sale(stack)
    sale = pay_code(stack, session)
    stack.api.post("/v1/sync")  # online, recently
    stack.central.stop()
    answer = stack.api.post("/v1/refunds", json={"transaction": sale["receipt_no"], "reason": "顾客退货"})
    assert answer.status_code == 503 and answer.json()["error"] == "offline"
    stack.central.start()
    assert stack.api.get(f"/v1/transactions/{sale['transaction_id']}").json()["refunds"] == []
    assert (
        stack.api.post("/v1/refunds", json={"transaction": sale["receipt_no"], "reason": "顾客退货"}).status_code == 201
    )
    assert stack.wechat.count("refund") == 1


# --- a receipt for every paid sale ---------------------------------------------------------------------------


def test_a_till_that_dies_right_after_journaling_still_prints_the_receipt(stack, monkeypatch):
    append = Journal.append

    class Died(Exception):
        """Nothing after the journal commit runs, as if the process were killed there."""

    def append_then_die(self, entry, also=None):
        record = append(self, entry, also)
        if entry.kind == "sale":
            raise Died("the till died right after the journal commit")
        return record

    monkeypatch.setattr(Journal, "append", append_then_die)
    session = start_sale(stack)
    answer = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "tendered_fen": 5000})
    assert answer.status_code == 500 and answer.json()["error"] == "internal"  # the API's own shape, even for a bug
    monkeypatch.setattr(Journal, "append", append)
    stack.stop()

    engine = open_database(stack.database)
    with engine.connect() as connection:
        jobs = (
            connection.exec_driver_sql("SELECT status FROM print_job WHERE id = ?", (f"{session['id']}-receipt",))
            .scalars()
            .all()
        )
        journaled = connection.exec_driver_sql(
            "SELECT count(*) FROM journal WHERE id = ?", (session["id"],)
        ).scalar_one()
    engine.dispose()
    assert journaled == 1 and jobs == ["queued"]
    stack.start()
    assert "41.90" in stack.job_printed(f"{session['id']}-receipt")


# --- one lost answer is not an outage ------------------------------------------------------------------------


def test_one_lost_push_answer_does_not_turn_code_payment_off(stack):
    stack.central.faults.drop_response("/v1/transactions:batch", method="POST")
    start = start_sale(stack)
    stack.api.post(f"/v1/sessions/{start['id']}/tenders", json={"kind": "cash", "tendered_fen": 5000})
    eventually(
        lambda: stack.api.get("/v1/sync").json()["push"]["failures"] == 1, within=15, what="a failed push"
    )  # the sale's push lost its answer

    session = start_sale(stack)
    assert session["online"] is True
    assert pay_code(stack, session)["state"] == "closed"  # central is fine: the next customer pays by code


def test_an_outage_is_still_seen_at_once(stack):
    stack.api.post("/v1/sync")
    stack.central.stop()
    assert stack.api.post("/v1/sync").status_code == 503
    session = start_sale(stack, BASKET)
    assert session["online"] is False
    refused = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": wechat_code("00")})
    assert refused.status_code == 503 and refused.json()["error"] == "offline"


def test_a_lost_answer_to_who_pays_is_asked_again_so_the_member_keeps_the_benefits(stack):
    code = wechat_code("00", customer="0042")
    member = stack.add_member(points=100, tier="gold", payer=code)
    session = start_sale(stack)
    stack.central.faults.drop_response("/v1/payments/identify", method="POST")  # asked, answer lost
    done = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": code}).json()
    assert done["state"] == "closed" and done["member"]["id"] == member
    assert done["pricing"]["tier_discount_fen"] > 0 and stack.wechat.count("micropay") == 1
