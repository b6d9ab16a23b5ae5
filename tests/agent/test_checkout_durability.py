"""A till that loses its answer or its process mid-payment neither charges twice nor loses the sale."""

from __future__ import annotations

from tests.agent.test_checkout import BASKET, journal_count, start_sale
from tests.checkout_stack import wechat_code


def central_payment(stack, out_trade_no: str) -> dict:
    """The payment at central once it is final (central follows it whether the till lives or not)."""
    with stack.central.client(stack.store, timeout=20) as client:
        for _ in range(6):
            payment = client.get(f"/v1/payments/{out_trade_no}", params={"wait": 5}).json()
            if payment["final"]:
                break
    return payment


def test_lost_answer_is_resolved_by_asking_central_not_by_charging_again(stack):
    session = start_sale(stack)
    stack.central.faults.drop_response("/v1/payments", method="POST")  # charged at central, the answer never arrives
    first = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": wechat_code("00")}).json()
    assert first["state"] in ("tender", "closed")
    done = stack.wait_session(session["id"], lambda s: s["state"] == "closed")
    assert done["tenders"][0]["out_trade_no"] == done["payment"]["out_trade_no"]
    assert stack.wechat.count("micropay") == 1 and journal_count(stack) == 1


def test_kill_9_while_the_customer_confirms_restart_finishes_the_sale_once(stack_factory):
    stack = stack_factory(separate_process=True)
    session = start_sale(stack)
    waiting = stack.api.post(
        f"/v1/sessions/{session['id']}/tenders", json={"kind": "code", "auth_code": wechat_code("10")}
    ).json()
    # The charge is at central; its first answer (USERPAYING) may still be on its way when central's answer window
    # ends (PENDING): either way the customer is confirming on the phone when the till dies.
    assert waiting["payment"]["state"] in ("USERPAYING", "PENDING")
    out_trade_no = waiting["payment"]["out_trade_no"]
    stack.kill()  # the till dies between the charge and the journal

    assert central_payment(stack, out_trade_no)["state"] == "SUCCESS"  # the customer confirmed on the phone meanwhile
    stack.start()
    restored = stack.wait_session(session["id"], lambda s: s["state"] == "closed")
    assert restored["transaction_id"] == session["id"] and restored["tenders"][0]["out_trade_no"] == out_trade_no
    assert stack.wechat.count("micropay") == 1  # charged once
    assert journal_count(stack) == 1  # journaled once
    assert "41.90" in stack.printed(session["id"])
    assert stack.api.get("/v1/sessions/current").status_code == 404  # the next customer can start


def test_kill_9_with_a_basket_open_restores_the_sale_unpaid(stack_factory):
    stack = stack_factory(separate_process=True)
    session = start_sale(stack, BASKET)
    stack.kill()
    stack.start()
    current = stack.api.get("/v1/sessions/current").json()
    assert current["id"] == session["id"] and current["state"] == "basket" and current["paid_fen"] == 0
    assert journal_count(stack) == 0
    done = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "tendered_fen": 5000}).json()
    assert done["state"] == "closed" and journal_count(stack) == 1


def test_a_refund_whose_answer_was_lost_is_finished_by_asking_again_never_paid_twice(stack):
    session = start_sale(stack)
    sale = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": wechat_code("00")}).json()
    out_trade_no = sale["tenders"][0]["out_trade_no"]
    stack.central.faults.drop_response(f"/v1/payments/{out_trade_no}/refunds", method="POST")
    lost = stack.api.post("/v1/refunds", json={"transaction": sale["receipt_no"], "reason": "顾客退货"})
    assert lost.status_code == 409 and lost.json()["error"] == "refund_in_progress"
    assert "ask for the same refund again" in lost.json()["message"]
    assert journal_count(stack) == 1  # not journaled while its outcome is unknown
    again = stack.api.post("/v1/refunds", json={"transaction": sale["receipt_no"], "reason": "顾客退货"})
    assert again.status_code == 201 and again.json()["total_fen"] == 4190
    assert stack.wechat.count("refund") == 1  # the provider refunded once
    assert journal_count(stack) == 2


def test_a_refund_left_processing_is_shown_on_its_sale_and_finished_by_the_agent_with_an_event(stack):
    session = start_sale(stack)
    sale = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": wechat_code("00")}).json()
    out_trade_no = sale["tenders"][0]["out_trade_no"]
    stack.central.faults.drop_response(f"/v1/payments/{out_trade_no}/refunds", method="POST")
    lost = stack.api.post("/v1/refunds", json={"transaction": sale["receipt_no"], "reason": "顾客退货"})
    assert lost.status_code == 409 and lost.json()["error"] == "refund_in_progress"

    shown = stack.api.get(f"/v1/transactions/{sale['receipt_no']}").json()
    under_way = shown["refund_in_progress"]
    assert under_way["money_fen"] == 4190 and under_way["reason"] == "顾客退货" and shown["refunds"] == []
    assert [part["kind"] for part in under_way["parts"]] == ["wechat"]

    # Nobody asks again: the agent finishes it by itself, under the same refund number, and says so.
    refunded = stack.wait_event(session["id"], lambda event: event["type"] == "refunded")
    assert refunded["refund_id"] == under_way["id"] and refunded["total_fen"] == 4190
    done = stack.api.get(f"/v1/transactions/{sale['receipt_no']}").json()
    assert done["refund_in_progress"] is None and [r["id"] for r in done["refunds"]] == [under_way["id"]]
    assert stack.wechat.count("refund") == 1
