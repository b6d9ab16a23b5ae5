"""Load hygiene of one central process: too many requests at once, every pooled connection busy, a runaway
statement. Each is answered 503 with Retry-After (the agent waits that long and sends the same request again),
never a hang or a 500."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import sqlalchemy as sa
from starlette.responses import JSONResponse

from central.db import Pool, create_engine
from central.main import Overload


def test_a_process_at_its_limit_answers_503_at_once_and_health_checks_and_long_polls_still_pass():
    async def scenario() -> list[httpx.Response]:
        release, entered = asyncio.Event(), asyncio.Event()

        async def app(scope, receive, send) -> None:
            if scope["path"] == "/v1/slow":
                entered.set()
                await release.wait()
            await JSONResponse({"ok": True})(scope, receive, send)

        transport = httpx.ASGITransport(app=Overload(app, limit=1))
        async with httpx.AsyncClient(transport=transport, base_url="http://central") as client:
            busy = asyncio.create_task(client.get("/v1/slow"))
            await entered.wait()
            answers = [
                await client.get("/v1/members/changes"),
                await client.get("/healthz"),
                await client.get("/v1/payments/S1T01X?wait=5"),
            ]
            release.set()
            answers.append(await busy)
            answers.append(await client.get("/v1/members/changes"))  # free again
            return answers

    refused, health, long_poll, first, later = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == "overloaded"
    assert [health.status_code, long_poll.status_code, first.status_code, later.status_code] == [200] * 4


@pytest.mark.parametrize("central_database_url", ["postgresql"], indirect=True)
def test_every_pooled_connection_busy_is_a_503_with_retry_after_not_a_hang(central_factory):
    server = central_factory(db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=0.3)
    store = server.add_store("S1")
    with server.client(store) as client:
        with server.engine.connect():  # the process's only connection, held
            answer = client.get("/v1/members/changes")
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert client.get("/v1/members/changes").status_code == 200  # given back: answered again


def test_postgresql_cancels_a_statement_past_its_timeout(postgres_cluster):
    engine = create_engine(postgres_cluster.new_database(), Pool(statement_timeout=0.2))
    try:
        with engine.connect() as connection, pytest.raises(sa.exc.OperationalError, match="statement timeout"):
            connection.execute(sa.text("SELECT pg_sleep(5)"))
        with engine.connect() as connection:  # the connection is usable again at once
            assert connection.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
