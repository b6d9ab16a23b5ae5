"""A paid sale's answer carries its e-receipt link and that link's QR, for the customer's screen to show (the
kiosk's success screen); before it is paid there is none."""

from __future__ import annotations

from central.e_receipt_token import read_token
from tests.checkout_stack import wechat_code
from tests.support.credentials import PHONE_KEY_BYTES


def test_a_paid_sale_answers_its_e_receipt_link_and_qr(stack_factory):
    stack = stack_factory(kind="kiosk")
    sale = stack.open_session()
    assert sale["e_receipt_url"] is None and sale["e_receipt_qr_svg"] is None
    priced = stack.api.post(f"/v1/sessions/{sale['id']}/codes", json={"text": "6901234567892"}).json()
    assert priced["e_receipt_url"] is None

    stack.api.post(f"/v1/sessions/{sale['id']}/tenders", json={"kind": "code", "auth_code": wechat_code()})
    paid = stack.wait_session(sale["id"], lambda s: s["paid"])
    answer = stack.session(sale["id"])
    link = answer["e_receipt_url"]
    assert link.startswith(f"{stack.central.url}/e/")
    assert read_token(PHONE_KEY_BYTES, link.rsplit("/", 1)[1]) == (sale["id"], True)
    assert answer["e_receipt_qr_svg"].startswith("<svg") and "<script" not in answer["e_receipt_qr_svg"]
    assert paid["transaction_id"] == sale["id"]
