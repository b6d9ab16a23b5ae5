"""Self-checkout at a kiosk over real HTTP (tests/checkout_stack.py): the customer scans products, changes a
quantity, takes an item off, and goods weighed or priced in store are sent to a cashier."""

from __future__ import annotations

from agent.codes import gs1_check_digit_ok
from tests.agent.test_checkout import journal_count

WATER = "6901234567892"  # in the test kiosk's catalogue at ¥2.00


def in_store_code(body: str = "210012300450") -> str:
    """An EAN-13 a store prints on goods it weighs (prefix 2x), with its check digit."""
    return next(body + str(d) for d in range(10) if gs1_check_digit_ok(body + str(d)))


def test_the_customer_changes_a_quantity_and_takes_an_item_off(stack_factory):
    stack = stack_factory(kind="kiosk")
    stack.scan(WATER)
    sale = stack.wait_session_current()
    sid = sale["id"]
    three = stack.api.put(f"/v1/sessions/{sid}/lines/0", json={"qty": 3}).json()
    assert three["lines"][0]["qty"] == 3 and three["pricing"]["amount_due_fen"] == 600 and three["state"] == "basket"

    for bad, status in (({"qty": -1}, 422), ({"qty": 1.5}, 422), ({"qty": 1000}, 422)):
        assert stack.api.put(f"/v1/sessions/{sid}/lines/0", json=bad).status_code == status
    missing = stack.api.put(f"/v1/sessions/{sid}/lines/5", json={"qty": 1})
    assert missing.status_code == 404 and "no line 5" in missing.json()["message"]

    empty = stack.api.put(f"/v1/sessions/{sid}/lines/0", json={"qty": 0}).json()
    assert empty["lines"] == [] and empty["pricing"] is None and empty["state"] == "idle"
    pay = stack.api.post(f"/v1/sessions/{sid}/tenders", json={"kind": "cash"})
    assert pay.status_code == 409 and pay.json()["error"] == "not_now"  # nothing to pay for

    stack.scan(WATER)
    again = stack.wait_session(sid, lambda s: bool(s["lines"]))
    assert again["pricing"]["amount_due_fen"] == 200
    paid = stack.api.post(f"/v1/sessions/{sid}/tenders", json={"kind": "cash"}).json()
    assert paid["state"] == "closed"
    after = stack.api.put(f"/v1/sessions/{sid}/lines/0", json={"qty": 2})
    assert after.status_code == 409  # a paid sale's basket is what was paid
    assert journal_count(stack) == 1


def test_weighed_goods_are_sent_to_a_cashier(stack_factory):
    stack = stack_factory(kind="kiosk")
    stack.scan(WATER)
    sid = stack.wait_session_current()["id"]
    weighed = stack.api.post(f"/v1/sessions/{sid}/codes", json={"text": in_store_code()})
    assert weighed.status_code == 409 and weighed.json()["message_zh"] == "称重或店内标价商品请到人工收银台结算"
    assert len(stack.session(sid)["lines"]) == 1
