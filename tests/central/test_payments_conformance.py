"""Central's payments as WeChat Pay and Alipay want them, end to end over HTTP on 127.0.0.1 against the simulators
(which refuse what the providers refuse): pay-as-member identification with the default settings (in WeChat Pay v3
mode too), the address micropay reports, and the expiry every charge carries so that one arriving late can never be
paid. The v3 protocol's own cases are in test_payments_wechat_v3.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from central.payments.alipay import parse_time
from central.payments.simulators import serve_in_thread
from central.payments.simulators.alipay import generate_rsa_keypair
from central.payments.simulators.wechat import WeChatSimulator
from tests.central.test_payments import code, follow, pay
from tests.central.test_payments_alipay import alipay_central, serve_alipay
from tests.central.test_payments_alipay import code as alipay_code
from tests.support.credentials import APPID, MCH_ID, WECHAT_KEY
from tests.support.timings import FAST_PAYMENTS
from tests.support.wechat_v3 import v3_settings, v3_simulator


@pytest.fixture
def wechat():
    simulator = WeChatSimulator(appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY, userpaying_seconds=0.2)
    served = serve_in_thread(simulator.app())
    simulator.url = served.url
    yield simulator
    served.stop()


def wechat_central(central_factory, wechat, **overrides):
    """A central service with WeChat Pay pointed at the simulator (the settings' default sign type), its store S1."""
    settings = dict(
        wechat_base_url=wechat.url, wechat_appid=APPID, wechat_mch_id=MCH_ID, wechat_api_key=WECHAT_KEY, **FAST_PAYMENTS
    )
    server = central_factory(**(settings | overrides))
    return server, server.add_store("S1")


def test_pay_as_member_identifies_the_payer_with_the_default_sign_type(central_factory, wechat):
    server, store = wechat_central(central_factory, wechat)
    assert server.settings.wechat_sign_type == "HMAC-SHA256"  # the default; authcodetoopenid goes MD5 regardless
    payer = code("00", customer="0031")
    member = server.add_member(identifiers={f"openid:{APPID}": wechat.openid_for(payer)})
    with server.client(store) as client:
        answer = client.post("/v1/payments/identify", json={"auth_code": payer})
    assert answer.status_code == 200, answer.text
    assert answer.json()["member"]["member_id"] == member and answer.json()["may_redeem"] is False
    assert wechat.count("authcodetoopenid") == 1


def test_pay_as_member_in_v3_mode_still_identifies_through_v2_authcodetoopenid(central_factory, tmp_path):
    # WeChat Pay API v3 has no authcodetoopenid: a v3 central asks v2's, signed MD5 with the v2 key (the simulator
    # refuses any other signing there, as WeChat does), and charges through v3.
    wechat = v3_simulator()
    served = serve_in_thread(wechat.app())
    wechat.url = served.url
    try:
        server, store = wechat_central(central_factory, wechat, **v3_settings(tmp_path / "v3"))
        payer = code("00", customer="0032")
        member = server.add_member(identifiers={f"openid:{APPID}": wechat.openid_for(payer)})
        with server.client(store) as client:
            answer = client.post("/v1/payments/identify", json={"auth_code": payer})
            payment = pay(client, payer, member_id=member).json()
    finally:
        served.stop()
    assert answer.status_code == 200 and answer.json()["member"]["member_id"] == member
    assert wechat.count("authcodetoopenid") == 1 and server.settings.wechat_sign_type == "HMAC-SHA256"
    assert payment["state"] == "SUCCESS" and payment["member_id"] == member
    assert wechat.count("codepay") == 1 and wechat.count("micropay") == 0


def test_micropay_reports_central_s_address_from_the_settings(central_factory, wechat):
    server, store = wechat_central(central_factory, wechat, wechat_spbill_create_ip="203.0.113.10")
    with server.client(store) as client:
        payment = pay(client, code("00")).json()
    assert payment["state"] == "SUCCESS"
    assert wechat.orders[payment["out_trade_no"]].spbill_create_ip == "203.0.113.10"


def test_micropay_expires_when_central_gives_up(central_factory, wechat):
    server, store = wechat_central(central_factory, wechat, payments_limit_seconds=300)
    before = datetime.now(UTC)
    with server.client(store) as client:
        payment = pay(client, code("00")).json()
    after = datetime.now(UTC)
    assert payment["state"] == "SUCCESS"
    # time_expire: the payment limit (300 s) after the charge, rounded up to the second.
    expires_at = wechat.orders[payment["out_trade_no"]].expires_at
    assert before + timedelta(seconds=299) < expires_at <= after + timedelta(seconds=301)


def test_a_charge_reaching_wechat_too_late_is_refused_and_the_order_closed(central_factory):
    # WeChat's clock is 15 s ahead of central's: as if every request took 15 s to get there.
    wechat = WeChatSimulator(
        appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY, clock=lambda: datetime.now(UTC) + timedelta(seconds=15)
    )
    served = serve_in_thread(wechat.app())
    wechat.url = served.url
    try:
        server, store = wechat_central(central_factory, wechat)
        with server.client(store) as client:
            done = follow(client, pay(client, code("00")).json()["out_trade_no"])
    finally:
        served.stop()
    assert (done["state"], done["code"], done["paid"]) == ("REVERSED", "REJECTED", False)
    assert wechat.orders == {} and wechat.count("reverse") == 1  # never charged; closed all the same


@pytest.fixture(scope="module")
def alipay_keys():
    return generate_rsa_keypair(), generate_rsa_keypair()


@pytest.fixture
def alipay(alipay_keys):
    yield from serve_alipay(alipay_keys)


def test_alipay_trade_pay_expires_when_central_gives_up(central_factory, alipay, tmp_path):
    server = alipay_central(central_factory, alipay, tmp_path)  # a 3 s limit: under Alipay's shortest, a minute
    store = server.add_store("S1")
    with server.client(store) as client:
        payment = pay(client, alipay_code("00")).json()
        # PENDING is "ask again", never an answer: on a loaded machine the first one can outlast the answer window.
        payment = follow(client, payment["out_trade_no"]) if payment["state"] == "PENDING" else payment
    order = alipay.order(payment["out_trade_no"])
    assert payment["state"] == "SUCCESS" and order.timeout_express == "1m"
    # time_expire: a minute and the allowance (10 s) after the charge, rounded up to the second.
    assert timedelta(seconds=69) < parse_time(order.time_expire) - order.created_at <= timedelta(seconds=71)


def test_wechat_spbill_create_ip_must_be_an_ipv4_address(tmp_path):
    from central.config import SettingsError, load_settings

    path = tmp_path / "central.toml"
    for bad in ("2001:db8::10", "central.example.com", "203.0.113"):
        path.write_text(f'phone_hash_key = "0123456789abcdef0123"\nwechat_spbill_create_ip = "{bad}"\n')
        with pytest.raises(
            SettingsError, match=r"wechat_spbill_create_ip: .*IPv4.*for example: wechat_spbill_create_ip = "
        ):
            load_settings(path)
    path.write_text('phone_hash_key = "0123456789abcdef0123"\n')
    assert str(load_settings(path).settings.wechat_spbill_create_ip) == "127.0.0.1"  # the default
