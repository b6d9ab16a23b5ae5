"""A kiosk customer calls for staff: the kiosk's screens hear it, and the till named in `[help] till_url` shows it
(two agents over real HTTP, tests/checkout_stack.py)."""

from __future__ import annotations

from tests.support.credentials import API_TOKEN


def test_a_call_from_the_kiosk_reaches_the_tills_screen(stack_factory):
    till = stack_factory()
    kiosk = stack_factory(kind="kiosk", extra_toml=f'\n[help]\ntill_url = "{till.url}"\ntill_token = "{API_TOKEN}"\n')
    kiosk.scan("6901234567892")
    sale = kiosk.wait_session_current()
    sent = kiosk.api.post("/v1/help", json={"session_id": sale["id"]}).json()
    assert sent["delivered"] is True and sent["message_zh"] == "已呼叫店员，请稍候"
    heard = till.station_event(lambda e: e["type"] == "help")
    assert heard["call"]["station_id"] == "T01" and heard["call"]["session_id"] == sale["id"]
    assert heard["message"] == "1号收银台 needs staff"
    assert kiosk.station_event(lambda e: e["type"] == "help")["call"]["id"] == sent["call"]["id"]


def test_a_till_that_does_not_answer_leaves_the_customer_a_way_to_get_help(stack_factory):
    till = stack_factory()
    url = till.url
    till.stop()  # gone: a call must not hang the kiosk
    kiosk = stack_factory(kind="kiosk", extra_toml=f'\n[help]\ntill_url = "{url}"\n')
    sent = kiosk.api.post("/v1/help", json={})
    assert sent.status_code == 200 and sent.json()["delivered"] is False
    assert sent.json()["message_zh"] == "请向附近的店员示意"
    wrong_token = stack_factory(kind="kiosk", extra_toml=f'\n[help]\ntill_url = "{stack_factory().url}"\n')
    assert wrong_token.api.post("/v1/help", json={}).json()["delivered"] is False  # the till refused: no token
