"""Refunds of paid code payments, end to end: the real central service (SQLite and PostgreSQL) against the WeChat
Pay and Alipay simulators, all over HTTP on 127.0.0.1. The WeChat simulator's clock stands still unless a test
moves it, so a refund stays PROCESSING until the test lets it settle; the gateway's timings are the shrunk ones of
test_payments.py. The last tests run the gateway's refund follow-up on a virtual clock at the real intervals."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from central import contract
from central.models import PaymentEvent
from central.payments.gateway import Gateway, Timings
from central.payments.provider import (
    Outcome,
    ProviderUnreachable,
    RefundOrder,
    RefundResult,
    RefundStatus,
    Result,
)
from central.payments.reconcile import check
from central.payments.simulators import serve_in_thread
from central.payments.simulators.wechat import WeChatSimulator
from central.payments.wechat import BEIJING, parse_bill
from tests.central.plugin import central_settings
from tests.central.test_payments import code, final_answer, follow, new_otn, pay
from tests.central.test_payments_alipay import alipay_central, rsa_keys, serve_alipay  # noqa: F401 - rsa_keys is a fixture
from tests.central.test_payments_timing import REQUEST, ScriptedProvider, VirtualClock, engine  # noqa: F401 - a fixture
from tests.support.credentials import APPID, MCH_ID, WECHAT_KEY
from tests.support.poll import eventually
from tests.support.timings import FAST_PAYMENTS

REFUND_SECONDS = 60.0  # how long the WeChat simulator keeps a refund PROCESSING, on its own clock


class SimClock:
    """The simulators' clock: still, until the test moves it."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def sim_clock() -> SimClock:
    return SimClock()


@pytest.fixture
def wechat(sim_clock):
    simulator = WeChatSimulator(
        appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY, clock=sim_clock, refund_seconds=REFUND_SECONDS
    )
    served = serve_in_thread(simulator.app())
    simulator.url, simulator.served = served.url, served
    yield simulator
    simulator.served.stop()


@pytest.fixture
def paying(central_factory, wechat):
    """A central service with WeChat Pay pointed at the simulator, a store S1 and its client."""
    server = central_factory(
        wechat_base_url=wechat.url, wechat_appid=APPID, wechat_mch_id=MCH_ID, wechat_api_key=WECHAT_KEY, **FAST_PAYMENTS
    )
    store = server.add_store("S1")
    with server.client(store) as client:
        yield server, client
    server.stop()  # and wait: no refund is left being followed against a database that goes away


@pytest.fixture
def alipay(rsa_keys, sim_clock):
    yield from serve_alipay(rsa_keys, clock=sim_clock)


@pytest.fixture
def alipaying(central_factory, alipay, tmp_path):
    server = alipay_central(central_factory, alipay, tmp_path)
    store = server.add_store("S1")
    with server.client(store) as client:
        yield server, client
    server.stop()


def alipay_code(scenario: str) -> str:
    return f"280001{new_otn()[-10:]}{scenario}"


def paid(client, auth_code: str, amount: int) -> str:
    """A payment paid at once; its out_trade_no."""
    payment = pay(client, auth_code, amount).json()
    if payment["state"] != "SUCCESS":  # a loaded machine can outlast the 0.4 s answer timeout: the query settles it
        payment = follow(client, payment["out_trade_no"])
    assert payment["state"] == "SUCCESS", payment
    return payment["out_trade_no"]


def new_orn() -> str:
    return f"R{time.time_ns()}"[:32]


def refund(client, otn: str, amount: int, out_refund_no: str | None = None, **extra):
    body = {"out_refund_no": out_refund_no or new_orn(), "amount_fen": amount, **extra}
    return client.post(f"/v1/payments/{otn}/refunds", json=body)


def follow_refund(client, otn: str, orn: str, until=("SUCCESS", "FAILED"), within: float = 10.0) -> dict:
    """Long-poll the refund until it reaches one of `until`."""
    deadline = time.monotonic() + within
    while True:
        answer = client.get(f"/v1/payments/{otn}/refunds/{orn}", params={"wait": 2}).json()
        if answer["state"] in until or time.monotonic() > deadline:
            return answer


def refund_events(server, otn: str, orn: str) -> list[tuple[str, str, str | None]]:
    """The payment's audit trail about one refund: (action, outcome, code)."""
    table = PaymentEvent.__table__
    with server.session() as session:
        rows = session.execute(
            table.select().where(table.c.out_trade_no == otn, table.c.out_refund_no == orn).order_by(table.c.id)
        ).all()
    return [(r.action, r.outcome, r.code) for r in rows]


# --- WeChat Pay ------------------------------------------------------------------------------------------------


def test_a_full_refund_is_processing_then_followed_to_success(paying, wechat, sim_clock):
    server, client = paying
    otn = paid(client, code("00"), 1234)
    orn = new_orn()
    answer = refund(client, otn, 1234, orn, reason="顾客退货")
    first = answer.json()
    assert answer.status_code == 201 and first["state"] == "PROCESSING" and not first["final"]
    assert first["out_refund_no"] == orn and first["out_trade_no"] == otn and first["provider"] == "wechat"
    assert first["amount_fen"] == 1234 and first["provider_refund_no"] == wechat.refund(orn).refund_id
    assert first["refunded_at"] is None and "受理" in first["reason_zh"]
    assert wechat.refund(orn).desc == "顾客退货" and wechat.count("refund") == 1

    # WeChat is still on it: central keeps asking, and keeps answering PROCESSING.
    eventually(lambda: wechat.count("refundquery", otn) >= 2)
    assert client.get(f"/v1/payments/{otn}/refunds/{orn}").json()["state"] == "PROCESSING"
    sim_clock.advance(REFUND_SECONDS)  # the money reaches the payer
    done = follow_refund(client, otn, orn)
    assert done["state"] == "SUCCESS" and done["final"] and done["refunded_at"] and "退回" in done["reason_zh"]
    assert datetime.fromisoformat(done["refunded_at"]) == wechat.refund(orn).succeeded_at.replace(microsecond=0)
    assert wechat.refunded_fen(otn) == 1234 and wechat.count("refund") == 1
    trail = [(action, outcome) for action, outcome, _code in refund_events(server, otn, orn)]
    assert trail[:3] == [("refund_state", "PENDING"), ("refund", "PROCESSING"), ("refund_state", "PROCESSING")]
    assert ("refund_query", "PROCESSING") in trail and trail[-2:] == [
        ("refund_query", "SUCCESS"),
        ("refund_state", "SUCCESS"),
    ]

    # Nothing is left to refund, and the payment is still paid (a refund is not a reverse).
    over = refund(client, otn, 1)
    assert over.status_code == 409 and over.json()["error"] == "refund_exceeds_payment" and wechat.count("refund") == 1
    assert client.get(f"/v1/payments/{otn}").json()["state"] == "SUCCESS"


def test_two_partial_refunds_add_up_to_the_payment(paying, wechat, sim_clock):
    server, client = paying
    otn = paid(client, code("00"), 1000)
    first, second = new_orn(), new_orn() + "b"
    assert refund(client, otn, 300, first).status_code == 201
    assert refund(client, otn, 700, second).status_code == 201
    third = refund(client, otn, 1)
    assert third.status_code == 409 and third.json()["error"] == "refund_exceeds_payment"
    assert "1000 fen paid, 1000 fen refunded or being refunded, 0 fen left" in third.json()["message"]
    sim_clock.advance(REFUND_SECONDS)
    assert [follow_refund(client, otn, orn)["state"] for orn in (first, second)] == ["SUCCESS", "SUCCESS"]
    assert wechat.refunded_fen(otn) == 1000 and wechat.count("refund") == 2
    assert wechat.refund(first).refund_id != wechat.refund(second).refund_id
    # After a refund the payment is refunded, not reversed: the till cannot reverse it any more.
    reverse = client.post(f"/v1/payments/{otn}/reverse")
    assert reverse.status_code == 409 and reverse.json()["error"] == "refunded" and wechat.count("reverse") == 0


def test_more_than_what_is_left_is_refused_before_anything_is_sent(paying, wechat):
    server, client = paying
    otn = paid(client, code("00"), 1000)
    too_much = refund(client, otn, 1001)
    assert too_much.status_code == 409 and too_much.json()["error"] == "refund_exceeds_payment"
    assert wechat.count("refund") == 0
    assert refund(client, otn, 600).json()["state"] == "PROCESSING"
    rest_plus_one = refund(client, otn, 401)
    assert rest_plus_one.status_code == 409 and rest_plus_one.json()["error"] == "refund_exceeds_payment"
    assert "400 fen left" in rest_plus_one.json()["message"] and wechat.count("refund") == 1
    for amount in (0, -5):
        assert refund(client, otn, amount).status_code == 422
    assert refund(client, otn, 1.5).status_code == 422  # a float is no amount of fen
    assert refund(client, otn, 1, "has spaces!").status_code == 422
    assert refund(client, otn, 400).status_code == 201 and wechat.count("refund") == 2


def test_two_refunds_at_the_same_moment_never_add_up_to_more_than_was_paid(paying, wechat):
    server, client = paying
    otn = paid(client, code("00"), 1000)
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda n: refund(client, otn, 600, f"{new_orn()}x{n}"), range(4)))
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409]
    assert {a.json().get("error") for a in answers if a.status_code == 409} == {"refund_exceeds_payment"}
    assert wechat.count("refund") == 1 and wechat.refunded_fen(otn) == 600


def test_a_payment_that_is_not_paid_cannot_be_refunded(paying, wechat, sim_clock):
    server, client = paying
    failed = final_answer(client, pay(client, code("32"), 500).json())
    assert failed["state"] == "FAILED"
    not_paid = refund(client, failed["out_trade_no"], 500)
    assert (
        not_paid.status_code == 409
        and not_paid.json()["error"] == "not_paid"
        and "FAILED" in not_paid.json()["message"]
    )
    reversed_ = paid(client, code("00"), 800)
    assert client.post(f"/v1/payments/{reversed_}/reverse").json()["state"] == "REVERSING"
    assert refund(client, reversed_, 800).json()["error"] == "not_paid"
    assert follow(client, reversed_)["state"] == "REVERSED"
    assert refund(client, reversed_, 800).json()["error"] == "not_paid"
    unknown = refund(client, "NOSUCHPAYMENT", 100)
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    assert wechat.count("refund") == 0

    # Another store sees neither the payment nor its refunds.
    otn = paid(client, code("00"), 300)
    orn = refund(client, otn, 100).json()["out_refund_no"]
    with server.client(server.add_store("S2")) as other:
        assert refund(other, otn, 100).status_code == 404
        assert other.get(f"/v1/payments/{otn}/refunds/{orn}").status_code == 404
    assert client.get(f"/v1/payments/{otn}/refunds/NOSUCHREFUND").status_code == 404
    assert client.get(f"/v1/payments/{reversed_}/refunds/{orn}").status_code == 404  # not that payment's refund
    with server.client() as anonymous:
        assert anonymous.post(f"/v1/payments/{otn}/refunds", json={}).status_code == 401


def test_the_same_refund_again_is_answered_never_sent_twice(paying, wechat, sim_clock):
    server, client = paying
    otn = paid(client, code("00"), 900)
    request = {"out_refund_no": new_orn(), "amount_fen": 400, "reason": "少找零"}
    first = client.post(f"/v1/payments/{otn}/refunds", json=request)
    again = client.post(f"/v1/payments/{otn}/refunds", json=request)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["out_refund_no"] == request["out_refund_no"] and again.json()["amount_fen"] == 400
    assert again.json()["provider_refund_no"] == first.json()["provider_refund_no"]
    assert wechat.count("refund") == 1

    other_amount = client.post(f"/v1/payments/{otn}/refunds", json={**request, "amount_fen": 401})
    assert other_amount.status_code == 409 and other_amount.json()["error"] == "conflict"
    other_payment = paid(client, code("00"), 900)
    elsewhere = client.post(f"/v1/payments/{other_payment}/refunds", json=request)
    assert elsewhere.status_code == 409 and elsewhere.json()["error"] == "conflict"

    sim_clock.advance(REFUND_SECONDS)
    assert follow_refund(client, otn, request["out_refund_no"])["state"] == "SUCCESS"
    done = client.post(f"/v1/payments/{otn}/refunds", json=request)
    assert done.status_code == 200 and done.json()["state"] == "SUCCESS"
    assert wechat.count("refund") == 1 and wechat.refunded_fen(otn) == 400


def test_wechat_refused_refund_is_failed_and_does_not_count(paying, wechat):
    server, client = paying
    otn = paid(client, code("62"), 700)  # the merchant's balance cannot cover a refund
    answer = refund(client, otn, 700).json()
    assert answer["state"] == "FAILED" and answer["final"] and answer["code"] == "NOTENOUGH"
    assert "余额不足" in answer["reason_zh"] and answer["reason_en"]
    # A FAILED refund gave nothing back: the whole amount can still be refunded (here: refused again).
    again = refund(client, otn, 700)
    assert again.status_code == 201 and again.json()["state"] == "FAILED" and wechat.count("refund") == 2
    assert wechat.refunded_fen(otn) == 0


# --- the provider out of reach, or an answer lost: settled by query, never a second refund ------------------------


def test_wechat_unreachable_during_the_refund_is_resolved_later_by_query(paying, wechat, sim_clock):
    server, client = paying
    otn = paid(client, code("00"), 1500)
    port = wechat.served.port
    wechat.served.stop()
    orn = new_orn()
    answer = refund(client, otn, 1500, orn).json()
    assert answer["state"] == "PROCESSING" and answer["code"] == "ProviderUnreachable" and "确认" in answer["reason_zh"]
    assert ("refund", "ERROR", "ProviderUnreachable") in refund_events(server, otn, orn)
    eventually(lambda: ("refund_query", "ERROR", "ProviderUnreachable") in refund_events(server, otn, orn))
    assert wechat.count("refund") == 0  # it never reached WeChat

    wechat.served = serve_in_thread(wechat.app(), port=port)  # WeChat is back
    eventually(lambda: wechat.count("refund") == 1)
    # WeChat did not know the refund, so it was sent again under the same out_refund_no.
    assert ("refund_query", "NOT_FOUND", "REFUNDNOTEXIST") in refund_events(server, otn, orn)
    sim_clock.advance(REFUND_SECONDS)
    done = follow_refund(client, otn, orn)
    assert done["state"] == "SUCCESS" and done["provider_refund_no"] == wechat.refund(orn).refund_id
    assert wechat.count("refund") == 1 and wechat.refunded_fen(otn) == 1500


def test_a_lost_refund_answer_is_found_by_query_not_sent_again(paying, wechat, sim_clock):
    server, client = paying
    otn = paid(client, code("60"), 1200)  # the first refund is made, its answer is an error page
    orn = new_orn()
    answer = refund(client, otn, 1200, orn).json()
    assert answer["state"] == "PROCESSING" and answer["code"] == "ProviderBadResponse"
    eventually(lambda: client.get(f"/v1/payments/{otn}/refunds/{orn}").json()["code"] == "PROCESSING")
    sim_clock.advance(REFUND_SECONDS)
    assert follow_refund(client, otn, orn)["state"] == "SUCCESS"
    assert wechat.count("refund") == 1 and wechat.refunded_fen(otn) == 1200


def test_a_systemerror_is_sent_again_under_the_same_number(paying, wechat, sim_clock):
    server, client = paying
    otn = paid(client, code("61"), 1100)  # the first refund answers SYSTEMERROR and is not made
    orn = new_orn()
    answer = refund(client, otn, 1100, orn).json()
    assert answer["state"] == "PROCESSING" and answer["code"] == "SYSTEMERROR"
    eventually(lambda: wechat.count("refund") == 2)
    sim_clock.advance(REFUND_SECONDS)
    assert follow_refund(client, otn, orn)["state"] == "SUCCESS"
    assert wechat.count("refund") == 2 and wechat.refunded_fen(otn) == 1100 and list(wechat.refunds) == [orn]


def test_a_refund_being_followed_survives_a_restart(paying, wechat, sim_clock):
    server, client = paying
    otn = paid(client, code("00"), 640)
    orn = new_orn()
    assert refund(client, otn, 640, orn).json()["state"] == "PROCESSING"
    server.stop()  # the follow-up dies with the process
    sim_clock.advance(REFUND_SECONDS)  # the refund settles while central is down
    server.start()  # ... and the restarted service resumes it from the database
    assert follow_refund(client, otn, orn)["state"] == "SUCCESS" and wechat.count("refund") == 1


def test_a_refund_shows_in_the_wechat_bill_and_reconciles(paying, wechat, sim_clock):
    server, client = paying
    otn = paid(client, code("00"), 2000)
    orn = refund(client, otn, 500).json()["out_refund_no"]
    sim_clock.advance(REFUND_SECONDS)
    assert follow_refund(client, otn, orn)["state"] == "SUCCESS"
    day = sim_clock.now.astimezone(BEIJING).date()
    rows = parse_bill(wechat.bill_text(day))
    assert sorted((r.status, r.amount_fen) for r in rows if r.out_trade_no == otn) == [
        ("REFUND", 500),
        ("SUCCESS", 2000),
    ]
    checked = check(server.engine, "wechat", day, rows, datetime.now(UTC))
    assert checked.issues == [] and checked.matched == 1
    # The next day's bill holds only the refund row of an earlier payment: nothing to settle either.
    refund_only = [r for r in rows if r.status == "REFUND"]
    assert check(server.engine, "wechat", day + timedelta(days=1), refund_only, datetime.now(UTC)).issues == []


# --- Alipay --------------------------------------------------------------------------------------------------------


def test_alipay_refunds_are_done_at_once(alipaying, alipay):
    server, client = alipaying
    otn = paid(client, alipay_code("00"), 1230)
    orn = new_orn()
    first = refund(client, otn, 1000, orn, reason="顾客退货")
    done = first.json()
    assert first.status_code == 201 and done["state"] == "SUCCESS" and done["final"] and done["provider"] == "alipay"
    assert (
        done["refunded_at"]
        and done["provider_refund_no"] == alipay.order(otn).trade_no
        and done["code"] == "fund_change=Y"
    )
    assert alipay.refunded_fen(otn) == 1000 and alipay.order(otn).status == "TRADE_SUCCESS"
    again = refund(client, otn, 1000, orn)
    assert again.status_code == 200 and again.json()["state"] == "SUCCESS" and alipay.count("refund") == 1
    rest = refund(client, otn, 230).json()
    assert (
        rest["state"] == "SUCCESS" and alipay.refunded_fen(otn) == 1230 and alipay.order(otn).status == "TRADE_CLOSED"
    )
    assert refund(client, otn, 1).json()["error"] == "refund_exceeds_payment" and alipay.count("refund") == 2
    assert client.get(f"/v1/payments/{otn}/refunds/{orn}").json()["state"] == "SUCCESS"


def test_alipay_refused_and_lost_refunds(alipaying, alipay):
    server, client = alipaying
    refused = refund(client, paid(client, alipay_code("62"), 500), 500).json()
    assert (
        refused["state"] == "FAILED"
        and refused["code"] == "ACQ.SELLER_BALANCE_NOT_ENOUGH"
        and "余额不足" in refused["reason_zh"]
    )

    lost = paid(client, alipay_code("60"), 800)  # made, but the answer is an error page
    orn = new_orn()
    answer = refund(client, lost, 800, orn).json()
    assert answer["state"] in ("PROCESSING", "SUCCESS")
    assert follow_refund(client, lost, orn)["state"] == "SUCCESS"
    assert alipay.count("refund", lost) == 1 and alipay.refunded_fen(lost) == 800
    assert ("refund", "ERROR", "ProviderBadResponse") in refund_events(server, lost, orn)

    retried = paid(client, alipay_code("61"), 600)  # ACQ.SYSTEM_ERROR first, not made
    orn = new_orn()
    refund(client, retried, 600, orn)
    assert follow_refund(client, retried, orn)["state"] == "SUCCESS"
    assert alipay.count("refund", retried) == 2 and alipay.refunded_fen(retried) == 600


# --- the follow-up's timing, on a virtual clock ------------------------------------------------------------------


class RefundingProvider(ScriptedProvider):
    """Pays at once; refunds and refund queries answer from scripts, recorded with their virtual second."""

    def __init__(self, clock: VirtualClock, refunds: list, queries):
        super().__init__(
            clock, lambda: Result(Outcome.SUCCESS, "O1", provider_trade_no="42", amount_fen=1000), lambda t: None, []
        )
        self._refunds, self._queries = list(refunds), queries
        self.orders: list[RefundOrder] = []

    async def refund(self, order: RefundOrder) -> RefundResult:
        self.calls.append(("refund", self.clock.seconds))
        self.orders.append(order)
        answer = self._refunds.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def refund_query(self, out_trade_no: str, out_refund_no: str) -> RefundResult:
        self.calls.append(("refund_query", self.clock.seconds))
        return self._queries(self.clock.seconds)


def run_refund(engine, provider_factory, until: float = 400, amount: int = 600):  # noqa: F811 - the fixture
    async def go():
        clock = VirtualClock()
        provider = provider_factory(clock)
        gateway = Gateway(
            central_settings("sqlite://"),
            engine,
            {"wechat": provider},
            timings=Timings(answer=0),
            clock=clock,
            sleep=clock.sleep,
        )
        try:
            await gateway.pay("S1", REQUEST)
            await clock.run_until(1, gateway)
            provider.calls.clear()
            request = contract.RefundRequest(out_refund_no="RF1", amount_fen=amount)
            refunded, created = await gateway.refund("S1", "O1", request)
            assert created and refunded.state == "PROCESSING"
            await clock.run_until(until, gateway)
            return provider, await gateway.get_refund("S1", "O1", "RF1")
        finally:
            await gateway.stop()

    return asyncio.run(go())


def accepted(_t: float = 0) -> RefundResult:
    return RefundResult(RefundStatus.PROCESSING, "RF1", provider_refund_no="5001", amount_fen=600, code="PROCESSING")


def settled(_t: float = 0) -> RefundResult:
    return RefundResult(RefundStatus.SUCCESS, "RF1", provider_refund_no="5001", amount_fen=600, code="SUCCESS")


def test_a_processing_refund_is_queried_at_growing_intervals(engine):  # noqa: F811 - the fixture
    provider, answer = run_refund(
        engine, lambda c: RefundingProvider(c, [accepted()], lambda t: settled() if t >= 200 else accepted())
    )
    # 5 s after the refund, then 10, 20, 40, then every 60 s (payments_retry_max_seconds) until it settles.
    assert provider.calls == [("refund", 1), *[("refund_query", t) for t in (6, 16, 36, 76, 136, 196, 256)]]
    assert answer.state == "SUCCESS" and answer.final and answer.provider_refund_no == "5001"
    order = provider.orders[0]
    assert (order.out_trade_no, order.out_refund_no, order.total_fen, order.amount_fen) == ("O1", "RF1", 1000, 600)


def test_no_answer_then_unknown_to_the_provider_is_sent_again_once(engine):  # noqa: F811 - the fixture
    def query(t: float) -> RefundResult:
        if t < 10:
            return RefundResult(RefundStatus.NOT_FOUND, "RF1", code="REFUNDNOTEXIST")
        return settled()

    provider, answer = run_refund(
        engine, lambda c: RefundingProvider(c, [ProviderUnreachable("timeout"), accepted()], query)
    )
    # The answer was lost; the query says WeChat never got it; the same refund goes again, and is then found done.
    assert provider.calls == [("refund", 1), ("refund_query", 6), ("refund", 6), ("refund_query", 16)]
    assert answer.state == "SUCCESS"
    assert [o.out_refund_no for o in provider.orders] == ["RF1", "RF1"]


def test_a_request_refused_before_processing_fails_once_the_query_confirms_it(engine):  # noqa: F811 - the fixture
    from central.payments.provider import ProviderRejected

    provider, answer = run_refund(
        engine,
        lambda c: RefundingProvider(
            c,
            [ProviderRejected("证书已过期")],
            lambda t: RefundResult(RefundStatus.NOT_FOUND, "RF1", code="REFUNDNOTEXIST"),
        ),
    )
    assert provider.calls == [("refund", 1), ("refund_query", 6)]
    assert answer.state == "FAILED" and answer.code == "REJECTED" and "拒绝" in answer.reason_zh
