"""A POS that sends a request again with its `Idempotency-Key` gets the first answer, and the till acts once: over
real HTTP with the real central service and the WeChat Pay simulator, across a kill -9 of the agent, and on the
store's SQLite file for the instant between an effect and its answer."""

from __future__ import annotations

import asyncio
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import sqlalchemy as sa

from agent.clock import utcnow
from agent.db import open_database
from agent.idempotency import CURRENT, IdempotencyStore, Taken, kept
from agent.open_sales import OpenSaleStore
from tests.agent.test_checkout import BASKET, journal_count, start_sale
from tests.checkout_stack import wechat_code

CASH = {"kind": "cash", "tendered_fen": 5000}


def run(coroutine):
    """The store's async methods from a plain test, in a thread of their own (a browser test may hold this one's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def test_a_cash_tender_sent_twice_with_its_key_is_taken_once_and_answered_alike(stack):
    session = start_sale(stack)
    headers = key()
    first = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=CASH, headers=headers)
    again = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=CASH, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and first.json()["state"] == "closed"
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert len(first.json()["tenders"]) == 1 and journal_count(stack) == 1


def test_two_copies_sent_at_once_act_once(stack):
    session = start_sale(stack)
    headers, part = key(), {"kind": "cash", "amount_fen": 100}

    def send(_: int) -> int:
        return stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=part, headers=headers).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(8)))
    assert 200 in statuses and set(statuses) <= {200, 409}  # 409 idempotency_in_progress for a copy too early
    assert stack.session(session["id"])["paid_fen"] == 100  # taken once


def test_without_a_key_the_same_tender_sent_again_is_a_new_request(stack):
    session = start_sale(stack)
    stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=CASH)
    again = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=CASH)
    assert again.status_code == 409 and again.json()["error"] == "not_now"  # refused only because the sale closed


def test_a_key_sent_with_another_request_is_refused_and_nothing_is_done(stack):
    session = start_sale(stack)
    headers = key()
    part = stack.api.post(
        f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "amount_fen": 100}, headers=headers
    )
    assert part.status_code == 200 and part.json()["paid_fen"] == 100
    other = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=CASH, headers=headers)
    assert other.status_code == 409 and other.json()["error"] == "idempotency_mismatch"
    assert other.json()["message_zh"] and stack.session(session["id"])["paid_fen"] == 100
    assert journal_count(stack) == 0


def test_a_refused_request_changed_nothing_so_its_key_decides_it_again(stack):
    session = stack.open_session()
    headers = key()
    early = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=CASH, headers=headers)
    assert early.status_code == 409 and early.json()["error"] == "not_now"  # no basket yet
    stack.api.put(f"/v1/sessions/{session['id']}/basket", json=BASKET)
    later = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=CASH, headers=headers)
    assert later.status_code == 200 and later.json()["state"] == "closed" and journal_count(stack) == 1


def test_a_code_payment_sent_twice_with_its_key_charges_the_customer_once(stack):
    session = start_sale(stack)
    headers, tender = key(), {"kind": "code", "auth_code": wechat_code("00")}
    first = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=tender, headers=headers)
    again = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=tender, headers=headers)
    assert first.json()["state"] == "closed" and again.json() == first.json()
    assert stack.wechat.count("micropay") == 1 and journal_count(stack) == 1


def test_a_refund_sent_twice_with_its_key_refunds_once(stack):
    session = start_sale(stack)
    sale = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": wechat_code("00")}).json()
    headers, ask = key(), {"transaction": sale["receipt_no"], "lines": [{"line": 0, "qty": 1}], "reason": "顾客退货"}
    first = stack.api.post("/v1/refunds", json=ask, headers=headers)
    again = stack.api.post("/v1/refunds", json=ask, headers=headers)
    assert first.status_code == again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert stack.wechat.count("refund") == 1 and journal_count(stack) == 2
    third = stack.api.post("/v1/refunds", json=ask, headers=key())  # a new key is a new refund: one bottle more
    assert third.status_code == 201 and third.json()["id"] != first.json()["id"] and journal_count(stack) == 3


def test_after_a_kill_9_the_key_still_answers_what_was_done(stack_factory):
    stack = stack_factory(separate_process=True)
    session = start_sale(stack)
    headers = key()
    first = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=CASH, headers=headers).json()
    stack.kill()  # the POS never got that answer: it sends the request again once the till is back
    stack.start()
    again = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=CASH, headers=headers)
    assert again.status_code == 200 and again.json() == first and again.headers["Idempotent-Replayed"] == "true"
    assert journal_count(stack) == 1


def test_an_effect_kept_before_its_answer_is_the_answer_after_a_stop(tmp_path):
    """The instant a kill -9 can hit: the sale was saved with the request's answer, the answer never left."""
    engine = open_database(tmp_path / "agent.db")
    store, sales = IdempotencyStore(engine), OpenSaleStore(engine)
    view = {"id": "S1", "state": "tender", "paid_fen": 100}

    async def act(request_key: str, fingerprint: str, effect: bool) -> None:
        assert await store.take(request_key, fingerprint) is None
        token = CURRENT.set(Taken(request_key))
        try:
            if effect:
                with engine.begin() as connection:
                    sales.save("S1", "T01", "tender", json.dumps(view), utcnow(), connection)
                    kept(connection, view)
        finally:
            CURRENT.reset(token)  # the process dies here: no answer recorded

    run(act("acted", "f1", effect=True))
    run(act("refused", "f2", effect=False))
    after_stop = IdempotencyStore(engine)  # a new process on the same file
    replay = run(after_stop.take("acted", "f1"))
    assert replay is not None and json.loads(replay.body) == view and replay.status_code == 200
    assert run(after_stop.take("refused", "f2")) is None  # nothing was done: it may act now

    later = utcnow() + timedelta(hours=25)
    assert after_stop.purge_expired(later) == 2
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM idempotent_request")).scalar_one() == 0
