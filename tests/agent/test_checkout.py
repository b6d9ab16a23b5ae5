"""Checkout through the local API over real HTTP: the real central service and the WeChat Pay simulator on
127.0.0.1, the agent with a simulated scanner and printer (tests/checkout_stack.py)."""

from __future__ import annotations

from tests.checkout_stack import wechat_code

BASKET = {
    "lines": [
        {"sku": "6901234567892", "name": "矿泉水 550ml", "qty": 2, "unit_price_fen": 200},
        {"sku": "6920000000001", "name": "牛奶 1L", "qty": 1, "unit_price_fen": 1290},
        {"sku": "6930000000002", "name": "香烟", "qty": 1, "unit_price_fen": 2500, "category": "tobacco"},
    ]
}


def paid(session: dict) -> bool:
    return session["state"] in ("closed", "cancelled") or (session["payment"] or {}).get("state") in (
        "FAILED",
        "REVERSED",
    )


def test_pay_as_member_one_scan_identifies_prices_charges_and_prints_points(stack):
    code = wechat_code("00", customer="0042")
    member = stack.add_member(points=1000, tier="gold", display_name="李*华", payer=code)
    session = stack.open_session()
    basket = stack.api.put(f"/v1/sessions/{session['id']}/basket", json=BASKET).json()
    assert basket["pricing"]["amount_due_fen"] == 400 + 1290 + 2500 and basket["member"] is None

    stack.scan(code)  # the customer's payment code, once
    done = stack.wait_session(session["id"], lambda s: s["state"] == "closed")

    # Gold: 5% off the eligible goods (not tobacco), 1.5 points per yuan paid for them.
    assert (
        done["member"]["id"] == member and done["member"]["via"] == "payment_code" and not done["member"]["may_redeem"]
    )
    assert done["pricing"]["tier_discount_fen"] == 85  # 5% of 16.90, half up
    assert done["pricing"]["amount_due_fen"] == 4190 - 85
    assert done["tenders"] == [
        {
            "kind": "wechat",
            "amount_fen": 4105,
            "tendered_fen": 4105,
            "change_fen": 0,
            "reference": done["tenders"][0]["reference"],
            "out_trade_no": done["payment"]["out_trade_no"],
        }
    ]
    assert done["pricing"]["points_earned"] == 16 * 150 // 100
    assert stack.wechat.count("micropay") == 1

    transaction = stack.api.get(f"/v1/transactions/{done['transaction_id']}").json()
    assert transaction["receipt_no"] == done["receipt_no"] and transaction["total_fen"] == 4105
    receipt = stack.printed(session["id"])
    assert (
        "本次积分" in receipt
        and "+24" in receipt
        and "李*华" in receipt
        and "41.05" in receipt
        and done["receipt_no"] in receipt
    )


def start_sale(stack, basket=BASKET) -> dict:
    session = stack.open_session()
    answer = stack.api.put(f"/v1/sessions/{session['id']}/basket", json=basket)
    assert answer.status_code == 200, answer.text
    return answer.json()


def journal_count(stack) -> int:
    return len(stack.api.get("/v1/transactions", params={"limit": 200}).json())


def test_a_client_that_polls_sees_the_documented_states_and_paid_once_journaled(stack):
    session = stack.open_session()
    seen = [(session["state"], session["paid"])]
    basket = stack.api.put(f"/v1/sessions/{session['id']}/basket", json=BASKET).json()
    seen.append((basket["state"], basket["paid"]))
    card = {"kind": "card", "amount_fen": 1000, "reference": "T8842"}
    part = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=card).json()
    seen.append((part["state"], part["paid"]))
    stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "tendered_fen": 5000})
    polled = stack.session(session["id"])
    seen.append((polled["state"], polled["paid"]))
    assert seen == [("idle", False), ("basket", False), ("tender", False), ("closed", True)]
    assert polled["transaction_id"] == session["id"] and journal_count(stack) == 1


def test_cancelling_a_sale_with_a_card_tender_tells_the_cashier_to_void_it_on_the_terminal(stack):
    session = start_sale(stack)
    card = {"kind": "card", "amount_fen": 1000, "reference": "T8842"}
    stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=card)
    cancelled = stack.api.post(f"/v1/sessions/{session['id']}/cancel").json()
    assert cancelled["state"] == "cancelled" and not cancelled["paid"]
    assert "void on the card terminal: card ¥10.00 (ref T8842)" in cancelled["message"]


def test_userpaying_shows_waiting_then_paid(stack):
    session = start_sale(stack)
    answer = stack.api.post(
        f"/v1/sessions/{session['id']}/tenders", json={"kind": "code", "auth_code": wechat_code("10")}
    )
    waiting = answer.json()
    assert answer.status_code == 200 and waiting["state"] == "tender"
    assert waiting["payment"]["state"] == "USERPAYING" and waiting["payment"]["message_zh"] == "请在手机上确认支付"
    done = stack.wait_session(session["id"], lambda s: s["state"] == "closed")
    assert done["tenders"][0]["kind"] == "wechat" and done["remaining_fen"] == 0
    assert stack.wechat.count("micropay") == 1 and journal_count(stack) == 1


def test_customer_cancels_on_the_phone_nothing_is_journaled(stack):
    session = start_sale(stack)
    stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "code", "auth_code": wechat_code("11")})
    failed = stack.wait_session(session["id"], lambda s: (s["payment"] or {}).get("state") in ("FAILED", "REVERSED"))
    assert failed["state"] == "basket" and failed["tenders"] == [] and failed["payment"]["message_zh"]
    assert journal_count(stack) == 0
    # The customer pays another way: cash, with change.
    paid = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "tendered_fen": 5000}).json()
    assert paid["state"] == "closed" and paid["change_fen"] == 5000 - 4190
    assert journal_count(stack) == 1


def test_cashier_cancels_a_payment_the_customer_never_confirms_and_it_is_reversed(stack):
    session = start_sale(stack)
    stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "code", "auth_code": wechat_code("12")})
    cancelled = stack.api.post(f"/v1/sessions/{session['id']}/payment/cancel").json()
    assert cancelled["payment"]["cancel_requested"] and cancelled["tenders"] == []
    reversed_ = stack.wait_session(session["id"], lambda s: (s["payment"] or {}).get("state") == "REVERSED")
    assert reversed_["state"] == "basket" and stack.wechat.count("reverse") >= 1
    # A second tender in the same sale is fine, and the sale then closes.
    done = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "card", "reference": "T8812"}).json()
    assert done["state"] == "closed" and done["tenders"] == [
        {
            "kind": "card",
            "amount_fen": 4190,
            "tendered_fen": 4190,
            "change_fen": 0,
            "reference": "T8812",
            "out_trade_no": None,
        }
    ]


def test_split_tender_cash_then_wechat(stack):
    session = start_sale(stack)
    part = stack.api.post(
        f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "amount_fen": 1000, "tendered_fen": 1000}
    ).json()
    assert part["state"] == "tender" and part["remaining_fen"] == 3190
    done = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": wechat_code("00")}).json()
    assert done["state"] == "closed" and [t["amount_fen"] for t in done["tenders"]] == [1000, 3190]
    record = stack.api.get(f"/v1/transactions/{done['transaction_id']}").json()
    assert sum(t["amount_fen"] for t in record["body"]["tenders"]) == record["total_fen"] == 4190


def test_member_code_allows_points_and_a_payment_code_alone_does_not(stack):
    member = stack.add_member(points=800, tier="gold", display_name="张*三")
    stack.sync_now()
    session = start_sale(stack)
    by_code = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": stack.member_code(member)}).json()
    assert by_code["member"]["via"] == "member_code" and by_code["member"]["may_redeem"]
    assert by_code["pricing"]["max_redeemable_points"] == 800  # the balance, under the 50% cap of 2052
    # 50% of the basket after discounts is the cap: (4190 - 85) // 2 = 2052 points at 1 fen each.
    too_many = stack.api.put(f"/v1/sessions/{session['id']}/redemption", json={"points": 900})
    assert too_many.status_code == 409 and too_many.json()["error"] == "redemption_refused"
    spent = stack.api.put(f"/v1/sessions/{session['id']}/redemption", json={"points": 500}).json()
    assert spent["pricing"]["points_value_fen"] == 500 and spent["pricing"]["amount_due_fen"] == 4105 - 500
    done = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "tendered_fen": 10000}).json()
    assert done["points"]["redeemed"] == 500 and done["points"]["balance"] == 800 - 500 + done["points"]["earned"]

    payer_code = wechat_code("00", customer="0077")
    stack.add_member(points=800, tier="gold", display_name="赵*四", payer=payer_code)
    session = stack.open_session()
    stack.api.post(
        f"/v1/sessions/{session['id']}/codes", json={"text": payer_code}
    )  # before the basket: identifies only
    identified = stack.session(session["id"])
    assert identified["member"]["via"] == "payment_code" and identified["state"] == "member"
    refused = stack.api.put(f"/v1/sessions/{session['id']}/redemption", json={"points": 100})
    assert refused.status_code == 409 and "member code" in refused.json()["message"]
    assert stack.wechat.count("micropay") == 0


def test_phone_number_identifies_and_confirmed_phone_may_redeem(stack):
    member = stack.add_member(points=300, phone="13812345678", display_name="陈*")
    session = stack.open_session()
    bad = stack.api.post(f"/v1/sessions/{session['id']}/phone", json={"phone": "12345", "confirmed": True})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_phone"
    found = stack.api.post(
        f"/v1/sessions/{session['id']}/phone", json={"phone": "138 1234 5678", "confirmed": True}
    ).json()
    assert (
        found["member"]["id"] == member
        and found["member"]["phone_masked"] == "138****5678"
        and found["member"]["may_redeem"]
    )
    assert "13812345678" not in str(found)


def test_offline_refuses_code_payment_at_once_sells_for_cash_and_confirms_points_after(stack):
    member = stack.add_member(points=100, tier="gold", card_no="8800123456789")
    stack.sync_now()
    stack.central.stop()  # the WAN goes down
    session = stack.open_session()
    stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": "8800123456789"})  # card: from the cache
    sale = stack.api.put(f"/v1/sessions/{session['id']}/basket", json=BASKET).json()
    assert sale["member"]["id"] == member

    refused = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": wechat_code("00")})
    assert refused.status_code == 503 and refused.json()["error"] == "offline"
    assert "现金" in refused.json()["message_zh"] and stack.wechat.count("micropay") == 0
    assert stack.api.get("/v1/status").json()["checkout"]["online"] is False  # the next customer hears it at once

    done = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "tendered_fen": 5000}).json()
    assert done["state"] == "closed" and done["points"]["provisional"]
    receipt = stack.printed(session["id"])
    assert "积分以会员中心为准" in receipt and "找零" in receipt
    assert stack.api.get("/v1/status").json()["checkout"]["outbox_pending"] == 1

    stack.central.start()  # back: the sale goes to central, which books the points
    moved = stack.sync_now()
    assert moved["pushed"]["accepted"] == 1
    looked_up = stack.api.get("/v1/members/lookup", params={"card_no": "8800123456789"}).json()
    assert looked_up["points"] == 100 + done["points"]["earned"]


def test_refund_lines_then_the_rest_through_central_with_points_reversed(stack):
    code = wechat_code("00", customer="0101")
    stack.add_member(points=0, payer=code)
    session = start_sale(stack)
    done = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": code}).json()
    assert done["state"] == "closed" and done["points"]["earned"] == 16

    too_much = stack.api.post(
        "/v1/refunds", json={"transaction": done["receipt_no"], "lines": [{"line": 0, "qty": 3}], "reason": "顾客退货"}
    )
    assert too_much.status_code == 409 and too_much.json()["error"] == "refund_refused"
    for no_reason in ({}, {"reason": "  "}):  # the refund receipt says why: a refund without a reason is refused
        refused = stack.api.post("/v1/refunds", json={"transaction": done["receipt_no"]} | no_reason)
        assert refused.status_code == 422 and refused.json()["details"][0]["loc"][-1] == "reason"
    assert journal_count(stack) == 1
    first = stack.api.post(
        "/v1/refunds", json={"transaction": done["receipt_no"], "lines": [{"line": 0, "qty": 1}], "reason": "破损"}
    )
    assert first.status_code == 201, first.text
    assert first.json()["total_fen"] == 200 and first.json()["body"]["tenders"][0]["kind"] == "wechat"
    rest = stack.api.post("/v1/refunds", json={"transaction": done["transaction_id"], "reason": "顾客退货"}).json()
    assert first.json()["total_fen"] + rest["total_fen"] == 4190
    assert first.json()["points_earned"] + rest["points_earned"] == 16
    again = stack.api.post("/v1/refunds", json={"transaction": done["transaction_id"], "reason": "顾客退货"})
    assert again.status_code == 409 and "nothing is left" in again.json()["message"]
    receipt = stack.job_printed(first.json()["receipt_job_id"])
    assert "退货 REFUND" in receipt and "-¥2.00" in receipt
    assert done["receipt_no"] in receipt and "破损" in receipt and done["transaction_id"] not in receipt


def test_bad_input_is_refused_with_a_reason_and_nothing_is_journaled(stack_factory):
    stack = stack_factory()
    session = stack.open_session()
    sid = session["id"]
    unknown = stack.api.post(f"/v1/sessions/{sid}/codes", json={"text": "hello?"})
    assert unknown.status_code == 422 and unknown.json()["error"] == "unknown_code"
    alipay = stack.api.put(f"/v1/sessions/{sid}/basket", json=BASKET)
    not_taken = stack.api.post(f"/v1/sessions/{sid}/codes", json={"text": "280012345678901234"})
    assert (
        alipay.status_code == 200
        and not_taken.status_code == 422
        and not_taken.json()["error"] == "provider_not_enabled"
    )
    for qty in (0, -1, 1000):
        bad = stack.api.put(
            f"/v1/sessions/{sid}/basket", json={"lines": [{"sku": "1", "name": "x", "qty": qty, "unit_price_fen": 100}]}
        )
        assert bad.status_code == 400 and bad.json()["error"] == "bad_basket" and "quantity" in bad.json()["message"]
    floats = stack.api.put(
        f"/v1/sessions/{sid}/basket", json={"lines": [{"sku": "1", "name": "x", "qty": 1, "unit_price_fen": 1.5}]}
    )
    assert floats.status_code == 422 and floats.json()["error"] == "invalid_request"
    second = stack.api.post("/v1/sessions")
    assert second.status_code == 409 and second.json()["error"] == "sale_open" and second.json()["session_id"] == sid
    over = stack.api.post(f"/v1/sessions/{sid}/tenders", json={"kind": "card", "amount_fen": 999999, "reference": "x"})
    assert over.status_code == 409
    no_token = stack.api.get("/v1/status", headers={"Authorization": "Bearer wrong"})
    assert no_token.status_code == 401 and no_token.json()["error"] == "unauthorized"
    paid = stack.api.post(f"/v1/sessions/{sid}/tenders", json={"kind": "cash"}).json()
    after = stack.api.post(f"/v1/sessions/{sid}/tenders", json={"kind": "cash"})
    assert paid["state"] == "closed" and after.status_code == 409 and after.json()["error"] == "not_now"
    assert journal_count(stack) == 1


def test_kiosk_sells_catalogue_items_by_scan_and_cancel_leaves_no_trace(stack_factory):
    stack = stack_factory(kind="kiosk")
    stack.scan("6901234567892")  # a product scan at idle opens the sale
    current = stack.wait_session_current()
    assert current["lines"][0]["name"] == "矿泉水 550ml"
    stack.scan("6901234567892")
    second = stack.wait_session(current["id"], lambda s: bool(s["lines"]) and s["lines"][0]["qty"] == 2)
    assert second["pricing"]["amount_due_fen"] == 400
    unknown = stack.api.post(f"/v1/sessions/{current['id']}/codes", json={"text": "6900000000007"})
    assert unknown.status_code == 409 and "catalogue" in unknown.json()["message"]
    cancelled = stack.api.post(f"/v1/sessions/{current['id']}/cancel").json()
    assert cancelled["state"] == "cancelled" and journal_count(stack) == 0


def test_coupons_apply_once_to_their_member_and_refuse_others_expired_and_online_only_offline(stack):
    owner = stack.add_member(points=0, card_no="8800000000011", display_name="周*")
    stack.add_member(points=0, card_no="8800000000022", display_name="吴*")
    coupon = stack.add_coupon(owner, "满10减5", amount_off_fen=500, threshold_fen=1000)
    expired = stack.add_coupon(owner, "过期券", valid_days=(-30, -1))
    online_only = stack.add_coupon(
        owner, "9折券", kind="percent_off", amount_off_fen=0, percent_off=10, threshold_fen=0, cap_fen=200
    )
    stack.sync_now()

    session = start_sale(stack)
    sid = session["id"]
    stack.api.post(f"/v1/sessions/{sid}/codes", json={"text": "8800000000022"})  # the other member
    theirs = stack.api.post(f"/v1/sessions/{sid}/codes", json={"text": coupon})
    assert (
        theirs.status_code == 409
        and theirs.json()["error"] == "coupon_not_usable"
        and "another member" in theirs.json()["message"]
    )
    stack.api.post(f"/v1/sessions/{sid}/cancel")

    session = start_sale(stack)
    sid = session["id"]
    member = stack.api.post(f"/v1/sessions/{sid}/codes", json={"text": "8800000000011"}).json()
    # The member's best coupon is on by itself: ¥5 off beats 10% of ¥11.90 eligible (¥1.19).
    assert member["coupons"] == [{"code": coupon, "title": "满10减5", "amount_off_fen": 500, "auto": True}]
    assert {c["code"] for c in member["member"]["coupons"]} == {coupon, online_only}  # the expired one is not shown
    old = stack.api.post(f"/v1/sessions/{sid}/codes", json={"text": expired})  # central's feed leaves expired ones out
    assert (
        old.status_code == 409
        and old.json()["error"] == "coupon_not_usable"
        and old.json()["message_zh"] == "优惠券无效"
    )
    applied = stack.api.post(f"/v1/sessions/{sid}/codes", json={"text": coupon}).json()  # scanned: now the cashier's
    assert applied["coupons"] == [{"code": coupon, "title": "满10减5", "amount_off_fen": 500, "auto": False}]
    assert applied["pricing"]["amount_due_fen"] == 4190 - 500
    second = stack.api.post(f"/v1/sessions/{sid}/codes", json={"text": online_only})  # one coupon per sale
    assert second.status_code == 409 and second.json()["error"] == "coupon_not_usable"
    done = stack.api.post(f"/v1/sessions/{sid}/tenders", json={"kind": "cash", "tendered_fen": 5000}).json()
    assert done["state"] == "closed"
    assert "券 满10减5" in stack.printed(sid)

    session = start_sale(stack)
    stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": "8800000000011"})
    reused = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": coupon})
    assert reused.status_code == 409 and "already used" in reused.json()["message"]


def test_a_member_with_two_coupons_gets_the_better_one_without_scanning_it_and_the_receipt_lists_it(stack):
    member = stack.add_member(points=0, card_no="8800000000033", display_name="郑*")
    stack.add_coupon(member, "满10减5", amount_off_fen=500, threshold_fen=1000)
    better = stack.add_coupon(member, "满15减6", amount_off_fen=600, threshold_fen=1500)
    stack.add_coupon(member, "满20减9", amount_off_fen=900, threshold_fen=2000)  # ¥16.90 eligible: not met
    stack.sync_now()

    session = start_sale(stack)  # ¥41.90, of which ¥16.90 earns benefits (tobacco does not)
    found = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": "8800000000033"}).json()
    assert found["coupons"] == [{"code": better, "title": "满15减6", "amount_off_fen": 600, "auto": True}]
    assert found["pricing"]["amount_due_fen"] == 4190 - 600 and len(found["member"]["coupons"]) == 3
    paid = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "tendered_fen": 5000})
    assert paid.json()["state"] == "closed" and "券 满15减6" in stack.printed(session["id"])

    again = start_sale(stack)  # the coupon is used: the next best goes on
    found = stack.api.post(f"/v1/sessions/{again['id']}/codes", json={"text": "8800000000033"}).json()
    assert [c["title"] for c in found["coupons"]] == ["满10减5"]
    kept = stack.api.delete(f"/v1/sessions/{again['id']}/coupons/{found['coupons'][0]['code']}").json()
    assert kept["coupons"] == [] and kept["pricing"]["amount_due_fen"] == 4190  # the customer keeps it


def test_the_tier_reads_in_chinese_on_the_session_and_the_receipt(stack):
    stack.add_member(points=10, tier="gold", card_no="8800000000044", display_name="冯*")
    session = start_sale(stack)
    found = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": "8800000000044"}).json()
    assert found["member"]["tier"] == "gold" and found["member"]["tier_name"] == "金卡会员"
    stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "tendered_fen": 5000})
    printed = stack.printed(session["id"])
    assert "金卡会员" in printed and "gold" not in printed


def test_offline_points_redemption_is_capped_per_member_per_day(stack):
    member = stack.add_member(points=5000, display_name="孙*")
    stack.sync_now()  # the member and central's member-code keys reach the till
    codes = [stack.member_code(member, seconds_ago=ago) for ago in (2, 1)]
    stack.central.stop()
    assert stack.api.post("/v1/sync").status_code == 503  # the till notices the WAN is down
    spent = []
    for code in codes:
        session = start_sale(stack)
        identified = stack.api.post(
            f"/v1/sessions/{session['id']}/codes", json={"text": code}
        ).json()  # verified offline
        assert identified["member"]["via"] == "member_code" and not identified["online"]
        answer = stack.api.put(f"/v1/sessions/{session['id']}/redemption", json={"points": 200})
        spent.append(answer.status_code)
        if answer.status_code == 200:
            stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "tendered_fen": 5000})
        else:
            assert "at most 100 points" in answer.json()["message"]  # 300 a day offline, 200 already spent
            stack.api.post(f"/v1/sessions/{session['id']}/cancel")
    assert spent == [200, 409]


def test_a_refused_step_leaves_the_sale_as_it_was(stack):
    owner = stack.add_member(card_no="8800000000033")
    coupon = stack.add_coupon(owner, "满10减5", amount_off_fen=500, threshold_fen=1000)
    stack.sync_now()
    session = start_sale(stack)
    sid = session["id"]
    stack.api.post(f"/v1/sessions/{sid}/codes", json={"text": "8800000000033"})
    with_coupon = stack.api.post(f"/v1/sessions/{sid}/codes", json={"text": coupon}).json()
    small = {"lines": [{"sku": "1", "name": "口香糖", "qty": 1, "unit_price_fen": 300}]}
    refused = stack.api.put(f"/v1/sessions/{sid}/basket", json=small)
    assert refused.status_code == 409 and refused.json()["error"] == "coupon_not_usable"
    after = stack.session(sid)
    assert (
        after["lines"] == with_coupon["lines"]
        and after["pricing"] == with_coupon["pricing"]
        and after["coupons"] == with_coupon["coupons"]
    )

    stack.api.post(f"/v1/sessions/{sid}/tenders", json={"kind": "code", "auth_code": wechat_code("12")})
    late = stack.api.post(f"/v1/sessions/{sid}/codes", json={"text": "8800000000033"})
    assert late.status_code == 409 and "after payment has started" in late.json()["message"]
    cancelled = stack.api.post(f"/v1/sessions/{sid}/cancel").json()
    assert cancelled["state"] == "cancelled" and journal_count(stack) == 0
    assert stack.wait_session(sid, lambda s: (s["payment"] or {}).get("state") == "REVERSED")["state"] == "cancelled"


def test_an_open_sale_shows_the_network_coming_back(stack):
    stack.central.stop()
    assert stack.api.post("/v1/sync").status_code == 503
    session = stack.open_session()
    assert session["online"] is False
    stack.central.start()
    assert stack.api.post("/v1/sync").status_code == 200
    assert stack.session(session["id"])["online"] is True
    assert stack.api.get("/v1/sessions/current").json()["online"] is True
