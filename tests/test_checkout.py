"""Checkout through the local API over real HTTP: the real central service and the WeChat Pay simulator on
127.0.0.1, the agent with a simulated scanner and printer (tests/checkout_stack.py)."""

from __future__ import annotations

from tests.checkout_stack import wechat_code

BASKET = {"lines": [
    {"sku": "6901234567892", "name": "矿泉水 550ml", "qty": 2, "unit_price_fen": 200},
    {"sku": "6920000000001", "name": "牛奶 1L", "qty": 1, "unit_price_fen": 1290},
    {"sku": "6930000000002", "name": "香烟", "qty": 1, "unit_price_fen": 2500, "category": "tobacco"},
]}  # fmt: skip


def paid(session: dict) -> bool:
    return session["state"] in ("closed", "cancelled") or (session["payment"] or {}).get("state") in ("FAILED", "REVERSED")


def test_pay_as_member_one_scan_identifies_prices_charges_and_prints_points(stack):
    code = wechat_code("00", customer="0042")
    member = stack.add_member(points=1000, tier="gold", display_name="李*华", payer=code)
    session = stack.open_session()
    basket = stack.api.put(f"/v1/sessions/{session['id']}/basket", json=BASKET).json()
    assert basket["pricing"]["amount_due_fen"] == 400 + 1290 + 2500 and basket["member"] is None

    stack.scan(code)  # the customer's payment code, once
    done = stack.wait_session(session["id"], lambda s: s["state"] == "closed")

    # Gold: 5% off the eligible goods (not tobacco), 1.5 points per yuan paid for them.
    assert done["member"]["id"] == member and done["member"]["via"] == "payment_code" and not done["member"]["may_redeem"]
    assert done["pricing"]["tier_discount_fen"] == 85  # 5% of 16.90, half up
    assert done["pricing"]["amount_due_fen"] == 4190 - 85
    assert done["tenders"] == [
        {"kind": "wechat", "amount_fen": 4105, "tendered_fen": 4105, "change_fen": 0,
         "reference": done["tenders"][0]["reference"], "out_trade_no": done["payment"]["out_trade_no"]}
    ]  # fmt: skip
    assert done["pricing"]["points_earned"] == 16 * 150 // 100
    assert stack.wechat.count("micropay") == 1

    transaction = stack.api.get(f"/v1/transactions/{done['transaction_id']}").json()
    assert transaction["receipt_no"] == done["receipt_no"] and transaction["total_fen"] == 4105
    receipt = stack.printed(session["id"])
    assert "本次积分" in receipt and "+24" in receipt and "李*华" in receipt and "41.05" in receipt and done["receipt_no"] in receipt
