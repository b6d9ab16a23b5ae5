"""The payment gateway end to end: the real central service (SQLite and PostgreSQL) against the WeChat Pay
simulator, both over HTTP on 127.0.0.1. The gateway's timings are shrunk by settings (poll 0.05 s, limit 3 s,
reverse not before 0.3 s); test_payments_timing.py runs the real 5/15/30 s on a fake clock."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta

import pytest

from central.models import Payment, PaymentEvent
from central.payments.simulators import serve_in_thread
from central.payments.simulators.wechat import WeChatSimulator
from tests.support.credentials import APPID, MCH_ID, WECHAT_KEY
from tests.support.timings import FAST_PAYMENTS

NOT_BEFORE = FAST_PAYMENTS["payments_reverse_not_before_seconds"]
_serial = itertools.count(1)


@pytest.fixture
def sim():
    simulator = WeChatSimulator(
        appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY, userpaying_seconds=0.2, slow_seconds=0.7
    )
    served = serve_in_thread(simulator.app())
    simulator.url = served.url
    yield simulator
    served.stop()


@pytest.fixture
def paying(central_factory, sim):
    """A central service with WeChat Pay pointed at the simulator, a store S1 and its client."""
    server = central_factory(
        wechat_base_url=sim.url, wechat_appid=APPID, wechat_mch_id=MCH_ID, wechat_api_key=WECHAT_KEY, **FAST_PAYMENTS
    )
    store = server.add_store("S1")
    with server.client(store) as client:
        yield server, client


def code(scenario: str, customer: str = "0001") -> str:
    return f"13{customer}{next(_serial):010d}{scenario}"


def new_otn() -> str:
    return f"S1T01{time.time_ns()}"[:32]


def pay(client, auth_code: str, amount: int = 1234, **extra):
    otn = extra.pop("out_trade_no", None) or new_otn()
    return client.post(
        "/v1/payments",
        json={"out_trade_no": otn, "auth_code": auth_code, "amount_fen": amount, "station_id": "T01", **extra},
    )


def final_answer(client, answer: dict) -> dict:
    """A payment's answer, followed to its end when the provider answered after central's answer window (PENDING):
    on a loaded machine the simulator's answer can come later than a test's short window."""
    return follow(client, answer["out_trade_no"]) if answer["state"] == "PENDING" else answer


def follow(client, otn: str, until=("SUCCESS", "FAILED", "REVERSED"), within: float = 10.0) -> dict:
    """Long-poll the payment until it reaches one of `until`."""
    deadline = time.monotonic() + within
    while True:
        payment = client.get(f"/v1/payments/{otn}", params={"wait": 2}).json()
        if payment["state"] in until or time.monotonic() > deadline:
            return payment


def events(server, otn: str) -> list[tuple[str, str, str | None]]:
    table = PaymentEvent.__table__
    with server.session() as session:
        rows = session.execute(table.select().where(table.c.out_trade_no == otn).order_by(table.c.id)).all()
    return [(r.action, r.outcome, r.code) for r in rows]


# --- identification and membership ----------------------------------------------------------------------------


def test_identify_then_pay_links_the_payers_openid_to_the_member(paying, sim):
    server, client = paying
    member = server.add_member(points=500)
    first = code("00", customer="0007")
    before = client.post("/v1/payments/identify", json={"auth_code": first}).json()
    assert before["provider"] == "wechat" and before["member"] is None and before["may_redeem"] is False
    assert before["payer"] == {"appid": APPID, "openid": sim.openid_for(first)}

    answer = pay(client, first, 2500, member_id=member)
    payment = answer.json()
    assert answer.status_code == 201 and payment["state"] == "SUCCESS" and payment["paid"] and payment["final"]
    assert payment["member_id"] == member and payment["payer"]["openid"] == sim.openid_for(first)
    assert payment["provider_trade_no"] and payment["reason_zh"] == "支付成功"

    # The next code of the same customer now names the member, before any charge; still no redeeming.
    after = client.post("/v1/payments/identify", json={"auth_code": code("00", customer="0007")}).json()
    assert after["member"]["member_id"] == member and after["member"]["points"] == 500 and after["may_redeem"] is False
    kinds = {i["kind"]: i["value"] for i in after["member"]["identifiers"]}
    assert kinds[f"openid:{APPID}"] == sim.openid_for(first)
    # A payment without a member id learns it from the linked openid.
    assert pay(client, code("00", customer="0007"), 100).json()["member_id"] == member


def test_identify_refuses_what_it_cannot_identify(paying):
    server, client = paying
    expired = client.post("/v1/payments/identify", json={"auth_code": code("30")}).json()
    assert expired["payer"] is None and expired["member"] is None and expired["may_redeem"] is False
    not_a_code = client.post("/v1/payments/identify", json={"auth_code": "8800123456789"})
    assert not_a_code.status_code == 422 and not_a_code.json()["error"] == "not_a_payment_code"
    alipay = client.post("/v1/payments/identify", json={"auth_code": "280012345678901234"})
    assert alipay.status_code == 422 and alipay.json()["error"] == "provider_not_configured"
    assert "Alipay is not configured" in alipay.json()["message"]


# --- the scenarios ----------------------------------------------------------------------------------------------


def test_userpaying_then_paid(paying, sim):
    server, client = paying
    payment = pay(client, code("10")).json()
    assert payment["state"] == "USERPAYING" and not payment["paid"] and not payment["final"]
    assert "密码" in payment["reason_zh"]
    done = follow(client, payment["out_trade_no"])
    assert done["state"] == "SUCCESS" and done["paid"]
    assert sim.count("micropay") == 1 and sim.count("orderquery") >= 1 and sim.count("reverse") == 0


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
    assert "撤销" in done["reason_zh"] and "reversed" in done["reason_en"]
    order = sim.orders[otn]
    assert order.state == "REVOKED" and order.reverse_calls == 1 and not order.paid_before_reverse
    assert order.reversed_at - started >= timedelta(seconds=FAST_PAYMENTS["payments_limit_seconds"])


@pytest.mark.parametrize("scenario", ["20", "21"])
def test_system_or_bank_error_is_resolved_by_query(paying, sim, scenario):
    server, client = paying
    first = pay(client, code(scenario)).json()
    done = first if first["state"] == "SUCCESS" else follow(client, first["out_trade_no"])
    assert done["state"] == "SUCCESS" and done["provider_trade_no"]
    assert sim.count("micropay") == 1 and sim.count("orderquery") >= 1
    assert ("charge", "UNKNOWN", "SYSTEMERROR" if scenario == "20" else "BANKERROR") in events(
        server, done["out_trade_no"]
    )


@pytest.mark.parametrize(
    ("scenario", "err_code", "zh"),
    [("30", "AUTHCODEEXPIRE", "过期"), ("31", "AUTH_CODE_INVALID", "无效"), ("32", "NOTENOUGH", "余额不足")],
)
def test_definite_failures_answer_at_once_with_a_reason(paying, sim, scenario, err_code, zh):
    server, client = paying
    payment = pay(client, code(scenario)).json()
    assert payment["state"] == "FAILED" and payment["final"] and payment["code"] == err_code
    assert zh in payment["reason_zh"] and payment["reason_en"]
    assert sim.count("orderquery") == 0 and sim.count("reverse") == 0


def test_the_till_cancels_and_the_reverse_needs_a_recall(paying, sim):
    server, client = paying
    otn = pay(client, code("40")).json()["out_trade_no"]
    with server.session() as session:
        sent = session.get(Payment, otn).charge_sent_at
    assert sent <= sim.orders[otn].created_at  # stamped before it went out
    cancelled = client.post(f"/v1/payments/{otn}/reverse").json()
    assert cancelled["state"] == "REVERSING" and not cancelled["paid"] and cancelled["code"] == "CANCELLED"
    done = follow(client, otn)
    assert done["state"] == "REVERSED" and done["code"] == "CANCELLED"
    order = sim.orders[otn]
    assert order.reverse_calls == 2 and order.state == "REVOKED"
    assert order.reversed_at - sent >= timedelta(seconds=NOT_BEFORE)  # waited before reversing
    assert [e[1] for e in events(server, otn) if e[0] == "reverse"] == ["RECALL", "DONE", "REVERSED"]
    # Reversing again is a no-op answer.
    assert client.post(f"/v1/payments/{otn}/reverse").json()["state"] == "REVERSED" and order.reverse_calls == 2


def test_a_reverse_that_fails_twice_is_retried_until_confirmed(paying, sim):
    server, client = paying
    otn = pay(client, code("41")).json()["out_trade_no"]
    client.post(f"/v1/payments/{otn}/reverse")
    done = follow(client, otn)
    assert done["state"] == "REVERSED" and sim.orders[otn].reverse_calls == 3
    assert [e[1] for e in events(server, otn) if e[0] == "reverse"] == ["ERROR", "NOT_DONE", "DONE", "REVERSED"]


def test_a_paid_payment_taken_back_by_the_till_is_reversed(paying, sim):
    server, client = paying
    otn = pay(client, code("00")).json()["out_trade_no"]
    assert client.post(f"/v1/payments/{otn}/reverse").json()["state"] == "REVERSING"
    assert follow(client, otn)["state"] == "REVERSED"
    assert sim.orders[otn].paid_before_reverse and sim.orders[otn].state == "REVOKED"


@pytest.mark.parametrize(
    ("scenario", "fault"), [("50", "ProviderUnreachable"), ("51", "ProviderBadResponse"), ("52", "ProviderBadResponse")]
)
def test_a_lost_or_bad_answer_after_the_charge_is_settled_by_query_never_a_second_charge(
    central_factory, sim, scenario, fault
):
    # The give-up limit is long here: on a loaded machine FAST_PAYMENTS's could pass before the query, and the
    # gateway would then (rightly) reverse instead of settling, which is another test's subject.
    server = central_factory(
        wechat_base_url=sim.url,
        wechat_appid=APPID,
        wechat_mch_id=MCH_ID,
        wechat_api_key=WECHAT_KEY,
        **(FAST_PAYMENTS | {"payments_limit_seconds": 30.0}),
    )
    with server.client(server.add_store("S1")) as client:
        payment = pay(client, code(scenario)).json()
        otn = payment["out_trade_no"]
        assert payment["state"] in ("UNKNOWN", "SUCCESS")
        done = follow(client, otn)
        assert done["state"] == "SUCCESS" and done["provider_trade_no"] == sim.orders[otn].transaction_id
        assert sim.count("micropay") == 1 and sim.count("micropay", otn) == 1 and sim.count("orderquery", otn) >= 1
        assert ("charge", "ERROR", fault) in events(server, otn)


# --- bad input -----------------------------------------------------------------------------------------------------


def test_amounts_of_zero_or_less_and_wrong_codes_are_refused(paying, sim):
    server, client = paying
    for amount in (0, -100):
        answer = pay(client, code("00"), amount)
        assert answer.status_code == 422 and "amount_fen" in answer.json()["message"]
    assert pay(client, code("00"), 12.5).status_code == 422  # a float is no amount of fen
    wrong = pay(client, code("00"), provider="alipay")
    assert (
        wrong.status_code == 422
        and wrong.json()["error"] == "wrong_provider"
        and "WeChat Pay code" in wrong.json()["message"]
    )
    alipay = pay(client, "281234567890123456")
    assert alipay.status_code == 422 and alipay.json()["error"] == "provider_not_configured"
    garbage = pay(client, "12345")
    assert garbage.status_code == 422 and garbage.json()["error"] == "not_a_payment_code"
    bad_otn = pay(client, code("00"), out_trade_no="has spaces!")
    assert bad_otn.status_code == 422
    assert pay(client, code("00"), member_id="MNOSUCH").json()["error"] == "unknown_member"
    assert sim.count("micropay") == 0


def test_the_same_payment_twice_is_charged_once(paying, sim, central_factory):
    server, client = paying
    request = {"out_trade_no": new_otn(), "auth_code": code("00"), "amount_fen": 990, "station_id": "T01"}
    first = client.post("/v1/payments", json=request)
    again = client.post("/v1/payments", json=request)
    assert first.status_code == 201 and again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json() and sim.count("micropay") == 1
    reused = client.post("/v1/payments", json={**request, "amount_fen": 991})
    assert reused.status_code == 409 and reused.json()["error"] == "out_trade_no_reused"
    other = server.add_store("S2")
    with server.client(other) as client2:
        assert client2.get(f"/v1/payments/{request['out_trade_no']}").status_code == 404
        assert client2.post(f"/v1/payments/{request['out_trade_no']}/reverse").status_code == 404
        taken = client2.post("/v1/payments", json=request)
        assert taken.status_code == 409 and taken.json()["error"] == "out_trade_no_taken"
    assert client.get("/v1/payments/NOSUCH").status_code == 404


def test_payments_need_the_stores_credentials(paying):
    server, _client = paying
    with server.client() as anonymous:
        assert anonymous.post("/v1/payments", json={}).status_code == 401
        assert anonymous.get("/v1/payments/X").status_code == 401


# --- restart ---------------------------------------------------------------------------------------------------------


def test_a_payment_survives_a_restart_while_the_customer_confirms(central_factory, sim):
    # A long limit: the restarted gateway must find the payment by query, not reverse it for taking too long.
    server = central_factory(
        wechat_base_url=sim.url,
        wechat_appid=APPID,
        wechat_mch_id=MCH_ID,
        wechat_api_key=WECHAT_KEY,
        **(FAST_PAYMENTS | {"payments_limit_seconds": 30.0}),
    )
    store = server.add_store("S1")
    frozen = datetime.now(UTC)
    sim.clock = lambda: frozen  # the simulated customer has not confirmed, however long the test takes
    sim.userpaying_seconds = 1
    with server.client(store) as client:
        otn = pay(client, code("10")).json()["out_trade_no"]
        server.stop()  # mid-USERPAYING: the task dies with the process
        with server.session() as session:
            assert session.get(Payment, otn).state == "USERPAYING"
        queries = sim.count("orderquery", otn)
        sim.clock = lambda: frozen + timedelta(seconds=5)  # the customer confirms while central is down
        server.start()  # ... and the restarted service resumes the payment from the database
        done = follow(client, otn)
    assert done["state"] == "SUCCESS" and sim.count("micropay") == 1 and sim.count("orderquery", otn) > queries
