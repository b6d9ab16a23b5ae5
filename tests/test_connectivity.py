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
from agent.sync import JobHealth


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def connectivity(central, jobs, fresh_s=10.0):
    credentials = central.add_store("SH001")
    client = CentralClient(CentralSettings(url=central.url, token=SecretStr(credentials.token)), "SH001")
    return Connectivity(client, tuple(jobs), probe_timeout_s=0.5, fresh_s=fresh_s)


def test_recent_sync_results_decide_without_a_request(central, loop):
    push, pull = JobHealth("push"), JobHealth("pull")
    link = connectivity(central, [push, pull])
    push.succeeded()
    central.stop()  # a probe now would say offline: the recent success must answer first
    assert loop.run_until_complete(link.online()) is True
    pull.failed(CentralUnreachable("down"))  # newer than the success
    assert loop.run_until_complete(link.online()) is False
    loop.run_until_complete(link.client.aclose())


def test_without_recent_results_a_short_probe_answers_and_is_remembered(central, loop):
    stale = JobHealth("push")
    stale.succeeded()
    stale.last_success = utcnow() - timedelta(minutes=5)
    link = connectivity(central, [stale], fresh_s=30)
    assert loop.run_until_complete(link.online()) is True
    central.stop()
    assert loop.run_until_complete(link.online()) is True  # remembered for fresh_s, no probe per customer
    loop.run_until_complete(link.client.aclose())
    later = Connectivity(CentralClient(CentralSettings(url=central.url, token=SecretStr("t")), "SH001"), (stale,), probe_timeout_s=0.5)
    assert loop.run_until_complete(later.online()) is False
    loop.run_until_complete(later.client.aclose())
