"""Manager approval (docs/checkout.md, "Manager approval"): refunds, voids, price overrides and reprints after the
first need a supervisor's PIN or card; wrong tries lock out. The rules on a fake clock, then each flow over real
HTTP with the real central and the simulators (tests/checkout_stack.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.approval import Action, Approvals, Given, Lockout, after_try, hash_secret, secret_matches
from agent.errors import ApprovalLocked, ApprovalRefused, ApprovalRequired
from agent.settings import ApprovalSettings
from tests.agent.test_checkout import BASKET, journal_count, start_sale
from tests.support.clock import FakeClock
from tests.support.credentials import SUPERVISOR_CARD, SUPERVISOR_ID, SUPERVISOR_PIN

T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
PIN = {"approval": {"pin": SUPERVISOR_PIN}}
CARD = {"approval": {"card": SUPERVISOR_CARD}}
WRONG = {"approval": {"pin": "1111"}}


def approvals(clock: FakeClock, actions=("refund",)) -> Approvals:
    supervisor = {"id": SUPERVISOR_ID, "name": "王店长", "pin_hash": hash_secret(SUPERVISOR_PIN)}
    return Approvals(ApprovalSettings(actions=actions, supervisors=[supervisor]), clock)


# --- the rules --------------------------------------------------------------------------------------------------


def test_a_pin_is_kept_salted_and_only_the_right_one_matches():
    first, second = hash_secret("2468"), hash_secret("2468")
    assert first != second and "2468" not in first  # salted: equal PINs do not show in the settings
    assert secret_matches("2468", first) and secret_matches("2468", second)
    assert not secret_matches("2469", first) and not secret_matches("", first)


def test_the_fifth_wrong_try_locks_and_a_right_try_clears_the_count():
    lock_for = timedelta(minutes=5)
    lockout = Lockout()
    for _ in range(4):
        lockout = after_try(lockout, False, T0, 5, lock_for)
    assert lockout == Lockout(wrong=4) and not lockout.locked(T0)
    assert after_try(lockout, True, T0, 5, lock_for) == Lockout()
    locked = after_try(lockout, False, T0, 5, lock_for)
    assert locked.locked(T0 + timedelta(minutes=4, seconds=59)) and not locked.locked(T0 + lock_for)


def test_while_locked_even_the_right_pin_is_refused_until_the_time_is_up():
    clock = FakeClock(T0)
    approver = approvals(clock)
    for left in (4, 3, 2, 1):
        with pytest.raises(ApprovalRefused) as refused:
            approver.supervisor(Given(pin="1111"))
        assert refused.value.extra["tries_left"] == left and f"还可再试 {left} 次" in refused.value.message_zh
    with pytest.raises(ApprovalLocked) as locked:
        approver.supervisor(Given(pin="1111"))
    assert locked.value.extra["retry_after_s"] == 300 and "5 分钟后再试" in locked.value.message_zh
    clock.advance(299)
    with pytest.raises(ApprovalLocked):  # the right PIN too: a guess cannot be told apart while locked
        approver.supervisor(Given(pin=SUPERVISOR_PIN))
    clock.advance(1)
    assert approver.supervisor(Given(pin=SUPERVISOR_PIN)).id == SUPERVISOR_ID


def test_an_action_not_named_needs_nobody_and_one_named_needs_someone():
    approver = approvals(FakeClock(T0), actions=("refund",))
    assert approver.approved_by(Action.REPRINT, None) is None
    with pytest.raises(ApprovalRequired) as required:
        approver.approved_by(Action.REFUND, None)
    assert required.value.extra["action"] == "refund" and required.value.message_zh == "退款需要主管授权"


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ({"actions": ["refund"]}, "needs at least one [[approval.supervisors]]"),
        ({"supervisors": [{"id": "S1", "name": "x"}]}, "needs pin_hash or card_hash"),
        ({"supervisors": [{"id": "S1", "name": "x", "pin_hash": "2468"}]}, "String should match pattern"),
        ({"actions": ["refunds"]}, "Input should be 'refund', 'void', 'price_override' or 'reprint'"),
    ],
)
def test_settings_that_could_not_approve_are_refused_at_start(section, says):
    with pytest.raises(ValueError) as refused:
        ApprovalSettings(**section)
    assert says in str(refused.value)


# --- over HTTP --------------------------------------------------------------------------------------------------


def cash_sale(stack) -> dict:
    session = start_sale(stack)
    done = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash"}).json()
    assert done["state"] == "closed", done
    return done


def test_a_refund_needs_a_supervisor_and_records_who_approved(stack_factory):
    stack = stack_factory(approval=("refund",))
    sale = cash_sale(stack)
    ask = {"transaction": sale["receipt_no"], "lines": [{"line": 0, "qty": 1}], "reason": "顾客退货"}

    required = stack.api.post("/v1/refunds", json=ask)
    assert required.status_code == 403 and required.json() == {
        "error": "approval_required",
        "message": "refund needs a supervisor's approval: send approval.pin or approval.card",
        "message_zh": "退款需要主管授权",
        "action": "refund",
    }
    wrong = stack.api.post("/v1/refunds", json=ask | WRONG)
    assert wrong.status_code == 403 and wrong.json()["error"] == "approval_refused" and wrong.json()["tries_left"] == 4
    assert journal_count(stack) == 1  # refused before anything was done

    made = stack.api.post("/v1/refunds", json=ask | PIN)
    assert made.status_code == 201, made.text
    assert made.json()["body"]["approved_by"] == SUPERVISOR_ID and made.json()["total_fen"] == 200
    receipt = stack.job_printed(made.json()["receipt_job_id"])
    assert "主管授权" in receipt and SUPERVISOR_ID in receipt and "顾客退货" in receipt
    by_card = stack.api.post("/v1/refunds", json=ask | CARD)
    assert by_card.status_code == 201 and by_card.json()["body"]["approved_by"] == SUPERVISOR_ID
    assert journal_count(stack) == 3


def test_five_wrong_pins_lock_approval_and_nothing_is_journaled(stack_factory):
    stack = stack_factory(approval=("refund",))
    sale = cash_sale(stack)
    ask = {"transaction": sale["receipt_no"], "reason": "顾客退货"}
    answers = [stack.api.post("/v1/refunds", json=ask | WRONG) for _ in range(5)]
    assert [a.json().get("tries_left") for a in answers[:4]] == [4, 3, 2, 1]
    assert answers[4].status_code == 423 and answers[4].json()["error"] == "approval_locked"
    right = stack.api.post("/v1/refunds", json=ask | PIN)
    assert right.status_code == 423 and "分钟后再试" in right.json()["message_zh"]
    assert right.json()["retry_after_s"] > 0
    assert journal_count(stack) == 1


def test_cancelling_a_sale_after_money_was_taken_is_a_void_that_needs_a_supervisor(stack_factory):
    stack = stack_factory(approval=("void",))
    unpaid = start_sale(stack)
    assert stack.api.post(f"/v1/sessions/{unpaid['id']}/cancel").json()["state"] == "cancelled"  # nothing taken

    session = start_sale(stack)
    part = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "amount_fen": 1000})
    assert part.json()["paid_fen"] == 1000
    required = stack.api.post(f"/v1/sessions/{session['id']}/cancel")
    assert required.status_code == 403 and required.json()["action"] == "void"
    assert stack.session(session["id"])["state"] == "tender"  # still open, money still taken
    cancelled = stack.api.post(f"/v1/sessions/{session['id']}/cancel", json=CARD)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    [void] = [t for t in stack.api.get("/v1/transactions").json() if t["kind"] == "void"]
    assert void["body"]["approved_by"] == SUPERVISOR_ID and void["total_fen"] == 1000


def test_a_price_override_needs_a_supervisor_once_and_the_sale_records_it(stack_factory):
    stack = stack_factory(approval=("price_override",))
    session = stack.open_session()
    sid = session["id"]
    overridden = {"lines": [BASKET["lines"][1] | {"unit_price_fen": 990, "list_price_fen": 1290}]}
    required = stack.api.put(f"/v1/sessions/{sid}/basket", json=overridden)
    assert required.status_code == 403 and required.json()["message_zh"] == "改价需要主管授权"
    assert stack.session(sid)["lines"] == []

    approved = stack.api.put(f"/v1/sessions/{sid}/basket", json=overridden | PIN).json()
    assert approved["price_approved_by"] == SUPERVISOR_ID and approved["pricing"]["amount_due_fen"] == 990
    # The POS sends the basket whole at each change: the override approved is not asked again, a new one is.
    grown = {"lines": overridden["lines"] + [BASKET["lines"][0]]}
    assert stack.api.put(f"/v1/sessions/{sid}/basket", json=grown).status_code == 200
    cheaper = {"lines": [BASKET["lines"][1] | {"unit_price_fen": 500, "list_price_fen": 1290}]}
    assert stack.api.put(f"/v1/sessions/{sid}/basket", json=cheaper).status_code == 403
    at_list_price = {"lines": [BASKET["lines"][1] | {"list_price_fen": 1290}]}  # the list price itself: no override
    assert stack.api.put(f"/v1/sessions/{sid}/basket", json=grown).status_code == 200

    done = stack.api.post(f"/v1/sessions/{sid}/tenders", json={"kind": "cash"}).json()
    body = stack.api.get(f"/v1/transactions/{done['transaction_id']}").json()["body"]
    assert body["approved_by"] == SUPERVISOR_ID
    assert body["lines"][0]["list_price_fen"] == 1290 and "list_price_fen" not in body["lines"][1]

    other = stack.open_session()["id"]
    assert stack.api.put(f"/v1/sessions/{other}/basket", json=at_list_price).json()["price_approved_by"] is None


def test_the_first_reprint_is_free_and_the_next_need_a_supervisor(stack_factory):
    stack = stack_factory(approval=("reprint",))
    sale = cash_sale(stack)
    reprint = f"/v1/transactions/{sale['receipt_no']}/reprint"
    first = stack.api.post(reprint)
    assert first.status_code == 200 and first.json()["approved_by"] is None
    assert "重打印" in stack.job_printed(first.json()["receipt_job_id"])
    second = stack.api.post(reprint)
    assert second.status_code == 403 and second.json()["message_zh"] == "再次重打小票需要主管授权"
    approved = stack.api.post(reprint, json=PIN)
    assert approved.status_code == 200 and approved.json()["approved_by"] == SUPERVISOR_ID
    assert "重打印" in stack.job_printed(approved.json()["receipt_job_id"])


def test_without_approval_settings_every_action_goes_as_before(stack):
    sale = cash_sale(stack)
    refund = stack.api.post("/v1/refunds", json={"transaction": sale["receipt_no"], "reason": "顾客退货"})
    assert refund.status_code == 201 and "approved_by" not in refund.json()["body"]
    for _ in range(2):
        assert stack.api.post(f"/v1/transactions/{sale['receipt_no']}/reprint").status_code == 200
