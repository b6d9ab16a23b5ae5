"""The till knows within a second whether central answers: from recent sync results, else a short probe."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from pydantic import SecretStr

from agent.central_client import CentralClient, CentralUnreachable
from agent.clock import utcnow
from agent.connectivity import Connectivity
from agent.settings import CentralSettings
from agent.sync_job import SyncJob
from tests.support.clock import FakeClock


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


async def never_run() -> None:
    raise AssertionError("these jobs only record outcomes")


def a_job(name: str) -> SyncJob:
    """A sync job whose outcomes the test records by hand."""
    return SyncJob(name, never_run)


def connectivity(central, jobs, fresh_s=10.0):
    credentials = central.add_store("SH001")
    client = CentralClient(CentralSettings(url=central.url, token=SecretStr(credentials.token)), "SH001")
    return Connectivity(client, tuple(jobs), probe_timeout_s=0.5, fresh_s=fresh_s)


def test_recent_sync_results_decide_without_a_request(central, loop):
    push, pull = a_job("push"), a_job("pull")
    link = connectivity(central, [push, pull])
    push.succeeded()
    central.stop()  # a probe now would say offline: the recent success must answer first
    assert loop.run_until_complete(link.online()) is True
    pull.failed(CentralUnreachable("down"))  # newer than the success
    assert loop.run_until_complete(link.online()) is False
    loop.run_until_complete(link.client.aclose())


def test_without_recent_results_a_short_probe_answers_and_is_remembered(central, loop):
    stale = a_job("push")
    stale.succeeded()
    stale.last_success = utcnow() - timedelta(minutes=5)
    link = connectivity(central, [stale], fresh_s=30)
    assert loop.run_until_complete(link.online()) is True
    central.stop()
    assert loop.run_until_complete(link.online()) is True  # remembered for fresh_s, no probe per customer
    loop.run_until_complete(link.client.aclose())
    later = Connectivity(
        CentralClient(CentralSettings(url=central.url, token=SecretStr("t")), "SH001"), (stale,), probe_timeout_s=0.5
    )
    assert loop.run_until_complete(later.online()) is False
    loop.run_until_complete(later.client.aclose())


def test_one_lost_answer_is_settled_by_a_probe_not_taken_for_an_outage(central, loop):
    push = a_job("push")
    link = connectivity(central, [push])
    push.succeeded()
    push.failed(CentralUnreachable("the answer to one push was lost"))  # central itself is fine
    assert loop.run_until_complete(link.online()) is True
    link.suspect()  # the till's own request lost its answer
    assert loop.run_until_complete(link.online()) is True
    loop.run_until_complete(link.client.aclose())


def test_a_connection_that_could_not_be_made_is_offline_at_once_and_rechecked_soon(central, loop):
    clock = FakeClock(utcnow())
    link = connectivity(central, [])
    link.clock = clock
    central.stop()
    link.saw(False)  # a payment's connection was refused: no probe needed to know
    assert loop.run_until_complete(link.online()) is False
    central.start()
    clock.advance(link.recheck_s - 0.1)
    assert loop.run_until_complete(link.online()) is False  # the verdict stands a few seconds, not a probe per customer
    clock.advance(0.2)
    assert loop.run_until_complete(link.online()) is True  # rechecked: central is back
    loop.run_until_complete(link.client.aclose())


def test_a_failed_sync_confirmed_by_a_failed_probe_is_an_outage(central, loop):
    pull = a_job("pull")
    link = connectivity(central, [pull])
    central.stop()
    pull.failed(CentralUnreachable("down"))
    assert loop.run_until_complete(link.online()) is False
    loop.run_until_complete(link.client.aclose())
