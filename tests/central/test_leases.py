"""Leases (central/leases.py) and periodic jobs (central/jobs.py) on both databases: several "processes" here are
several `Leases` with their own owner names on one database, on a fake clock, so expiry takes no waiting. The
same rules with real processes and `kill -9`: test_replicas.py."""

from __future__ import annotations

import asyncio
import threading

import pytest
import sqlalchemy as sa

from central.db import open_database, write_session
from central.jobs import Periodic
from central.leases import Kind, Leases
from central.models import JobLease, Payment, Store
from tests.support.clock import FakeClock

LEASE = 30.0


@pytest.fixture
def engine(central_database_url):
    engine = open_database(central_database_url)
    yield engine
    engine.dispose()


def open_payments(engine: sa.Engine, count: int, clock: FakeClock, *, state: str = "USERPAYING") -> list[str]:
    now = clock.now()
    keys = [f"S1T01{n:012d}" for n in range(count)]
    with write_session(engine) as session:
        session.add(Store(id="S1", token_hash="0" * 64, created_at=now))
        session.flush()
        session.execute(
            sa.insert(Payment.__table__),
            [
                dict(
                    out_trade_no=key,
                    store_id="S1",
                    station_id="T01",
                    provider="wechat",
                    amount_fen=100,
                    request_hash="h",
                    state=state,
                    charge_sent_at=now,
                    created_at=now,
                    updated_at=now,
                )
                for key in keys
            ],
        )
        session.commit()
    return keys


PAYMENTS = Kind(Payment.__table__, "out_trade_no", open=lambda t: t.c.state.in_(["USERPAYING", "UNKNOWN"]))


def test_a_lease_is_one_process_s_until_it_expires_then_the_next_takes_it(engine):
    clock = FakeClock()
    [key] = open_payments(engine, 1, clock)
    a, b = (Leases(engine, name, LEASE, clock.now) for name in ("replica-a", "replica-b"))
    assert a.take(PAYMENTS, key) and not b.take(PAYMENTS, key)
    clock.advance(LEASE * 2 / 3)
    assert a.renew(PAYMENTS, [key]) == {key}  # renewed: another 30 s from now
    clock.advance(LEASE * 2 / 3)
    assert not b.take(PAYMENTS, key) and b.take_expired(PAYMENTS) == []
    clock.advance(LEASE)  # a stopped renewing (it died)
    assert b.take_expired(PAYMENTS) == [key]
    assert a.renew(PAYMENTS, [key]) == set()  # a, back from a pause, learns it lost it and stops driving it
    b.release(PAYMENTS, key)
    assert a.take(PAYMENTS, key)  # given up: taken at once, no waiting


def test_a_clean_stop_gives_every_lease_up_at_once(engine):
    clock = FakeClock()
    keys = open_payments(engine, 5, clock)
    a, b = (Leases(engine, name, LEASE, clock.now) for name in ("replica-a", "replica-b"))
    assert sorted(a.take_expired(PAYMENTS)) == keys
    assert b.take_expired(PAYMENTS) == []
    assert a.release_all(PAYMENTS) == 5
    assert sorted(b.take_expired(PAYMENTS)) == keys


def test_a_sweep_takes_only_unfinished_rows(engine):
    clock = FakeClock()
    open_payments(engine, 3, clock, state="SUCCESS")
    assert Leases(engine, "replica-a", LEASE, clock.now).take_expired(PAYMENTS) == []


def test_sweepers_at_the_same_moment_never_take_the_same_payment(engine):
    """Four processes sweep 400 orphaned payments at once, 25 at a time: each payment is taken exactly once."""
    clock = FakeClock()
    keys = open_payments(engine, 400, clock)
    taken: dict[str, list[str]] = {}
    start = threading.Barrier(4)

    def sweep(name: str) -> None:
        leases = Leases(engine, name, LEASE, clock.now)
        start.wait()
        mine = taken.setdefault(name, [])
        while batch := leases.take_expired(PAYMENTS, limit=25):
            mine.extend(batch)

    threads = [threading.Thread(target=sweep, args=(f"replica-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    every = [key for batch in taken.values() for key in batch]
    assert sorted(every) == keys  # none lost, none twice
    with write_session(engine) as session:
        owners = dict(session.execute(sa.select(Payment.out_trade_no, Payment.lease_owner)).all())
    assert all(owners[key] == name for name, batch in taken.items() for key in batch)


def test_a_job_started_in_three_processes_runs_once_per_period(engine):
    """Three processes claim a 60 s job's rounds every 10 s for an hour: 60 rounds, all in the holder; the holder
    dies after 30 minutes and another takes over once its lease has expired, keeping the period."""
    clock = FakeClock()
    processes = [Leases(engine, f"replica-{n}", LEASE, clock.now) for n in range(3)]
    ran: list[tuple[float, str]] = []
    for step in range(360):  # an hour in 10 s steps
        t = step * 10.0
        for leases in processes:
            if leases.owner == "replica-0" and t >= 1800:
                continue  # killed at 30 min: it claims nothing any more
            if leases.claim_round("card-sync", 60.0):
                ran.append((t, leases.owner))
        clock.advance(10)
    times = [t for t, _ in ran]
    assert all(later - earlier >= 60 for earlier, later in zip(times, times[1:], strict=False))
    assert len(ran) >= 58  # an hour of 60 s rounds, less the takeover's wait for the lease
    holders = [owner for _, owner in ran]
    assert set(holders[: len([t for t in times if t < 1800])]) == {"replica-0"}
    takeover = next(t for t, owner in ran if owner != "replica-0")
    assert 1800 <= takeover <= 1800 + LEASE + 60
    with write_session(engine) as session:
        assert session.get(JobLease, "card-sync").runs == len(ran)


def test_a_woken_job_runs_at_once_in_its_holder_only(engine):
    clock = FakeClock()
    a, b = (Leases(engine, name, LEASE, clock.now) for name in ("replica-a", "replica-b"))
    assert a.claim_round("card-sync", 60.0)
    clock.advance(1)
    assert not a.claim_round("card-sync", 60.0)  # not due
    assert not b.claim_round("card-sync", 60.0, now_anyway=True)  # woken, but a holds it
    assert a.claim_round("card-sync", 60.0, now_anyway=True)  # woken in the holder: now
    assert a.holds("card-sync") and not b.holds("card-sync")


def test_periodic_runs_its_rounds_in_the_holder_and_gives_the_job_up_when_stopped(engine):
    async def scenario() -> tuple[int, int, bool]:
        a, b = (Leases(engine, name, 0.3) for name in ("replica-a", "replica-b"))
        rounds = {"a": 0, "b": 0}
        both_ran = asyncio.Event()

        def counting(name: str):
            async def round() -> None:
                rounds[name] += 1
                if rounds["b"]:
                    both_ran.set()

            return round

        first = Periodic("orphans", counting("a"), 0.05, a)
        second = Periodic("orphans", counting("b"), 0.05, b)
        first.start()
        while not rounds["a"]:
            await asyncio.sleep(0.01)
        second.start()
        for _ in range(5):  # a second process started: it runs nothing while a holds the job
            await asyncio.sleep(0.05)
        b_before_stop = rounds["b"]
        await first.stop()  # a clean stop releases the job: b takes it on its next look
        await asyncio.wait_for(both_ran.wait(), 5)
        await second.stop()
        return rounds["a"], b_before_stop, await asyncio.to_thread(b.holds, "orphans")

    a_rounds, b_before, b_holds = asyncio.run(scenario())
    assert a_rounds >= 2 and b_before == 0 and not b_holds
