"""The payment gateway end to end with WeChat Pay API v3 (`wechat_pay_api = "v3"`): the real central service
(SQLite and PostgreSQL) against the v3 simulator, both over HTTP on 127.0.0.1, with the shrunk timings of
test_payments.py. The gateway's rules are the same whichever API answers; these check that v3's answers (202
USERPAYING, 4xx/5xx error codes, signed JSON) land on the same states as v2's, that a v3 central still identifies
the payer through v2 authcodetoopenid, and that refunds go through v3."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from central.models import Payment
from central.payments.simulators import serve_in_thread
from tests.central.test_payments import code, events, follow, pay
from tests.central.test_payments_refund import follow_refund, new_orn, paid, refund
from tests.support.credentials import APPID, MCH_ID, WECHAT_KEY
from tests.support.poll import eventually
from tests.support.timings import FAST_PAYMENTS
from tests.support.wechat_v3 import v3_settings, v3_simulator

NOT_BEFORE = FAST_PAYMENTS["payments_reverse_not_before_seconds"]


class SimClock:
    """The simulator's clock: real time plus what a test adds."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture
def sim():
    simulator = v3_simulator(userpaying_seconds=0.2, slow_seconds=0.7, clock=SimClock(), refund_seconds=60.0)
    served = serve_in_thread(simulator.app())
    simulator.url = served.url
    yield simulator
    served.stop()


def v3_central(central_factory, sim, tmp_path, **overrides):
    settings = dict(
        wechat_base_url=sim.url,
        wechat_appid=APPID,
        wechat_mch_id=MCH_ID,
        wechat_api_key=WECHAT_KEY,
        **v3_settings(tmp_path / "wechat-v3"),
        **FAST_PAYMENTS,
    )
    return central_factory(**(settings | overrides))


@pytest.fixture
def paying(central_factory, sim, tmp_path):
    server = v3_central(central_factory, sim, tmp_path)
    store = server.add_store("S1")
    with server.client(store) as client:
        yield server, client
    server.stop()


def test_identify_through_v2_then_pay_through_v3_links_the_payer(paying, sim):
    server, client = paying
    member = server.add_member(points=500)
    first = code("00", customer="0007")
    before = client.post("/v1/payments/identify", json={"auth_code": first}).json()
    assert before["payer"] == {"appid": APPID, "openid": sim.openid_for(first)} and before["may_redeem"] is False
    assert sim.count("authcodetoopenid") == 1  # v2 only, with the v2 key, as in v2 mode

    answer = pay(client, first, 2500, member_id=member)
    payment = answer.json()
    assert answer.status_code == 201 and payment["state"] == "SUCCESS" and payment["paid"] and payment["final"]
    assert payment["payer"]["openid"] == sim.openid_for(first) and payment["member_id"] == member
    assert payment["provider_trade_no"] == sim.orders[payment["out_trade_no"]].transaction_id
    assert sim.count("codepay") == 1 and sim.count("micropay") == 0
    after = client.post("/v1/payments/identify", json={"auth_code": code("00", customer="0007")}).json()
    assert after["member"]["member_id"] == member


def test_the_charge_reports_the_store_the_station_and_the_till_s_address(paying, sim):
    server, client = paying
    otn = pay(client, code("00")).json()["out_trade_no"]
    # The test's client reaches central from 127.0.0.1: that is the till's address as central sees it.
    assert sim.scenes[otn] == {"device_id": "S1-T01", "device_ip": "127.0.0.1", "store_info": {"out_id": "S1"}}


def test_userpaying_then_paid(paying, sim):
    server, client = paying
    payment = pay(client, code("10")).json()
    assert payment["state"] == "USERPAYING" and not payment["paid"] and "密码" in payment["reason_zh"]
    done = follow(client, payment["out_trade_no"])
    assert done["state"] == "SUCCESS" and done["paid"]
    assert sim.count("codepay") == 1 and sim.count("orderquery") >= 1 and sim.count("reverse") == 0


def test_userpaying_then_the_customer_cancels(paying, sim):
    server, client = paying
    otn = pay(client, code("11")).json()["out_trade_no"]
    done = follow(client, otn)
    assert done["state"] == "FAILED" and done["code"] == "PAYERROR" and "取消" in done["reason_zh"] and not done["paid"]


def test_never_confirmed_is_reversed_after_the_limit_and_not_before(paying, sim):
    server, client = paying
    otn = pay(client, code("12")).json()["out_trade_no"]
    done = follow(client, otn)
    with server.session() as session:
        started = session.get(Payment, otn).charge_sent_at
    assert done["state"] == "REVERSED" and done["code"] == "TIMEOUT" and not done["paid"]
    order = sim.orders[otn]
    assert order.state == "REVOKED" and order.reverse_calls == 1 and not order.paid_before_reverse
    assert order.reversed_at - started >= timedelta(seconds=FAST_PAYMENTS["payments_limit_seconds"])


@pytest.mark.parametrize(("scenario", "error"), [("20", "SYSTEM_ERROR"), ("21", "BANK_ERROR")])
def test_a_5xx_system_or_bank_error_is_resolved_by_query(paying, sim, scenario, error):
    server, client = paying
    first = pay(client, code(scenario)).json()
    done = first if first["state"] == "SUCCESS" else follow(client, first["out_trade_no"])
    assert done["state"] == "SUCCESS" and done["provider_trade_no"]
    assert sim.count("codepay") == 1 and sim.count("orderquery") >= 1
    assert ("charge", "UNKNOWN", error) in events(server, done["out_trade_no"])


def test_a_lost_answer_while_the_customer_never_confirms_is_queried_then_reversed(paying, sim):
    server, client = paying
    sim.charge_faults = 1  # the charge is made, but its answer is a proxy's 502 page
    otn = pay(client, code("12")).json()["out_trade_no"]
    done = follow(client, otn)
    assert done["state"] == "REVERSED" and done["code"] == "TIMEOUT" and not done["paid"]
    trail = events(server, otn)
    assert ("charge", "ERROR", "ProviderBadResponse") in trail and ("query", "USERPAYING", "USERPAYING") in trail
    assert sim.count("codepay") == 1 and sim.orders[otn].state == "REVOKED" and sim.orders[otn].reverse_calls == 1


@pytest.mark.parametrize(
    ("scenario", "error", "zh"),
    [("30", "AUTH_CODE_EXPIRE", "过期"), ("31", "AUTH_CODE_INVALID", "无效"), ("32", "NOT_ENOUGH", "余额不足")],
)
def test_definite_failures_answer_at_once_with_a_reason(paying, sim, scenario, error, zh):
    server, client = paying
    payment = pay(client, code(scenario)).json()
    assert payment["state"] == "FAILED" and payment["final"] and payment["code"] == error
    assert zh in payment["reason_zh"] and payment["reason_en"]
    assert sim.count("orderquery") == 0 and sim.count("reverse") == 0


def test_the_till_cancels_and_a_reverse_answering_5xx_is_tried_again(paying, sim):
    server, client = paying
    otn = pay(client, code("40")).json()["out_trade_no"]
    with server.session() as session:
        sent = session.get(Payment, otn).charge_sent_at
    cancelled = client.post(f"/v1/payments/{otn}/reverse").json()
    assert cancelled["state"] == "REVERSING" and cancelled["code"] == "CANCELLED"
    done = follow(client, otn)
    assert done["state"] == "REVERSED" and done["code"] == "CANCELLED"
    order = sim.orders[otn]
    assert order.reverse_calls == 2 and order.state == "REVOKED"
    assert order.reversed_at - sent >= timedelta(seconds=NOT_BEFORE)
    assert [e[1] for e in events(server, otn) if e[0] == "reverse"] == ["NOT_DONE", "DONE", "REVERSED"]


def test_a_reverse_that_fails_twice_is_retried_until_confirmed(paying, sim):
    server, client = paying
    otn = pay(client, code("41")).json()["out_trade_no"]
    client.post(f"/v1/payments/{otn}/reverse")
    done = follow(client, otn)
    assert done["state"] == "REVERSED" and sim.orders[otn].reverse_calls == 3
    # An unsigned 500 page is an error; a signed 500 SYSTEM_ERROR a reverse not done yet.
    assert [e[1] for e in events(server, otn) if e[0] == "reverse"] == ["ERROR", "NOT_DONE", "DONE", "REVERSED"]


@pytest.mark.parametrize(
    ("scenario", "fault"), [("50", "ProviderUnreachable"), ("51", "ProviderBadResponse"), ("52", "ProviderBadResponse")]
)
def test_a_late_forged_or_broken_answer_is_settled_by_query_never_a_second_charge(
    central_factory, sim, tmp_path, scenario, fault
):
    server = v3_central(central_factory, sim, tmp_path, payments_limit_seconds=30.0)
    with server.client(server.add_store("S1")) as client:
        otn = pay(client, code(scenario)).json()["out_trade_no"]
        done = follow(client, otn)
        assert done["state"] == "SUCCESS" and done["provider_trade_no"] == sim.orders[otn].transaction_id
        assert sim.count("codepay", otn) == 1 and sim.count("orderquery", otn) >= 1
        assert ("charge", "ERROR", fault) in events(server, otn)


def test_a_central_signing_with_another_key_is_refused_and_closes_the_order(central_factory, sim, tmp_path):
    from central.payments.simulators.wechat_v3 import generate_private_key_pem

    settings = v3_settings(tmp_path / "wechat-v3")
    settings["wechat_v3_private_key_path"].write_text(generate_private_key_pem())  # not the merchant's key
    server = central_factory(
        wechat_base_url=sim.url,
        wechat_appid=APPID,
        wechat_mch_id=MCH_ID,
        wechat_api_key=WECHAT_KEY,
        **settings,
        **FAST_PAYMENTS,
    )
    with server.client(server.add_store("S1")) as client:
        payment = pay(client, code("00")).json()
        done = follow(client, payment["out_trade_no"], until=("REVERSING", "SUCCESS", "FAILED", "REVERSED"))
        # WeChat refused the request itself (401 SIGN_ERROR): nothing was charged. The gateway treats it as not
        # paid and goes on reversing (refused too, until the key is fixed): never SUCCESS from a refusal.
        assert (done["state"], done["code"], done["paid"]) == ("REVERSING", "REJECTED", False)
        eventually(lambda: ("reverse", "ERROR", "ProviderRejected") in events(server, payment["out_trade_no"]))
    assert sim.orders == {} and sim.count("codepay") == 0
    server.stop()


def test_a_refund_goes_through_v3_processing_then_success(paying, sim):
    server, client = paying
    otn = paid(client, code("00"), 1234)
    orn = new_orn()
    first = refund(client, otn, 1234, orn, reason="顾客退货").json()
    assert first["state"] == "PROCESSING" and first["provider_refund_no"] == sim.refund(orn).refund_id
    assert sim.refund(orn).desc == "顾客退货" and sim.count("refund") == 1
    eventually(lambda: sim.count("refundquery", otn) >= 1)
    sim.clock.offset = timedelta(seconds=61)  # the money reaches the payer
    done = follow_refund(client, otn, orn)
    assert done["state"] == "SUCCESS" and done["refunded_at"] and sim.refunded_fen(otn) == 1234
    assert sim.count("refund") == 1


def test_a_refund_refused_for_the_merchant_s_balance_is_failed_and_a_lost_answer_is_queried(paying, sim):
    server, client = paying
    broke = paid(client, code("62"), 500)
    refused = refund(client, broke, 500).json()
    assert refused["state"] == "FAILED" and refused["code"] == "NOT_ENOUGH" and "余额不足" in refused["reason_zh"]
    lost = paid(client, code("60"), 700)
    orn = new_orn()
    answer = refund(client, lost, 700, orn).json()
    assert answer["state"] == "PROCESSING"  # its answer was lost; the refund query knows it
    sim.clock.offset = timedelta(seconds=61)
    assert follow_refund(client, lost, orn)["state"] == "SUCCESS" and sim.count("refund", lost) == 1
