"""The gateway's real timings (query every 5 s, give up at 30 s, never reverse before 15 s, recall, retries) on a
virtual clock: a scripted provider records at which virtual second each call came. No test waits for real."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from central import contract
from central.clock import utcnow
from central.db import open_database, write_session
from central.payments.gateway import Gateway, Timings
from central.payments.provider import Charge, Outcome, ProviderRejected, ProviderUnreachable, Result, ReverseResult
from central.stores import add_store
from tests.central.plugin import central_settings

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
WECHAT_CODE = "134567890123456700"


class VirtualClock:
    """`now` moves only when the test runs time forward; `sleep` waits for virtual time."""

    def __init__(self) -> None:
        self.now = T0
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def __call__(self) -> datetime:
        return self.now

    @property
    def seconds(self) -> float:
        return (self.now - T0).total_seconds()

    async def sleep(self, seconds: float) -> None:
        entry = (self.now + timedelta(seconds=seconds), asyncio.get_running_loop().create_future())
        self._sleepers.append(entry)
        try:
            await entry[1]
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    async def run_until(self, seconds: float, gateway: Gateway) -> None:
        """Let the gateway's tasks run, waking sleepers in time order, until virtual time `seconds`."""
        target = T0 + timedelta(seconds=seconds)
        while True:
            await self._quiesce(gateway)
            due = min((when for when, _ in self._sleepers), default=None)
            if due is None or due > target:
                self.now = max(self.now, target)
                return
            self.now = max(self.now, due)
            for entry in [e for e in self._sleepers if e[0] <= self.now]:
                self._sleepers.remove(entry)
                entry[1].set_result(None)

    async def _quiesce(self, gateway: Gateway) -> None:
        """Until every live task waits on this clock (the database work runs in threads, so this is real time)."""
        stable = 0
        for _ in range(4000):
            live = [task for task in gateway._tasks.values() if not task.done()]
            stable = stable + 1 if len(self._sleepers) >= len(live) else 0
            if stable >= 3:
                return
            await asyncio.sleep(0.001)
        raise AssertionError("the gateway's tasks never came to rest")


class ScriptedProvider:
    """Answers from scripts; records (call, virtual second)."""

    name = "wechat"
    payer_id_kind = "openid:wxTIMING"

    def __init__(
        self,
        clock: VirtualClock,
        charge: Callable[[], Result],
        query: Callable[[float], Result],
        reverses: list[ReverseResult | Exception],
        charge_takes: float = 0,
    ):
        self.clock = clock
        self._charge, self._query, self._reverses = charge, query, list(reverses)
        self.charge_takes = charge_takes  # virtual seconds before the charge's answer (or error) comes back
        self.calls: list[tuple[str, float]] = []
        self.charges: list[Charge] = []

    async def charge(self, charge: Charge) -> Result:
        self.calls.append(("charge", self.clock.seconds))
        self.charges.append(charge)
        if self.charge_takes:
            await self.clock.sleep(self.charge_takes)
        return self._charge()

    async def query(self, out_trade_no: str) -> Result:
        self.calls.append(("query", self.clock.seconds))
        return self._query(self.clock.seconds)

    async def reverse(self, out_trade_no: str) -> ReverseResult:
        self.calls.append(("reverse", self.clock.seconds))
        answer = self._reverses.pop(0) if len(self._reverses) > 1 else self._reverses[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def identify(self, auth_code: str) -> str | None:
        return None

    async def bill(self, day):
        return []


def userpaying() -> Result:
    return Result(Outcome.USERPAYING, "O1", code="USERPAYING")


def paid(_at: float = 0) -> Result:
    return Result(
        Outcome.SUCCESS, "O1", provider_trade_no="4200000001", payer_id="oPAYER", amount_fen=1000, code="SUCCESS"
    )


DONE = ReverseResult(done=True, recall=False)


@pytest.fixture
def engine(central_database_url):
    engine = open_database(central_database_url)
    with write_session(engine) as session:
        add_store(session, "S1", utcnow(), token="token-of-S1-0123456789")
        session.commit()
    yield engine
    engine.dispose()


def run(engine, provider_factory, scenario) -> tuple[ScriptedProvider, list[str]]:
    """Run `scenario(gateway, clock)` against a gateway with the default timings on a virtual clock."""

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
            await scenario(gateway, clock)
            return provider, (await gateway.get("S1", "O1")).state
        finally:
            await gateway.stop()

    return asyncio.run(go())


REQUEST = contract.PaymentRequest(out_trade_no="O1", auth_code=WECHAT_CODE, amount_fen=1000, station_id="T01")


async def pay_and_run(gateway: Gateway, clock: VirtualClock, until: float = 120) -> None:
    payment, created = await gateway.pay("S1", REQUEST)
    assert created and payment.state == "PENDING"
    await clock.run_until(until, gateway)


def test_userpaying_is_queried_every_5_s_and_reversed_at_30_s(engine):
    provider, state = run(
        engine, lambda c: ScriptedProvider(c, userpaying, lambda t: userpaying(), [DONE]), pay_and_run
    )
    assert provider.calls == [("charge", 0), *[("query", t) for t in (5, 10, 15, 20, 25, 30)], ("reverse", 30)]
    assert state == "REVERSED"


def test_a_cancel_at_2_s_waits_until_15_s_to_reverse(engine):
    async def scenario(gateway, clock):
        await gateway.pay("S1", REQUEST)
        await clock.run_until(2, gateway)
        assert (await gateway.cancel("S1", "O1")).state == "REVERSING"
        await clock.run_until(120, gateway)

    provider, state = run(engine, lambda c: ScriptedProvider(c, userpaying, lambda t: userpaying(), [DONE]), scenario)
    assert provider.calls == [("charge", 0), ("reverse", 15)] and state == "REVERSED"


def test_recall_calls_reverse_again_and_failures_back_off(engine):
    recall = ReverseResult(done=False, recall=True, code="SYSTEMERROR")
    refused = ReverseResult(done=False, recall=False, code="SYSTEMERROR")
    script = [recall, ProviderUnreachable("timeout"), refused, DONE]
    provider, state = run(
        engine, lambda c: ScriptedProvider(c, userpaying, lambda t: userpaying(), script), pay_and_run
    )
    reverses = [t for call, t in provider.calls if call == "reverse"]
    # 30: recall → again 1 s later; 31: no answer → 5 s; 36: refused → 10 s; 46: done.
    assert reverses == [30, 31, 36, 46] and state == "REVERSED"


def test_a_charge_without_answer_is_found_by_query_and_never_sent_again(engine):
    def lost() -> Result:
        raise ProviderUnreachable("no answer within 10 s")

    provider, state = run(
        engine,
        lambda c: ScriptedProvider(c, lost, lambda t: paid() if t >= 10 else Result(Outcome.NOT_FOUND, "O1"), [DONE]),
        pay_and_run,
    )
    assert provider.calls == [("charge", 0), ("query", 5), ("query", 10)] and state == "SUCCESS"


def test_an_unfinished_payment_is_resumed_by_the_next_process(engine):
    async def first(gateway, clock):
        await gateway.pay("S1", REQUEST)
        await clock.run_until(7, gateway)  # charged, queried once; then the process dies

    provider, state = run(engine, lambda c: ScriptedProvider(c, userpaying, lambda t: userpaying(), [DONE]), first)
    assert provider.calls == [("charge", 0), ("query", 5)] and state == "USERPAYING"

    async def second(gateway, clock):
        clock.now = T0 + timedelta(seconds=40)  # back after the limit passed
        assert await gateway.start() == 1
        await clock.run_until(120, gateway)

    provider, state = run(engine, lambda c: ScriptedProvider(c, userpaying, lambda t: userpaying(), [DONE]), second)
    assert provider.calls == [("reverse", 40)] and state == "REVERSED"


def test_a_paid_payment_is_reversed_on_request_only_within_24_hours(engine):
    from central.errors import Conflict

    async def scenario(gateway, clock):
        await pay_and_run(gateway, clock, until=1)
        assert (await gateway.get("S1", "O1")).state == "SUCCESS"
        clock.now = T0 + timedelta(hours=25)
        with pytest.raises(Conflict, match="refund it"):
            await gateway.cancel("S1", "O1")

    provider, state = run(engine, lambda c: ScriptedProvider(c, paid, lambda t: paid(), [DONE]), scenario)
    assert provider.calls == [("charge", 0)] and state == "SUCCESS"


# --- the 15 s count from the charge's answer -------------------------------------------------------------------


def cancel_at(seconds: float):
    async def scenario(gateway, clock):
        await gateway.pay("S1", REQUEST)
        await clock.run_until(seconds, gateway)
        assert (await gateway.cancel("S1", "O1")).state == "REVERSING"
        await clock.run_until(120, gateway)

    return scenario


def test_a_charge_answered_after_4_s_and_cancelled_meanwhile_is_reversed_15_s_after_its_answer(engine):
    # A burst: the charge left at 0 s, its answer came at 4 s; the till cancelled at 1 s.
    provider, state = run(
        engine, lambda c: ScriptedProvider(c, userpaying, lambda t: userpaying(), [DONE], charge_takes=4), cancel_at(1)
    )
    assert provider.calls == [("charge", 0), ("reverse", 19)] and state == "REVERSED"


def test_a_charge_refused_after_5_s_is_reversed_15_s_after_the_refusal(engine):
    def refused() -> Result:
        raise ProviderRejected("pay/micropay: 系统繁忙")

    provider, state = run(
        engine, lambda c: ScriptedProvider(c, refused, lambda t: userpaying(), [DONE], charge_takes=5), pay_and_run
    )
    assert provider.calls == [("charge", 0), ("reverse", 20)] and state == "REVERSED"


def test_a_charge_that_timed_out_after_10_s_is_reversed_15_s_after_the_timeout(engine):
    def lost() -> Result:
        raise ProviderUnreachable("no answer within 10 s")

    provider, state = run(
        engine,
        lambda c: ScriptedProvider(c, lost, lambda t: Result(Outcome.NOT_FOUND, "O1"), [DONE], charge_takes=10),
        cancel_at(11),
    )
    assert provider.calls == [("charge", 0), ("reverse", 25)] and state == "REVERSED"


def test_without_a_recorded_answer_the_15_s_count_from_when_the_reverse_is_decided(engine):
    # The charge is out when the process dies at 7 s: no answer was recorded.
    provider, state = run(
        engine,
        lambda c: ScriptedProvider(c, userpaying, lambda t: userpaying(), [DONE], charge_takes=60),
        lambda gateway, clock: pay_and_run(gateway, clock, until=7),
    )
    assert provider.calls == [("charge", 0)] and state == "PENDING"

    async def second(gateway, clock):
        clock.now = T0 + timedelta(seconds=40)  # back after the limit: the reverse is decided now, sent 15 s later
        assert await gateway.start() == 1
        await clock.run_until(120, gateway)

    provider, state = run(engine, lambda c: ScriptedProvider(c, userpaying, lambda t: userpaying(), [DONE]), second)
    assert provider.calls == [("reverse", 55)] and state == "REVERSED"


def test_the_charge_expires_when_the_gateway_gives_up(engine):
    provider, _ = run(
        engine, lambda c: ScriptedProvider(c, paid, lambda t: paid(), [DONE]), lambda g, c: pay_and_run(g, c, until=1)
    )
    assert provider.charges[0].expires_at == T0 + timedelta(seconds=30)  # the payment limit after the charge
