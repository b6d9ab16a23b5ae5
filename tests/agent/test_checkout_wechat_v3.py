"""A whole store with central on WeChat Pay API v3: the agent, the real central service and the simulator (v2 and v3
on one port) over real HTTP on 127.0.0.1 (tests/checkout_stack.py, `wechat_api="v3"`). Nothing at the till changes
with the API: it sends the same payment to central, and central charges through v3."""

from __future__ import annotations

import pytest

from tests.agent.test_checkout import BASKET, journal_count, start_sale
from tests.checkout_stack import wechat_code


@pytest.fixture
def stack(stack_factory):
    return stack_factory(wechat_api="v3")


def test_pay_as_member_with_one_scan_charges_through_v3(stack):
    code = wechat_code("00", customer="0043")
    member = stack.add_member(points=1000, tier="gold", display_name="王*明", payer=code)
    session = stack.open_session()
    stack.api.put(f"/v1/sessions/{session['id']}/basket", json=BASKET)

    stack.scan(code)  # the customer's payment code, once: identified (v2 authcodetoopenid), then charged (v3)
    done = stack.wait_session(session["id"], lambda s: s["state"] == "closed")

    assert done["member"]["id"] == member and done["member"]["via"] == "payment_code"
    assert done["pricing"]["tier_discount_fen"] == 85 and done["tenders"][0]["amount_fen"] == 4190 - 85
    otn = done["payment"]["out_trade_no"]
    assert stack.wechat.count("authcodetoopenid") == 1 and stack.wechat.count("codepay", otn) == 1
    assert stack.wechat.count("micropay") == 0
    assert stack.wechat.orders[otn].amount_fen == 4105 and stack.wechat.scenes[otn]["store_info"] == {"out_id": "S1"}
    assert stack.wechat.scenes[otn]["device_id"] == "S1-T01" and stack.wechat.scenes[otn]["device_ip"] == "127.0.0.1"
    assert "本次积分" in stack.printed(session["id"]) and journal_count(stack) == 1


def test_userpaying_through_v3_shows_waiting_then_paid(stack):
    session = start_sale(stack)
    answer = stack.api.post(
        f"/v1/sessions/{session['id']}/tenders", json={"kind": "code", "auth_code": wechat_code("10")}
    )
    assert answer.json()["payment"]["state"] == "USERPAYING"
    done = stack.wait_session(session["id"], lambda s: s["state"] == "closed")
    assert done["tenders"][0]["kind"] == "wechat" and done["remaining_fen"] == 0
    assert stack.wechat.count("codepay") == 1 and stack.wechat.count("orderquery") >= 1 and journal_count(stack) == 1
