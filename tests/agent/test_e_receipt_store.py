"""A whole store (tests/checkout_stack.py): the QR code the till prints opens the sale's e-receipt at central, once
the sale has reached central; before that (a sale made offline) it says not yet received."""

from __future__ import annotations

import re

import httpx

from agent.db import open_database
from drivers.escpos_decode import QrCode, decode
from tests.agent.test_checkout import BASKET, start_sale
from tests.checkout_stack import wechat_code


def printed_qr(stack, session_id: str) -> str:
    """Wait until the sale's receipt has printed; the payload of its QR code, read back from the printer's bytes."""
    stack.printed(session_id)
    engine = open_database(stack.database)
    try:
        with engine.connect() as connection:
            data = connection.exec_driver_sql(
                "SELECT data FROM print_job WHERE id = ?", (f"{session_id}-receipt",)
            ).scalar_one()
    finally:
        engine.dispose()
    (payload,) = [element.payload for element in decode(data) if isinstance(element, QrCode)]
    return payload


def open_on_a_phone(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10)  # no credentials, as a customer's phone


def text_of(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", re.sub(r"<(style|svg)\b.*?</\1>", " ", html, flags=re.S))


def test_a_member_s_printed_qr_code_opens_the_sale_at_central(stack):
    code = wechat_code("00", customer="0077")
    stack.add_member(points=1000, tier="gold", display_name="李*华", payer=code)
    session = start_sale(stack)
    stack.scan(code)
    done = stack.wait_session(session["id"], lambda s: s["state"] == "closed")
    url = printed_qr(stack, session["id"])
    assert url.startswith(f"{stack.central.url}/e/") and done["transaction_id"] not in url

    stack.sync_now()  # the sale reaches central (if the push right after the sale has not already)
    answer = open_on_a_phone(url)
    text = text_of(answer.text)
    assert answer.status_code == 200, answer.text
    assert done["receipt_no"] in text and "李*华" in text and "矿泉水 550ml" in text and "香烟" in text
    assert "本次积分" in text and f"+{done['pricing']['points_earned']}" in text
    assert "41.05" in text and "微信支付" in text and "会员折扣" in text
    assert "加入会员" not in text


def test_an_offline_sale_s_qr_code_says_not_yet_received_until_the_till_pushes_it(stack):
    stack.central.stop()  # the WAN goes down
    assert stack.api.post("/v1/sync").status_code == 503  # and the till knows it
    session = start_sale(stack)
    done = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "tendered_fen": 5000}).json()
    assert done["state"] == "closed" and not done["online"]
    url = printed_qr(stack, session["id"])  # minted at the till, with central out of reach

    # Central is back, but the till has not pushed the sale yet (any push before the test's is refused).
    stack.central.faults.respond("/v1/transactions:batch", 503, b'{"error":"unavailable","message":"x"}', times=100)
    stack.central.start()
    waiting = open_on_a_phone(url)
    assert waiting.status_code == 200 and "尚未收到" in waiting.text and done["receipt_no"] not in waiting.text

    stack.central.faults.clear()
    assert stack.sync_now()["pushed"]["accepted"] == 1
    shown = open_on_a_phone(url)
    assert shown.status_code == 200 and "尚未收到" not in shown.text
    text = text_of(shown.text)
    assert done["receipt_no"] in text and "现金" in text and "找零" in text and "¥50.00" in text


def test_a_basket_total_is_what_the_page_says_was_paid(stack):
    session = start_sale(stack, BASKET)
    done = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "card", "reference": "T8812"}).json()
    url = printed_qr(stack, session["id"])
    stack.sync_now()
    text = text_of(open_on_a_phone(url).text)
    assert "实付 Paid" in text and "¥41.90" in text and "银行卡" in text and done["receipt_no"] in text
