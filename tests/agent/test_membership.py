"""Joining with consent and the customer's wallet, over real HTTP with the real central and the WeChat Pay
simulator (tests/checkout_stack.py)."""

from __future__ import annotations

import pytest

from agent.membership import NOTICE_VERSION
from tests.agent.test_checkout import BASKET, journal_count
from tests.checkout_stack import wechat_code

JOINING = {"welcome_points": 100, "card_no_prefix": "8800"}  # the test till's card pattern is 8800 + 9 digits


@pytest.fixture
def stack(stack_factory):
    return stack_factory(kind="kiosk", central_options=JOINING)


def join(stack, phone: str = "13900007777", **more):
    body = {"phone": phone, "consent": True, "notice_version": NOTICE_VERSION} | more
    return stack.api.post("/v1/members", json=body)


def test_the_notice_says_what_is_kept_why_how_long_and_how_to_delete(stack):
    notice = stack.api.get("/v1/members/notice").json()
    assert notice["version"] == NOTICE_VERSION and notice["store_name"] == "测试门店"
    text = "".join(notice["zh"])
    assert "测试门店" in text and "138****5678" in text and "天后删除" in text and "注销" in text


def test_a_customer_joins_with_consent_gets_welcome_points_and_a_card_the_till_recognises(stack):
    joined = join(stack)
    assert joined.status_code == 201, joined.text
    answer = joined.json()
    assert answer["created"] and answer["welcome_points"] == 100 and answer["message_zh"] == "欢迎加入会员！"
    member = answer["wallet"]["member"]
    assert member["phone_masked"] == "139****7777" and member["points"] == 100 and member["points_pending"] == 0
    assert member["card_no"].startswith("8800") and len(member["card_no"]) == 13
    assert member["card_qr_svg"].startswith("<svg") and "viewBox" in member["card_qr_svg"]
    assert "13900007777" not in joined.text  # the number is shown masked once confirmed

    # Known at once, offline too: the card number the customer keeps as a QR identifies them at this station.
    stack.central.stop()
    session = stack.open_session()
    found = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": member["card_no"]}).json()
    assert found["member"]["phone_masked"] == "139****7777" and found["member"]["points"] == 100


def test_the_same_number_again_makes_no_new_member_and_says_so(stack):
    first = join(stack).json()
    again = join(stack)
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["message_zh"] == "该手机号已是会员" and again.json()["welcome_points"] == 0
    assert again.json()["wallet"]["member"]["card_no"] == first["wallet"]["member"]["card_no"]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"consent": False}, 422, "consent_required"),
        ({"notice_version": "2020-01"}, 409, "notice_changed"),
        ({"phone": "12345"}, 422, "invalid_phone"),
    ],
)
def test_no_consent_an_old_notice_or_a_bad_number_joins_nobody(stack, body, status, error):
    refused = join(stack, **body)
    assert refused.status_code == status and refused.json()["error"] == error, refused.text
    assert refused.json()["message_zh"]
    with stack.central.client(stack.store) as central:
        assert central.get("/v1/members/changes").json()["changes"] == []


def test_offline_joining_is_refused_whole(stack):
    stack.central.stop()
    refused = join(stack)
    assert refused.status_code == 503 and refused.json()["error"] == "offline"
    assert "无法办理入会" in refused.json()["message_zh"]


def test_a_payer_who_is_not_a_member_joins_with_that_payment(stack_factory):
    stack = stack_factory(central_options=JOINING)
    code = wechat_code("00", customer="0777")  # a payer central knows no member for
    session = stack.open_session()
    stack.api.put(f"/v1/sessions/{session['id']}/basket", json=BASKET)
    paid = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": code}).json()
    assert paid["state"] == "closed" and paid["member"] is None

    joined = join(stack, phone="13900008888", session_id=session["id"])
    assert joined.status_code == 201, joined.text
    # 支付即会员: the next payment code of the same customer finds the member.
    later = stack.open_session()
    again = stack.api.post(
        f"/v1/sessions/{later['id']}/codes", json={"text": wechat_code("00", customer="0777")}
    ).json()
    assert again["member"]["phone_masked"] == "139****8888" and again["member"]["via"] == "payment_code"


def test_the_wallet_shows_points_coupons_and_receipts_without_opening_a_sale(stack_factory):
    stack = stack_factory(central_options=JOINING)
    member = stack.add_member(points=300, tier="gold", display_name="李*华", card_no="8800000000055")
    stack.add_coupon(member, "满10减5", amount_off_fen=500, threshold_fen=1000)
    stack.sync_now()
    session = stack.open_session()
    stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": "8800000000055"})
    stack.api.put(f"/v1/sessions/{session['id']}/basket", json=BASKET)
    sale = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash"}).json()
    assert sale["state"] == "closed"

    wallet = stack.api.post("/v1/wallet", json={"text": "8800000000055"}).json()["wallet"]
    assert wallet["member"]["display_name"] == "李*华" and wallet["member"]["tier_name"] == "金卡会员"
    assert wallet["member"]["points"] == 300 + sale["points"]["earned"]
    assert [r["receipt_no"] for r in wallet["receipts"]] == [sale["receipt_no"]]
    assert wallet["receipts"][0]["e_receipt_url"].startswith(f"{stack.central.url}/e/")
    assert wallet["coupons"] == []  # used in that sale
    assert journal_count(stack) == 1 and stack.api.get("/v1/status").json()["checkout"]["open_session"] is None

    unknown = stack.api.post("/v1/wallet", json={"text": "8800999999999"})
    assert unknown.status_code == 200 and unknown.json()["found"] is False and unknown.json()["wallet"] is None
    assert "加入" in unknown.json()["message_zh"]
    product = stack.api.post("/v1/wallet", json={"text": "6901234567892"})
    assert product.status_code == 422 and product.json()["error"] == "unknown_code"


def test_the_next_scan_after_my_membership_shows_the_wallet_and_opens_no_sale(stack):
    member = stack.add_member(points=42, card_no="8800000000066")
    stack.sync_now()
    assert stack.api.post("/v1/wallet/listen").json()["listening_s"] > 0
    stack.scan("8800000000066")
    event = stack.station_event(lambda e: e["type"] == "wallet")
    assert event["wallet"]["member"]["points"] == 42 and event["session_id"] is None
    assert stack.api.get("/v1/status").json()["checkout"]["open_session"] is None
    # Heard once: the next scan is a sale's again.
    stack.scan("8800000000066")
    opened = stack.station_event(lambda e: ((e.get("session") or {}).get("member") or {}).get("id") == member)
    assert opened["session"]["state"] == "member"


def test_points_of_a_sale_central_has_not_confirmed_show_as_pending(stack_factory):
    stack = stack_factory(central_options=JOINING)
    stack.add_member(points=50, card_no="8800000000077")
    stack.sync_now()
    stack.central.stop()  # the sale is taken offline: its points are provisional
    session = stack.open_session()
    stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": "8800000000077"})
    stack.api.put(f"/v1/sessions/{session['id']}/basket", json=BASKET)
    sale = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash"}).json()
    earned = sale["points"]["earned"]
    assert earned > 0
    wallet = stack.api.post("/v1/wallet", json={"text": "8800000000077"}).json()["wallet"]
    assert wallet["member"]["points"] == 50 + earned and wallet["member"]["points_pending"] == earned
